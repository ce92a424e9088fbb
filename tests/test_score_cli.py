"""`seqcls score`: query/document and JSONL modes, JSON output, exit code 2 on bad input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from factory import build_model  # noqa: E402

import seqcls  # noqa: E402

QUERY = "what is the capital of France?"
DOCS = ["The capital of France is Paris.", "yes no Yes No", "Given a query A and a passage B"]


@pytest.fixture(scope="session")
def cli_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score-cli")
    src = build_model(root / "src", "qwen3", tied=True)
    out = root / "qwen3-seqcls"
    seqcls.convert(str(src), output=out, recipe="qwen3", verify=False)
    return out


@pytest.fixture(scope="session")
def cli_scorer(cli_model):
    return seqcls.Scorer(cli_model, device="cpu")


def run_score(capsys, *args: str) -> tuple[int, str, str]:
    """Run `seqcls score ...` in-process: through seqcls.cli once it registers the command, else through
    a typer app holding score_command with the same error handling as seqcls.cli.main."""
    import click
    import typer

    from seqcls import cli
    from seqcls.errors import SeqclsError
    from seqcls.runtime.cli_score import score_command

    capsys.readouterr()
    registered = any((c.name or getattr(c.callback, "__name__", "")) in ("score", "score_command") for c in cli.app.registered_commands)
    if registered:
        code = cli.main(["score", *map(str, args)])
    else:
        app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)

        @app.callback()
        def _root() -> None:
            pass

        app.command("score")(score_command)
        try:
            result = app(args=["score", *map(str, args)], prog_name="seqcls", standalone_mode=False)
            code = result if isinstance(result, int) else 0
        except SeqclsError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            code = exc.exit_code
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.ClickException as exc:
            exc.show()
            code = 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_query_and_documents_table(capsys, cli_model, cli_scorer):
    code, out, err = run_score(capsys, cli_model, "--query", QUERY, *[x for d in DOCS for x in ("--document", d)], "--device", "cpu")
    assert code == 0, err
    expected = cli_scorer.score(QUERY, DOCS).scores
    best = max(range(len(DOCS)), key=lambda i: expected[i])
    assert f"{expected[best]:.6f}" in out and "probability" in out
    assert out.index(f"{expected[best]:.6f}") < min(out.index(f"{expected[i]:.6f}") for i in range(len(DOCS)) if i != best)
    assert "prompt tokens" in err


def test_json_output_top_n_and_raw(capsys, cli_model, cli_scorer):
    args = [cli_model, "--query", QUERY, *[x for d in DOCS for x in ("--document", d)], "--device", "cpu", "--json"]
    code, out, err = run_score(capsys, *args, "--top-n", "2")
    assert code == 0, err
    data = json.loads(out)
    expected = cli_scorer.score(QUERY, DOCS)
    order = sorted(range(len(DOCS)), key=lambda i: -expected.scores[i])[:2]
    assert [r["index"] for r in data["results"]] == order
    assert [r["score"] for r in data["results"]] == [expected.scores[i] for i in order]
    assert data["results"][0]["document"] == DOCS[order[0]]
    assert data["usage"]["prompt_tokens"] == expected.usage.prompt_tokens and data["activation"] == "sigmoid"
    code, out, _ = run_score(capsys, *args, "--raw")
    assert code == 0 and json.loads(out)["activation"] == "none"
    raw = cli_scorer.score(QUERY, DOCS, raw=True).scores
    assert sorted(r["score"] for r in json.loads(out)["results"]) == sorted(raw)
    code, out, _ = run_score(capsys, cli_model, "--query", "a", "--query", "b", "--document", "x", "--document", "y", "--device", "cpu", "--json")
    assert code == 0
    rows = json.loads(out)["results"]
    assert [(r["index"], r["query"]) for r in rows] == [(0, "a"), (1, "b")]
    assert [r["score"] for r in rows] == cli_scorer.score(["a", "b"], ["x", "y"]).scores


def test_jsonl_in_and_out(capsys, tmp_path, cli_model, cli_scorer):
    lines = [
        {"id": "pair-1", "query": QUERY, "document": DOCS[0]},
        {"query": QUERY, "documents": DOCS},
        {"id": 7, "query": "yes or no?", "document": DOCS[1], "instruction": "Judge relevance"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    code, out, err = run_score(capsys, cli_model, "--input", path, "--top-n", "2", "--device", "cpu")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3
    assert rows[0]["id"] == "pair-1" and rows[0]["score"] == pytest.approx(cli_scorer.score(QUERY, DOCS[0]).scores[0], abs=1e-6)
    expected = cli_scorer.score(QUERY, DOCS)
    assert "id" not in rows[1] and len(rows[1]["results"]) == 2
    assert rows[1]["results"][0]["score"] == pytest.approx(max(expected.scores), abs=1e-6)
    assert rows[1]["prompt_tokens"] == expected.usage.prompt_tokens
    assert rows[2]["id"] == 7
    assert rows[2]["score"] == pytest.approx(cli_scorer.score("yes or no?", DOCS[1], instruction="Judge relevance").scores[0], abs=1e-6)
    assert "Scored 5 pairs from 3 lines" in err

    target = tmp_path / "scores.jsonl"
    code, out, _ = run_score(capsys, cli_model, "--input", path, "--output", target, "--device", "cpu", "--quiet")
    assert code == 0 and out == ""
    assert [json.loads(x) for x in target.read_text().splitlines()][0] == rows[0]
    before = target.read_bytes()
    code, _, err = run_score(capsys, cli_model, "--input", path, "--output", target, "--device", "cpu", "--quiet")
    assert code == 2 and "already exists; pass --overwrite" in err and target.read_bytes() == before
    target.write_text("stale\n")
    code, _, err = run_score(capsys, cli_model, "--input", path, "--output", target, "--device", "cpu", "--quiet", "--overwrite")
    assert code == 0, err
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_progress_bar_path_for_large_inputs(capsys, tmp_path, cli_model):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"query": QUERY, "document": f"doc {i}"}) + "\n" for i in range(70)))
    code, out, err = run_score(capsys, cli_model, "--input", path, "--device", "cpu")
    assert code == 0, err
    assert len(out.splitlines()) == 70


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "Pass --query and at least one --document"),
        (["--query", "q"], "Pass --query and at least one --document"),
        (["--query", "a", "--query", "b", "--query", "c", "--document", "x", "--document", "y"], "1:1, 1:N or N:N"),
        (["--query", "a", "--query", "b", "--document", "x", "--document", "y", "--top-n", "1"], "--top-n needs a single --query"),
        (["--query", "q", "--document", "d", "--input", "pairs.jsonl"], "not both"),
        (["--input", "missing.jsonl"], "not found"),
        (["--query", "q", "--document", "d", "--device", "tpu"], "Unknown device"),
    ],
)
def test_usage_errors_exit_2(capsys, cli_model, args, message):
    code, _, err = run_score(capsys, cli_model, *args)
    assert code == 2
    assert message in " ".join(err.split())


def test_bad_jsonl_and_bad_folder_exit_2(capsys, tmp_path, cli_model):
    bad = tmp_path / "bad.jsonl"
    for text, message in [
        ('{"query": "q", "document": "d"}\nnot json\n', "line 2 is not valid JSON"),
        ('{"query": "q"}\n', "exactly one of"),
        ('{"query": "q", "documents": ["a", 3]}\n', "must be strings"),
        ('{"document": "d"}\n', "string \"query\""),
        ("\n\n", "holds no pairs"),
    ]:
        bad.write_text(text)
        code, _, err = run_score(capsys, cli_model, "--input", bad, "--device", "cpu")
        assert code == 2 and message in " ".join(err.split()), text
    code, _, err = run_score(capsys, tmp_path, "--query", "q", "--document", "d", "--device", "cpu")
    assert code == 2 and "no config.json" in err
    long_doc = " ".join(["The capital of France is Paris."] * 40)
    code, _, err = run_score(capsys, cli_model, "--query", QUERY, "--document", long_doc, "--max-length", "150", "--no-truncate", "--device", "cpu")
    assert code == 2 and "over the limit of 150" in " ".join(err.split())
    code, out, err = run_score(capsys, cli_model, "--query", QUERY, "--document", long_doc, "--max-length", "150", "--device", "cpu", "--json")
    assert code == 0 and json.loads(out)["truncated"] == [0]
