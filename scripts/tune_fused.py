"""Time the kernels of seqcls's fused decoder layer against what they replace (GPU).

For a Qwen3-0.6B-shaped layer (hidden 1024, 16 heads / 8 KV heads of 128, intermediate 3072) on a
64k-token pack, prints each piece of the layer: the three Triton kernels (RMSNorm, q/k-norm + rotary
in place, SiLU·mul) with the memory bandwidth they reach, the same operations in eager PyTorch and
compiled by Inductor, and the cuBLAS products with the residual add as a separate kernel or in the
``addmm`` epilogue. Checks each Triton kernel against float32 on the way.

``--attention`` times packed attention instead, on the rerank shape (a 90-token prefix, then 100
documents of 64-256 tokens plus a 12-token suffix continuing it) and on the same documents scored
whole: flash-attention varlen (with the gather of each sequence's prefix rows that it needs) against
``fused.prefix_attention`` under each launch setting, in TFLOP/s of causal attention actually needed.

    python scripts/tune_fused.py [--tokens 65536] [--attention] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "convert"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_score  # noqa: E402


def cuda_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of ``fn`` after 3 warm-up calls."""
    for _ in range(3):
        fn()
    return bench_score.cuda_time(fn, repeats) * 1e3


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from seqcls.runtime import fused

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--attention", action="store_true", help="time packed attention (flash varlen vs the prefix kernel)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tune_fused.py times the fused decoder's CUDA kernels: it needs a CUDA GPU.")
    torch.manual_seed(0)
    if args.attention:
        rows = attention(fused)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=1))
        return 0
    dev, dt = "cuda", torch.bfloat16
    M, hidden, heads, kv, d, inter = args.tokens, 1024, 16, 8, 128, 3072
    nqkv = (heads + 2 * kv) * d
    x = torch.randn(M, hidden, device=dev, dtype=dt)
    gamma = torch.rand(hidden, device=dev, dtype=dt) + 0.5
    qkv = torch.randn(M, nqkv, device=dev, dtype=dt)
    qk_norm = torch.rand(2 * d, device=dev, dtype=dt) + 0.5
    angles = torch.rand(M, d // 2, device=dev) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(dt), torch.cat([angles.sin()] * 2, -1).to(dt)
    gu = torch.randn(M, 2 * inter, device=dev, dtype=dt)
    o = torch.randn(M, heads * d, device=dev, dtype=dt)
    h = torch.randn(M, inter, device=dev, dtype=dt)
    wo = torch.randn(hidden, heads * d, device=dev, dtype=dt) * 0.03
    wd = torch.randn(hidden, inter, device=dev, dtype=dt) * 0.03
    rows, errors = [], {}

    def row(name, ms, nbytes=None, flops=None):
        entry = {"piece": name, "ms": ms}
        text = f"{name:62s} {ms:7.3f} ms"
        if nbytes:
            entry["gb_per_s"] = nbytes / ms / 1e6
            text += f" {entry['gb_per_s']:7.0f} GB/s"
        if flops:
            entry["tflops"] = flops / ms / 1e9
            text += f" {entry['tflops']:7.1f} TFLOP/s"
        rows.append(entry)
        print(text, flush=True)

    def eager_rms(t):
        f = t.float()
        return gamma * (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dt)

    def rotate(t, c, s):
        half = t.shape[-1] // 2
        return t * c + torch.cat([-t[..., half:], t[..., :half]], -1) * s

    def eager_qk(t):
        q = t[:, : heads * d].view(M, heads, d)
        k = t[:, heads * d:(heads + kv) * d].view(M, kv, d)
        c, s = cos[:, None], sin[:, None]
        return rotate(F.rms_norm(q, (d,), qk_norm[:d], 1e-6), c, s), rotate(F.rms_norm(k, (d,), qk_norm[d:], 1e-6), c, s)

    def eager_silu(t):
        return F.silu(t[:, :inter]) * t[:, inter:]

    rms_bytes, qk_bytes, silu_bytes = 2 * M * hidden * 2, 2 * M * (heads + kv) * d * 2 + 2 * M * d * 2, 3 * M * inter * 2
    qkv_copy = qkv.clone()
    for label, ours, eager, given, nbytes in (
        ("RMSNorm", lambda: fused.rms_norm(x, gamma, 1e-6), eager_rms, x, rms_bytes),
        ("q/k RMSNorm + rotary", lambda: fused.qk_norm_rope_(qkv_copy, qk_norm, cos, sin, heads, kv, d, 1e-6), eager_qk, qkv, qk_bytes),
        ("SiLU(gate) * up", lambda: fused.silu_mul(gu), eager_silu, gu, silu_bytes),
    ):
        compiled = torch.compile(eager)
        row(f"{label}: seqcls Triton kernel", cuda_ms(ours), nbytes)
        row(f"{label}: eager PyTorch", cuda_ms(lambda: eager(given)), nbytes)
        row(f"{label}: torch.compile", cuda_ms(lambda: compiled(given)), nbytes)
    # launch settings of the two kernels whose shape leaves a choice (the first of each is the default)
    for rows_, warps in ((32, 4), (16, 4), (8, 4), (16, 8), (32, 8), (64, 8)):
        row(f"q/k RMSNorm + rotary: rows={rows_} warps={warps}",
            cuda_ms(lambda: fused.qk_norm_rope_(qkv_copy, qk_norm, cos, sin, heads, kv, d, 1e-6, rows=rows_, warps=warps)), qk_bytes)
    for rows_, block, warps in ((4, 1024, 4), (16, 256, 4), (8, 512, 4), (8, 1024, 8), (32, 256, 8), (16, 512, 8)):
        row(f"SiLU(gate) * up: rows={rows_} block={block} warps={warps}",
            cuda_ms(lambda: fused.silu_mul(gu, rows=rows_, block=block, warps=warps)), silu_bytes)
    # float32 checks of the Triton kernels
    f32 = x.float()
    errors["rms_norm"] = float((fused.rms_norm(x, gamma, 1e-6).float() - f32 * torch.rsqrt(f32.pow(2).mean(-1, keepdim=True) + 1e-6) * gamma.float()).abs().max())
    got = fused.qk_norm_rope_(qkv.clone(), qk_norm, cos, sin, heads, kv, d, 1e-6)
    q32 = qkv[:, : heads * d].float().view(M, heads, d)
    q32 = q32 * torch.rsqrt(q32.pow(2).mean(-1, keepdim=True) + 1e-6) * qk_norm[:d].float()
    ref_q = rotate(q32, cos.float()[:, None], sin.float()[:, None]).reshape(M, -1)
    errors["qk_rope"] = float((got[:, : heads * d].float() - ref_q).abs().max())
    errors["v_untouched"] = float((got[:, (heads + kv) * d:] - qkv[:, (heads + kv) * d:]).abs().max())
    errors["silu_mul"] = float((fused.silu_mul(gu).float() - F.silu(gu[:, :inter].float()) * gu[:, inter:].float()).abs().max())
    f_o, f_d = 2 * M * heads * d * hidden, 2 * M * inter * hidden
    row("o_proj: mm, then + residual", cuda_ms(lambda: x + F.linear(o, wo)), flops=f_o)
    row("o_proj: addmm (residual in the GEMM epilogue)", cuda_ms(lambda: torch.addmm(x, o, wo.t())), flops=f_o)
    row("down: mm, then + residual", cuda_ms(lambda: x + F.linear(h, wd)), flops=f_d)
    row("down: addmm (residual in the GEMM epilogue)", cuda_ms(lambda: torch.addmm(x, h, wd.t())), flops=f_d)
    print("max |error| against float32 (bf16 outputs):", errors)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"device": torch.cuda.get_device_name(0), "tokens": M, "rows": rows, "errors": errors}, indent=1))
    return 0


