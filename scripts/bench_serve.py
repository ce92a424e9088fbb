#!/usr/bin/env python
"""Server overhead (PERFORMANCE.md §4): `seqcls serve` under N concurrent clients against the Python API.

    python scripts/bench_serve.py [MODEL] [--clients 32,64] [--requests 640] [--documents 8] [--json out.json]

Workload (fixed seed): R rerank requests, each one query of 4-12 words and D documents of
--words LO HI random English words. Contenders, measured in one run on the same requests:

  python, per request   Scorer.rerank(query, docs) for each request in turn (the same pairs at the
                        same request granularity: the §4 baseline)
  python, one call      every pair in one Scorer.score call (the engine's ceiling, no request boundaries)
  serve, N clients      `python -m seqcls.runtime.cli_serve MODEL` in its own process; N client
                        threads on 127.0.0.1 (requests.Session, keep-alive) post /rerank in a closed loop

Reported: requests/s, pairs/s, prompt tokens/s, latency p50/p99 (per request; for the Python API the
time of one call), errors, the ratio to "python, per request" (target ≥ 0.9 at 32 clients), the mean
requests per engine call (from /metrics), and the largest score difference to the Python API.

MODEL is a converted folder. Without it, --shape picks a random model built here: `tiny` (the test
suite's 2-layer Qwen3, CPU-sized; server overhead is then the largest share of the time) or
`qwen3-0.6b` (the §2 shape, for a GPU). On a machine with few cores the client threads compete with
the server for the CPU, so CPU figures understate the server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "convert"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "the capital of france is paris a city on the river seine known for art fashion food and the eiffel tower "
    "berlin germany bananas are yellow fruit rich in potassium energy search query relevance passage answer "
    "document model score rank retrieval system question information engine neural network language data "
    "training evaluation benchmark server client request response latency throughput memory compute token "
    "history science music river mountain ocean forest weather climate economy market energy policy health"
).split()


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import log, table  # noqa: E402  (one table/log helper for both benchmarks)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


# ---------------------------------------------------------------- model and workload


def build_model(shape: str, workdir: Path) -> Path:
    if shape == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from factory import build_model as build_tiny  # the test suite's tiny random checkpoints

        import seqcls

        out = workdir / "tiny-qwen3-seqcls"
        if not out.exists():
            src = build_tiny(workdir / "tiny-qwen3", "qwen3", tied=True)
            seqcls.convert(str(src), output=out, recipe="qwen3", verify=False)
        return out
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_score import build_checkpoint  # the §2 Qwen3-0.6B shape, random weights, converted

    return build_checkpoint(workdir / "qwen3-0.6b-seqcls")


def workload(count: int, documents: int, lo: int, hi: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return [{"query": text(rng.randint(4, 12)), "documents": [text(rng.randint(lo, hi)) for _ in range(documents)]}
            for _ in range(count)]


# ---------------------------------------------------------------- contenders


def bench_python(model: Path, device: str, warm: list[dict], requests_: list[dict]) -> tuple[list[dict], list[list[float]]]:
    """The Python API rows (timed after the warm-up requests) and each request's scores in input order."""
    from seqcls.runtime import Scorer

    scorer = Scorer(model, device=device)
    log(f"python API: {scorer!r}")
    for body in warm:
        scorer.rerank(body["query"], body["documents"])
    latencies, tokens, scores = [], 0, []
    started = time.perf_counter()
    for body in requests_:
        t0 = time.perf_counter()
        result = scorer.rerank(body["query"], body["documents"])
        latencies.append(time.perf_counter() - t0)
        tokens += result.usage.prompt_tokens
        by_index = {item.index: item.score for item in result.results}
        scores.append([by_index[i] for i in range(len(body["documents"]))])
    seconds = time.perf_counter() - started
    pairs = sum(len(b["documents"]) for b in requests_)
    rows = [{"contender": "python, per request", "seconds": seconds, "requests": len(requests_), "pairs": pairs, "tokens": tokens,
             "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99), "errors": 0}]
    queries = [b["query"] for b in requests_ for _ in b["documents"]]
    docs = [d for b in requests_ for d in b["documents"]]
    started = time.perf_counter()
    result = scorer.score(queries, docs)
    seconds = time.perf_counter() - started
    rows.append({"contender": "python, one call", "seconds": seconds, "requests": None, "pairs": pairs,
                 "tokens": result.usage.prompt_tokens, "p50_ms": None, "p99_ms": None, "errors": 0})
    del scorer
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    return rows, scores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, device: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "seqcls.runtime.cli_serve", str(model), "--port", str(port), "--device", device,
           "--log-level", "warning", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "convert") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if requests.get(base + "/health", timeout=5).status_code == 200:
                return proc, base
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not become ready in 10 minutes")
        time.sleep(0.2)


def metric(base: str, name: str) -> float:
    import requests

    for line in requests.get(base + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def bench_server(base: str, clients: int, requests_: list[dict], expected: list[list[float]]) -> dict:
    import requests

    next_index = [0]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    tokens = [0]
    worst = [0.0]
    same_order = [0]

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                k = next_index[0]
                next_index[0] += 1
            if k >= len(requests_):
                return
            body = requests_[k]
            t0 = time.perf_counter()
            try:
                r = session.post(base + "/rerank", json={**body, "return_documents": False}, timeout=600)
                data = r.json() if r.status_code == 200 else None
                problem = None if data is not None else f"{r.status_code}: {r.text[:200]}"
            except Exception as exc:  # noqa: BLE001 - counted as an error
                data, problem = None, f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                if problem:
                    errors.append(problem)
                    continue
                tokens[0] += data["usage"]["prompt_tokens"]
                got = {x["index"]: x["relevance_score"] for x in data["results"]}
                want = expected[k]
                worst[0] = max(worst[0], max(abs(got[i] - want[i]) for i in range(len(want))))
                same_order[0] += [x["index"] for x in data["results"]] == sorted(range(len(want)), key=lambda i: (-want[i], i))

    batches0, batched0 = metric(base, "seqcls_batches_total"), metric(base, "seqcls_batched_requests_total")
    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    batches = metric(base, "seqcls_batches_total") - batches0
    batched = metric(base, "seqcls_batched_requests_total") - batched0
    return {"contender": f"serve, {clients} clients", "clients": clients, "seconds": seconds, "requests": len(requests_),
            "pairs": sum(len(b["documents"]) for b in requests_), "tokens": tokens[0],
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99),
            "max_ms": 1000 * max(latencies), "errors": len(errors), "error_samples": errors[:5],
            "requests_per_batch": batched / batches if batches else None, "max_abs_diff": worst[0],
            "same_ranking": same_order[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="a converted folder (default: build one of --shape)")
    parser.add_argument("--shape", choices=("tiny", "qwen3-0.6b"), default="tiny", help="random model to build without MODEL")
    parser.add_argument("--workdir", help="where a random model is built (default: a temporary folder)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clients", default="32", help="comma-separated client counts, one server row each (e.g. 1,32,64)")
    parser.add_argument("--requests", type=int, default=640, help="requests per contender")
    parser.add_argument("--documents", type=int, default=8, help="documents per request")
    parser.add_argument("--words", type=int, nargs=2, default=(10, 60), metavar=("LO", "HI"), help="words per document")
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for the server (repeatable), e.g. --server-arg=--max-batch-tokens=8192")
    parser.add_argument("--json", dest="json_out", help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        model = Path(args.model) if args.model else build_model(args.shape, workdir)
        requests_ = workload(args.requests, args.documents, args.words[0], args.words[1], args.seed)
        warm = workload(args.warmup, args.documents, args.words[0], args.words[1], args.seed + 1)
        log(f"{len(requests_)} requests x {args.documents} documents of {args.words[0]}-{args.words[1]} words; model {model}")
        rows, expected = bench_python(model, args.device, warm, requests_)
        proc, base = start_server(model, args.device, args.server_arg)
        try:
            import requests

            for body in warm:
                requests.post(base + "/rerank", json=body, timeout=600).raise_for_status()
            for clients in [int(c) for c in args.clients.split(",") if c.strip()]:
                log(f"serve: {clients} clients ...")
                rows.append(bench_server(base, clients, requests_, expected))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    baseline = rows[0]["pairs"] / rows[0]["seconds"]
    for row in rows:
        row["requests_s"] = row["requests"] / row["seconds"] if row.get("requests") else None
        row["pairs_s"] = row["pairs"] / row["seconds"]
        row["tokens_s"] = row["tokens"] / row["seconds"]
        row["vs_python"] = row["pairs_s"] / baseline
    columns = [("contender", "contender", ""), ("requests_s", "req/s", ".1f"), ("pairs_s", "pairs/s", ".0f"),
               ("tokens_s", "tokens/s", ".0f"), ("p50_ms", "p50 ms", ".1f"), ("p99_ms", "p99 ms", ".1f"),
               ("errors", "errors", "d"), ("requests_per_batch", "req/batch", ".1f"), ("vs_python", "÷ python/req", ".2f"),
               ("max_abs_diff", "max |Δscore|", ".1e")]
    print(table(rows, columns))
    result = {"host": platform.node(), "python": sys.version.split()[0], "model": str(model), "device": args.device,
              "requests": args.requests, "documents": args.documents, "words": list(args.words), "rows": rows}
    try:
        import torch

        result["torch"] = torch.__version__
        result["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        result["cpu_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 1 if any(row.get("errors") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
