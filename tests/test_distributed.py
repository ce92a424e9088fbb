"""Scoring on Ray (seqcls.distributed, `seqcls score --ray`): one local Ray instance (2 CPUs) for the module,
two Scorer actors, results checked against the single-process Scorer; a worker killed mid-run; resume."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import seqcls  # noqa: E402
from seqcls import distributed as sd  # noqa: E402
from seqcls.distributed import ScorerActor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CRASH_MARKER = "SEQCLS_TEST_CRASH_MARKER"
FILES, ROWS = 3, 800  # 2400 pairs
ATOL = 1e-6  # fp32 on CPU: the packed engine's sums depend on which pairs share a pack (see README)
WORDS = ("yes no Yes capital France Paris query passage relevant answer the of is a Given web search document "
         "instruct judge whether meets requirements").split()


class CrashOnce(ScorerActor):
    """Kills its own worker process on the first batch any actor sees (once per marker file)."""

    def __call__(self, batch):
        marker = Path(os.environ[CRASH_MARKER])
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            out = super().__call__(batch)
            out["pid"] = [os.getpid()] * len(out["score"])
            return out
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)


def make_pairs(seed: int, n: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(3, 8))) for _ in range(40)]
    return [{"id": f"{prefix}-{i}", "query": rng.choice(queries), "document": " ".join(rng.choices(WORDS, k=rng.randint(5, 60)))}
            for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One local Ray instance with 2 CPUs for the module; workers see this checkout and the crash marker."""
    import ray

    marker = tmp_path_factory.mktemp("crash") / "crashed"
    path = os.pathsep.join([str(ROOT / "convert"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": path, CRASH_MARKER: str(marker), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": env})
    os.environ[CRASH_MARKER] = str(marker)
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pairs")
    return [write_jsonl(folder / f"pairs-{f}.jsonl", make_pairs(f, ROWS, f"f{f}")) for f in range(FILES)]


@pytest.fixture(scope="module")
def scorer(tiny_qwen3_converted):
    return seqcls.Scorer(tiny_qwen3_converted, device="cpu")


def reference(scorer, rows: list[dict]) -> list[float]:
    return scorer.score([r["query"] for r in rows], [r["document"] for r in rows]).scores


def read_rows(files: list[Path]) -> list[dict]:
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def scored_with_crash(ray_local, tiny_qwen3_converted, pair_files, tmp_path_factory):
    """2400 pairs over 2 workers, one of which dies on its first batch."""
    assert not ray_local.exists()
    output = tmp_path_factory.mktemp("scores") / "scores.parquet"
    summary = sd.score_files(tiny_qwen3_converted, pair_files[0].parent, output, num_workers=2, dtype="float32",
                             actor_class=CrashOnce)
    return output, summary


def test_two_workers_equal_the_single_process_scorer_despite_a_killed_worker(scored_with_crash, ray_local, pair_files, scorer):
    import pyarrow.parquet as pq

    output, summary = scored_with_crash
    assert ray_local.exists(), "the first batch should have killed its worker"
    assert summary.workers == 2 and summary.rows == FILES * ROWS and summary.files_scored == FILES
    table = sd.read_scores(output)
    rows = read_rows(pair_files)
    assert table.column("id").to_pylist() == [r["id"] for r in rows]  # nothing lost, nothing duplicated, in order
    assert table.column("query").to_pylist() == [r["query"] for r in rows]
    assert table.column("document").to_pylist() == [r["document"] for r in rows]
    got = table.column("score").to_pylist()
    expected = reference(scorer, rows)
    assert max(abs(a - b) for a, b in zip(got, expected)) <= ATOL
    crashed_pid = int(ray_local.read_text())
    pids = set(table.column("pid").to_pylist())
    assert crashed_pid not in pids and len(pids) >= 2  # the dead worker's batch was redone by a live (restarted) one
    parts = sorted(p.name for p in output.iterdir())
    assert len([p for p in parts if p.endswith(".parquet")]) == FILES and sd.MANIFEST in parts
    assert not [p for p in parts if p.startswith(".tmp")]
    for f in pair_files:  # one part per input file, holding exactly that file's rows in order
        entry = json.loads((output / sd.MANIFEST).read_text())["files"][str(f.resolve())]
        assert pq.read_table(output / entry["part"]).column("id").to_pylist() == [r["id"] for r in read_rows([f])]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    from seqcls import cli

    capsys.readouterr()
    code = cli.main(["score", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_rerun_skips_files_already_scored_and_refuses_other_settings(capsys, scored_with_crash, tiny_qwen3_converted, pair_files):
    output, _ = scored_with_crash
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in output.iterdir()}
    args = [tiny_qwen3_converted, "--input", pair_files[0].parent, "--output", output, "--ray", "--num-workers", "2", "--dtype", "float32"]
    code, stdout, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["files_scored"] == 0 and summary["files_skipped"] == FILES and summary["rows"] == 0
    assert "Nothing to score" in err
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in output.iterdir()} == before  # nothing rewritten
    code, _, err = run_cli(capsys, *args, "--raw")
    assert code == 2 and "--overwrite" in err and "raw" in err
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in output.iterdir()} == before


