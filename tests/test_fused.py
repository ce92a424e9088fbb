"""The fused decoder's arithmetic against transformers' own decoder layers, on CPU.

The Triton kernels run on GPUs (``pytest -m gpu tests/test_runtime.py`` compares whole scores there);
here ``TRITON_INTERPRET=1`` executes the same kernel code with numpy in float32, so CI without a GPU
still catches a wrong mask, norm, rotary or activation. The PyTorch kernels (the CPU's) run the same
script natively, whole and in row blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _env(**extra: str) -> dict[str, str]:
    """The environment of a test subprocess: this checkout's package first on PYTHONPATH, plus ``extra``."""
    path = os.pathsep.join(filter(None, [str(HERE.parent / "convert"), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)

SCRIPT = r"""
import json, sys, torch
import torch.nn.functional as F
import transformers
sys.path.insert(0, sys.argv[1])
from factory import tiny_config
from seqcls.runtime import fused

arch, seed, kernels = sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(seed)
config = tiny_config(arch, tied=False)
config.hidden_size, config.intermediate_size, config.head_dim = 128, 320, 64  # 320: a partial column tile
config.num_labels = 1
model = getattr(transformers, {"qwen3": "Qwen3", "qwen2": "Qwen2", "llama": "Llama", "mistral": "Mistral"}[arch]
                + "ForSequenceClassification")(config).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.normal_(1.0, 0.3) if "norm" in name else p.normal_(0, 0.2)
reason = fused.supported(model, torch.device("cuda"), torch.bfloat16)  # shape rules (the device is not touched)
assert reason is None or reason == "Triton is not installed", reason
decoder = fused.FusedDecoder(model, kernels=kernels, block_rows=16 if kernels == "torch" else None)  # 16: blocks cut sequences
lengths = [13, 24]
ids = torch.randint(4, config.vocab_size, (sum(lengths),))
positions = torch.cat([torch.arange(n) for n in lengths])

def attend(q, k, v):
    out, start = [], 0
    for n in lengths:
        qs, ks, vs = (t[start:start + n].transpose(0, 1)[None] for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)[0].transpose(0, 1))
        start += n
    return torch.cat(out).flatten(1)

ends = torch.tensor(lengths).cumsum(0) - 1

def attend_last(q, k, v):  # each sequence's last query over all of its keys
    out, start = [], 0
    for row, n in enumerate(lengths):
        ks, vs = (t[start:start + n].transpose(0, 1)[None] for t in (k, v))
        out.append(F.scaled_dot_product_attention(q[row:row + 1].transpose(0, 1)[None], ks, vs, enable_gqa=True)[0].transpose(0, 1))
        start += n
    return torch.cat(out).flatten(1)

captured = {}
model.model.norm.register_forward_hook(lambda mod, args, out: captured.__setitem__("x", args[0]))
with torch.no_grad():
    got = decoder.forward(ids, positions, attend)
    pruned = decoder.forward(ids, positions, attend, ends, attend_last)  # last layer only at the last rows
    diffs, last_diffs = [], []
    start = 0
    for row, n in enumerate(lengths):  # transformers, one sequence at a time
        model.model(input_ids=ids[None, start:start + n])
        diffs.append((got[start:start + n] - captured["x"][0]).abs().max().item())
        last_diffs.append((pruned[row] - captured["x"][0, -1]).abs().max().item())
        start += n

# a shared prefix: the stream holds the prefix once, then two sequences continuing it; the decoder
# gathers each sequence's keys/values (the prefix's rows, then its own) as the varlen kernel reads them
P, own = 7, [6, 17]
pre, seq_ids = torch.randint(4, config.vocab_size, (P,)), [torch.randint(4, config.vocab_size, (n,)) for n in own]
stream = torch.cat([pre, *seq_ids])
stream_pos = torch.cat([torch.arange(P), *[torch.arange(P, P + n) for n in own]])
starts = [P, P + own[0]]
kv_rows = torch.cat([torch.arange(P)] + [torch.cat([torch.arange(P), torch.arange(s, s + n)]) for s, n in zip(starts, own)])
kv_rows_last = kv_rows[P:]

def attend_gathered(q, k, v):  # q: stream rows; k/v: gathered rows (prefix sequence, then each sequence's prefix + own)
    out, kv_start = [], 0
    for q_start, n, shared in [(0, P, 0), (starts[0], own[0], P), (starts[1], own[1], P)]:
        qs = q[q_start:q_start + n].transpose(0, 1)[None]
        ks, vs = (t[kv_start:kv_start + shared + n].transpose(0, 1)[None] for t in (k, v))
        mask = torch.ones(n, shared + n, dtype=torch.bool).tril(shared)
        out.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1))
        kv_start += shared + n
    return torch.cat(out).flatten(1)

def attend_last_gathered(q, k, v):
    out, kv_start = [], 0
    for row, n in enumerate(own):
        ks, vs = (t[kv_start:kv_start + P + n].transpose(0, 1)[None] for t in (k, v))
        out.append(F.scaled_dot_product_attention(q[row:row + 1].transpose(0, 1)[None], ks, vs, enable_gqa=True)[0].transpose(0, 1))
        kv_start += P + n
    return torch.cat(out).flatten(1)

with torch.no_grad():
    shared_got = decoder.forward(stream, stream_pos, attend_gathered, kv_rows=kv_rows)
    shared_last = decoder.forward(stream, stream_pos, attend_gathered, torch.tensor([starts[0] + own[0] - 1, starts[1] + own[1] - 1]),
                                  attend_last_gathered, kv_rows=kv_rows, kv_rows_last=kv_rows_last)
    for row, (s, n) in enumerate(zip(starts, own)):
        model.model(input_ids=torch.cat([pre, seq_ids[row]])[None])
        diffs.append((shared_got[:P] - captured["x"][0, :P]).abs().max().item())
        diffs.append((shared_got[s:s + n] - captured["x"][0, P:]).abs().max().item())
        last_diffs.append((shared_last[row] - captured["x"][0, -1]).abs().max().item())
print(json.dumps({"max_diff": max(diffs), "last_diff": max(last_diffs), "rows": list(pruned.shape), "scale": got.abs().max().item()}))
"""


@pytest.mark.parametrize("kernels", ["triton", "torch"])
@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_fused_kernels_match_transformers_layers(arch, kernels):
    if kernels == "triton":
        pytest.importorskip("triton")
    env = _env(TRITON_INTERPRET="1" if kernels == "triton" else "0")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(HERE), arch, "0", kernels], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["scale"] > 1.0  # the residual stream is not trivially small
    assert result["max_diff"] <= 1e-5 * max(1.0, result["scale"]), result
    assert result["rows"] == [2, 128] and result["last_diff"] <= 1e-5 * max(1.0, result["scale"]), result


def test_fused_decoder_refuses_what_it_cannot_run():
    import torch

    pytest.importorskip("triton")  # the CUDA rules come after "Triton is not installed"

    sys.path.insert(0, str(HERE))
    import transformers
    from factory import tiny_config

    from seqcls.runtime import fused

    config = tiny_config("gemma", tied=False)
    gemma = transformers.GemmaForSequenceClassification(config)
    assert "gemma" in (fused.supported(gemma, torch.device("cuda"), torch.bfloat16) or "")
    llama = transformers.LlamaForSequenceClassification(tiny_config("llama", tied=False))
    assert fused.supported(llama, torch.device("cpu"), torch.float32) is None  # CPU: PyTorch's kernels, any head size
    assert "head dimension 16" in fused.supported(llama, torch.device("cuda"), torch.bfloat16)
    assert "bf16 or fp16" in fused.supported(llama, torch.device("cuda"), torch.float32)
    assert "not on mps" in fused.supported(llama, torch.device("mps"), torch.float32)
    config = tiny_config("qwen3", tied=False)
    config.head_dim = 64
    good = transformers.Qwen3ForSequenceClassification(config)
    assert fused.supported(good, torch.device("cuda"), torch.bfloat16) is None  # shape rules only; no GPU is touched
    config.layer_types = ["full_attention", "sliding_attention"]
    config.sliding_window = 8
    mixed = transformers.Qwen3ForSequenceClassification(config)
    assert "mix full and sliding" in fused.supported(mixed, torch.device("cuda"), torch.bfloat16)


ATTENTION_SCRIPT = r"""
import json, sys, torch
from seqcls.runtime import fused
from seqcls.runtime.attention import PackContext

device, dtype = (sys.argv[1], getattr(torch, sys.argv[2])) if len(sys.argv) > 2 else ("cpu", torch.float32)
torch.manual_seed(0)
# a stream mixing shared prefixes, sequences that continue them, and sequences on their own; lengths
# cross the kernel's query and key blocks (64 rows) on both sides
lengths = [70, 150, 5, 129, 40, 64, 1, 200]
prefixes = [(0, 0), (0, 70), (0, 70), (0, 0), (0, 0), (354, 40), (0, 0), (354, 40)]  # 354: the 40-token prefix
T = sum(lengths)
ctx = PackContext.build(lengths, torch.device(device), use_flash=False, prefixes=prefixes, blocks=fused.ATTENTION_BLOCK_M)
results = {}
for heads, kv_heads in [(8, 2), (6, 2), (4, 4)]:
    D = 64
    qkv = torch.randn(T, (heads + 2 * kv_heads) * D, device=device).to(dtype)
    q = qkv[:, :heads * D].view(T, heads, D)
    k = qkv[:, heads * D:(heads + kv_heads) * D].view(T, kv_heads, D)
    v = qkv[:, (heads + kv_heads) * D:].view(T, kv_heads, D)
    got = fused.prefix_attention(q, k, v, ctx.blocks, ctx.seqs, D ** -0.5)
    # reference: each sequence in float64, its prefix's keys then its own, causal over its own
    worst, start = 0.0, 0
    for n, (p_start, p_len) in zip(lengths, prefixes):
        rows = list(range(p_start, p_start + p_len)) + list(range(start, start + n))
        qs = q[start:start + n].double().transpose(0, 1)
        ks = k[rows].double().repeat_interleave(heads // kv_heads, 1).transpose(0, 1)
        vs = v[rows].double().repeat_interleave(heads // kv_heads, 1).transpose(0, 1)
        scores = qs @ ks.transpose(1, 2) * D ** -0.5
        allowed = torch.arange(p_len + n, device=device)[None, :] <= torch.arange(n, device=device)[:, None] + p_len
        ref = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vs).transpose(0, 1)
        worst = max(worst, (got[start:start + n].double() - ref).abs().max().item())
        assert got.dtype == dtype
        start += n
    results[f"{heads}/{kv_heads}"] = worst
print(json.dumps(results))
"""


def test_prefix_attention_kernel_matches_reference():
    """The Triton attention that reads shared prefixes in place (every GPU pack of the fused decoder),
    run by Triton's interpreter in float32, against float64 attention over each sequence's prefix + own
    keys."""
    pytest.importorskip("triton")
    env = _env(TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", ATTENTION_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result) == {"8/2", "6/2", "4/4"}
    assert all(diff < 1e-5 for diff in result.values()), result


@pytest.mark.gpu
def test_gpu_prefix_attention_kernel_matches_reference():
    """The same check compiled for the GPU, in bf16 (inputs rounded to bf16, the reference in float64)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    env = _env()
    run = subprocess.run([sys.executable, "-c", ATTENTION_SCRIPT, "cuda", "bfloat16"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result) == {"8/2", "6/2", "4/4"} and all(diff < 0.02 for diff in result.values()), result
