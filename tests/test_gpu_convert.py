"""GPU: the head arithmetic on CUDA equals the CPU result bit for bit, and parity passes on CUDA."""

from __future__ import annotations

import pytest
import torch

import seqcls
from factory import build_model, read_tensors

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_head_equals_cpu_head(dtype, tmp_path):
    src = build_model(tmp_path / "src", "qwen3", tied=False, dtype=dtype)
    cpu = seqcls.convert(str(src), output=tmp_path / "cpu", recipe="qwen3", verify=False, device="cpu")
    gpu = seqcls.convert(str(src), output=tmp_path / "gpu", recipe="qwen3", verify=False, device="cuda")
    assert cpu.plan.token_ids == gpu.plan.token_ids
    a, b = read_tensors(tmp_path / "cpu"), read_tensors(tmp_path / "gpu")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_verify_on_cuda(tmp_path):
    src = build_model(tmp_path / "src", "llama", tied=True)
    result = seqcls.convert(str(src), output=tmp_path / "out", recipe="qwen3", device="cuda")
    assert result.parity.passed and result.parity.max_abs_diff < 1e-4
