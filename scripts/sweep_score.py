#!/usr/bin/env python
"""Sweep the engine's knobs on the PERFORMANCE.md §2 workload (GPU): token budget per pack, the
padding allowed in dense batches, the fused decoder against transformers' compiled layers, and an
Inductor option for the latter; prints tokens/s per setting.

    python scripts/sweep_score.py [--pairs 2000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_score  # noqa: E402

SETTINGS = [
    {"name": "default (64k budget, 15% padding)"},
    {"name": "budget 32k", "batch_tokens": 32768},
    {"name": "budget 128k", "batch_tokens": 131072},
    {"name": "padding up to 30%", "max_padding": 0.30},
    {"name": "padding up to 50%", "max_padding": 0.50},
    {"name": "transformers' compiled layers (fused=False)", "fused": False},
    {"name": "compiled layers, coordinate-descent tuning", "fused": False, "inductor": {"coordinate_descent_tuning": True}},
]


def main(argv: list[str] | None = None) -> int:
    import torch

    from seqcls.runtime import Scorer, engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--workdir")
    parser.add_argument("--only", nargs="*", help="names (substrings) of the settings to run")
    args = parser.parse_args(argv)
    folder, seqs = bench_score.gpu_workload(args.workdir, args.pairs)
    tokens = sum(map(len, seqs))
    default_padding = engine.MAX_PADDING
    rows = []
    for setting in SETTINGS:
        if args.only and not any(o in setting["name"] for o in args.only):
            continue
        import torch._inductor.config as inductor_config

        saved = {k: getattr(inductor_config, k) for k in setting.get("inductor", {})}
        for k, v in setting.get("inductor", {}).items():
            setattr(inductor_config, k, v)
        engine.MAX_PADDING = setting.get("max_padding", default_padding)
        torch._dynamo.reset()
        scorer = Scorer(folder, device="cuda:0", batch_tokens=setting.get("batch_tokens"), fused=setting.get("fused", "auto"))
        for _ in range(2):
            scorer.score_tokens(seqs)
        seconds = bench_score.cuda_time(lambda: scorer.score_tokens(seqs), 3)
        layouts = [p.layout for p in scorer.engine.plan(seqs, [engine.PrefixGroup(list(range(len(seqs))), 0)])]
        rows.append({"setting": setting["name"], "tokens_per_s": tokens / seconds, "packs": len(layouts),
                     "padded": layouts.count("padded")})
        print(f"{setting['name']}: {tokens / seconds / 1e3:.0f}k tokens/s", flush=True)
        del scorer
        torch.cuda.empty_cache()
        for k, v in saved.items():
            setattr(inductor_config, k, v)
    engine.MAX_PADDING = default_padding
    print(bench_score.table(rows, [("setting", "setting", ""), ("tokens_per_s", "tokens/s", ",.0f"), ("packs", "packs", "d"),
                                   ("padded", "dense packs", "d")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