def attention(fused) -> list[dict]:
    """Packed attention on the rerank shape, with and without the shared prefix (16 heads / 8 KV heads
    of 128): flash varlen against ``fused.prefix_attention`` under each launch setting."""
    import numpy as np
    import torch

    from seqcls.runtime.attention import PackContext, _flash

    heads, kv, d = 16, 8, 128
    rng = np.random.default_rng(1)  # bench_score's rerank documents
    own = [int(n) + 12 for n in rng.integers(64, 257, size=100)]
    layouts = {"rerank, shared prefix": ([90] + own, [(0, 0)] + [(0, 90)] * 100),
               "rerank, independent": ([90 + n for n in own], [(0, 0)] * 100)}
    # (query rows, product rows: both query heads of a KV head in one program, key rows, warps, stages)
    settings = [(bm, 2 * bm, bn, w, st) for bm in (16, 32, 64) for bn in (16, 32, 64) for w in (4, 8) for st in (2, 3)]
    saved = (fused.ATTENTION_BLOCK_M, fused.ATTENTION_BLOCK_N, fused.ATTENTION_WARPS, fused.ATTENTION_STAGES, fused.ATTENTION_ROWS)
    out = []
    for name, (lengths, prefixes) in layouts.items():
        T = sum(lengths)
        qkv = torch.randn(T, (heads + 2 * kv) * d, device="cuda", dtype=torch.bfloat16)
        q, k, v = qkv[:, :heads * d].view(T, heads, d), qkv[:, heads * d:(heads + kv) * d].view(T, kv, d), qkv[:, (heads + kv) * d:].view(T, kv, d)
        needed = sum(n * p + n * (n + 1) // 2 for n, (_, p) in zip(lengths, prefixes)) * heads * d * 4  # FLOPs
        flash_ctx = PackContext.build(lengths, torch.device("cuda"), use_flash=True, prefixes=prefixes)
        index = flash_ctx.kv_index

        def flash():
            kk, vv = (k.index_select(0, index), v.index_select(0, index)) if index is not None else (k, v)
            return _flash(q, kk, vv, flash_ctx.cu_q, flash_ctx.cu_k, flash_ctx.max_q, flash_ctx.max_k, d ** -0.5, None)

        reference = flash().float()
        ms = cuda_ms(flash)
        print(f"{name}: {T} tokens", flush=True)
        out.append({"layout": name, "kernel": "flash varlen" + (" + gather" if index is not None else ""), "ms": ms, "tflops": needed / ms / 1e9})
        print(f"  {out[-1]['kernel']:72s} {ms:7.3f} ms {out[-1]['tflops']:6.1f} TFLOP/s", flush=True)
        timed = []
        for bm, rows, bn, w, st in settings:
            fused.ATTENTION_BLOCK_M, fused.ATTENTION_ROWS, fused.ATTENTION_BLOCK_N, fused.ATTENTION_WARPS, fused.ATTENTION_STAGES = bm, rows, bn, w, st
            ctx = PackContext.build(lengths, torch.device("cuda"), use_flash=True, prefixes=prefixes, blocks=bm)
            error = float((fused.prefix_attention(q, k, v, ctx.blocks, ctx.seqs, d ** -0.5).float() - reference).abs().max())
            ms = cuda_ms(lambda: fused.prefix_attention(q, k, v, ctx.blocks, ctx.seqs, d ** -0.5))
            timed.append({"layout": name, "kernel": f"prefix_attention block_m={bm} rows={rows} block_n={bn} warps={w} stages={st}",
                          "ms": ms, "tflops": needed / ms / 1e9, "max_diff_vs_flash": error})
        fused.ATTENTION_BLOCK_M, fused.ATTENTION_BLOCK_N, fused.ATTENTION_WARPS, fused.ATTENTION_STAGES, fused.ATTENTION_ROWS = saved
        for entry in sorted(timed, key=lambda e: e["ms"])[:6]:
            print(f"  {entry['kernel']:72s} {entry['ms']:7.3f} ms {entry['tflops']:6.1f} TFLOP/s (|diff| vs flash {entry['max_diff_vs_flash']:.4f})", flush=True)
        out += timed
    return out


if __name__ == "__main__":
    raise SystemExit(main())