@pytest.mark.slow
def test_cli_resumes_a_run_killed_after_two_of_three_files(capsys, scored_with_crash, tiny_qwen3_converted, pair_files, scorer, tmp_path):
    output, _ = scored_with_crash
    manifest = json.loads((output / sd.MANIFEST).read_text())
    # the state a run leaves when killed while scoring the second file: two parts and their manifest entries
    out = tmp_path / "resumed.parquet"
    out.mkdir()
    keep = {k: v for k, v in manifest["files"].items() if k != str(pair_files[1].resolve())}
    for entry in keep.values():
        (out / entry["part"]).write_bytes((output / entry["part"]).read_bytes())
    (out / sd.MANIFEST).write_text(json.dumps({**manifest, "files": keep}))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    args = [tiny_qwen3_converted, "--input", pair_files[0].parent, "--output", out, "--ray", "--num-workers", "2", "--dtype", "float32"]
    code, stdout, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["files_scored"] == 1 and summary["files_skipped"] == 2 and summary["rows"] == ROWS
    assert "Skipping 2 of 3" in err
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert all(after[name] == before[name] for name in before if name != sd.MANIFEST)  # finished parts untouched
    table = sd.read_scores(out)
    rows = read_rows(pair_files)
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    got = table.column("score").to_pylist()
    assert max(abs(a - b) for a, b in zip(got, reference(scorer, rows))) <= ATOL


@pytest.mark.slow
def test_parquet_input_jsonl_parts_and_raw_logits(ray_local, tiny_qwen3_converted, scorer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_pairs(7, 500, "pq")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    out = tmp_path / "scores.jsonl"
    summary = sd.score_files(tiny_qwen3_converted, tmp_path / "pairs.parquet", out, num_workers=2, dtype="float32", raw=True)
    assert summary.rows == 500
    part = [p for p in out.iterdir() if p.suffix == ".jsonl"]
    got = [json.loads(line) for line in part[0].read_text().splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    expected = scorer.score([r["query"] for r in rows], [r["document"] for r in rows], raw=True).scores
    assert max(abs(g["score"] - e) for g, e in zip(got, expected)) <= ATOL


@pytest.mark.slow
def test_score_dataset_keeps_order_and_columns(ray_local, tiny_qwen3_converted, scorer):
    import ray

    rows = make_pairs(3, 300, "ds")
    scored = sd.score_dataset(ray.data.from_items(rows), tiny_qwen3_converted, num_workers=2, dtype="float32", batch_rows=64)
    got = scored.take_all()
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    assert max(abs(g["score"] - e) for g, e in zip(got, reference(scorer, rows))) <= ATOL


# ---------------------------------------------------------------- errors users can cause (no Ray start needed)


def test_cli_errors(capsys, tiny_qwen3_converted, tmp_path, monkeypatch):
    model = tiny_qwen3_converted
    good = write_jsonl(tmp_path / "good.jsonl", make_pairs(0, 3, "g"))
    cases = [
        (["--input", good, "--ray"], "--output"),
        (["--input", good, "--output", tmp_path / "o", "--ray", "--top-n", "2"], "--top-n"),
        (["--query", "q", "--document", "d", "--ray", "--output", tmp_path / "o"], "--input"),
        (["--input", good, "--output", tmp_path / "o", "--num-workers", "2"], "--ray"),
        (["--input", good, "--output", tmp_path / "o", "--ray", "--device", "cuda:1"], "--device"),
        (["--input", tmp_path / "missing.jsonl", "--output", tmp_path / "o", "--ray"], "not found"),
        (["--input", good, "--output", tmp_path / "o", "--ray", "--ray-address", "127.0.0.1:1"], "Nothing answers"),
        (["--input", good, "--output", tmp_path / "o", "--ray", "--ray-address", "head-node"], "host:port"),
    ]
    no_doc = write_jsonl(tmp_path / "nodoc.jsonl", [{"query": "q", "text": "t"}])
    cases.append((["--input", no_doc, "--output", tmp_path / "o", "--ray"], "'document'"))
    lists = write_jsonl(tmp_path / "lists.jsonl", [{"query": "q", "documents": ["a", "b"]}])
    cases.append((["--input", lists, "--output", tmp_path / "o", "--ray"], "one {\"query\", \"document\"} row per document"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.jsonl", make_pairs(0, 2, "a"))
    (mixed / "b.parquet").write_bytes(b"PAR1")
    cases.append((["--input", mixed, "--output", tmp_path / "o", "--ray"], "mix JSONL and Parquet"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases.append((["--input", good, "--output", foreign, "--ray"], "not a seqcls scores folder"))
    for args, needle in cases:
        code, _, err = run_cli(capsys, model, *args)
        assert code == 2 and needle in " ".join(err.split()), (args, err)
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "o").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    code, _, err = run_cli(capsys, model, "--input", good, "--output", tmp_path / "o", "--ray")
    assert code == 2 and "seqcls[ray]" in err


def test_cli_import_does_not_load_ray():
    import subprocess

    code = "import sys, seqcls.cli; assert 'ray' not in sys.modules and 'torch' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "convert")}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


@pytest.mark.slow
def test_a_bad_row_fails_cleanly_and_writes_no_part(capsys, ray_local, tiny_qwen3_converted, tmp_path):
    rows = make_pairs(5, 40, "bad")
    rows[17]["document"] = None
    good = make_pairs(6, 40, "good")
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", good)
    write_jsonl(folder / "b.jsonl", rows)
    out = tmp_path / "scores.parquet"
    code, _, err = run_cli(capsys, tiny_qwen3_converted, "--input", folder, "--output", out, "--ray", "--num-workers", "2")
    assert code == 2 and "must be a string" in err and "Traceback" not in err, err
    manifest = json.loads((out / sd.MANIFEST).read_text())
    assert "b.jsonl" not in [Path(k).name for k in manifest["files"]]  # (a.jsonl is kept if it finished first)
    assert len(list(out.glob("part-*"))) == len(manifest["files"]) and not list(out.glob(".tmp-*"))
