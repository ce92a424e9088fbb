"""``seqcls score``: score pairs from the command line (registered in ``seqcls.cli``).

Two input forms:

* ``--query Q --document D [--document D ...]``: one query against documents (or as many queries
  as documents); prints a ranked table, or JSON with ``--json``.
* ``--input pairs.jsonl`` (``-`` for stdin): one JSON object per line, either
  ``{"query": ..., "document": ...}`` or ``{"query": ..., "documents": [...]}``, optionally with
  ``"id"`` (echoed back) and ``"instruction"``. Writes one JSON line per input line, in order:
  ``{"id", "score", "prompt_tokens"}`` for a pair, ``{"id", "results": [{"index", "score"}, ...],
  "prompt_tokens"}`` (best first, cut to ``--top-n``) for a document list.

With ``--ray`` (extra ``seqcls[ray]``), ``--input`` is a JSONL or Parquet file, folder or glob of
``{query, document[, id, ...]}`` rows and ``--output`` a folder: one scored part per input file plus a
manifest, written by ``seqcls.distributed.score_files``; a rerun skips the files already scored.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import UsageError

PROGRESS_MIN_PAIRS = 64


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if str(path) == "-":
        lines = sys.stdin.read().splitlines()
        name = "<stdin>"
    else:
        if not path.is_file():
            raise UsageError(f"Input file {path} not found; pass a JSONL file of {{\"query\", \"document\"}} lines.")
        lines = path.read_text(encoding="utf-8").splitlines()
        name = str(path)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{name} line {number} is not valid JSON ({exc.msg}); write one JSON object per line.") from exc
        if not isinstance(record, dict) or not isinstance(record.get("query"), str):
            raise UsageError(f"{name} line {number}: expected an object with a string \"query\" and a \"document\" or \"documents\"; fix the line.")
        has_one, has_many = "document" in record, "documents" in record
        if has_one == has_many:
            raise UsageError(f"{name} line {number}: give exactly one of \"document\" (a string) or \"documents\" (a list of strings).")
        docs = [record["document"]] if has_one else record["documents"]
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            raise UsageError(f"{name} line {number}: documents must be strings (\"documents\" a non-empty list of them).")
        instruction = record.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise UsageError(f"{name} line {number}: \"instruction\" must be a string.")
        records.append({"line": number, "id": record.get("id"), "query": record["query"], "docs": docs,
                        "single": has_one, "instruction": instruction})
    if not records:
        raise UsageError(f"{name} holds no pairs; write one JSON object per line.")
    return records


class _Progress:
    """A rich progress bar on stderr (pairs done of total). With ``total`` None the bar starts at the
    first update, with the total that update gives (Ray runs learn it after reading the inputs)."""

    def __init__(self, enabled: bool, total: int | None = None):
        self.enabled = enabled and (total is None or total >= PROGRESS_MIN_PAIRS)
        self.total = total
        self.offset = 0
        self.bar: Any = None

    def _start(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("Scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("pairs"), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.__enter__()
        self.task = self.bar.add_task("score", total=total)

    def __enter__(self) -> "_Progress":
        if self.enabled and self.total is not None:
            self._start(self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def callback(self):
        if not self.enabled:
            return None
        base = self.offset

        def update(done: int, total: int) -> None:
            if self.bar is None:
                self._start(total)
            self.bar.update(self.task, completed=base + done)

        return update

    def advance_base(self, n: int) -> None:
        self.offset += n


def _score_records(scorer: Any, records: list[dict[str, Any]], top_n: Optional[int], raw: bool, truncate: bool,
                   max_length: Optional[int], progress: _Progress, instruction: Optional[str] = None) -> list[dict[str, Any]]:
    by_instruction: dict[Any, list[int]] = {}
    for r, record in enumerate(records):
        chosen = record["instruction"] if record["instruction"] is not None else instruction
        by_instruction.setdefault(chosen, []).append(r)
    outputs: list[dict[str, Any] | None] = [None] * len(records)
    for instruction, members in by_instruction.items():
        queries, docs, owner = [], [], []
        for r in members:
            for d in records[r]["docs"]:
                queries.append(records[r]["query"])
                docs.append(d)
                owner.append(r)
        result = scorer.score(queries, docs, instruction=instruction, raw=raw, truncate=truncate, max_length=max_length,
                              progress=progress.callback())
        progress.advance_base(len(docs))
        k = 0
        for r in members:
            record = records[r]
            n = len(record["docs"])
            scores = result.scores[k:k + n]
            tokens = sum(result.num_tokens[k:k + n])
            k += n
            line: dict[str, Any] = {}
            if record["id"] is not None:
                line["id"] = record["id"]
            if record["single"]:
                line["score"] = scores[0]
            else:
                order = sorted(range(n), key=lambda i: (-_key(scores[i]), i))
                if top_n:
                    order = order[:top_n]
                line["results"] = [{"index": i, "score": scores[i]} for i in order]
            line["prompt_tokens"] = tokens
            outputs[r] = line
    return [o for o in outputs if o is not None]


def _key(score: Any) -> float:
    return score if isinstance(score, float) else score[0]


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def score_command(
    model: Annotated[str, typer.Argument(help="A folder written by `seqcls convert` (or a Hub repo id of one).")],
    query: Annotated[Optional[list[str]], typer.Option("--query", help="The query (repeat it once per document for N:N pairs).")] = None,
    document: Annotated[Optional[list[str]], typer.Option("--document", help="A document to score; repeat for several.")] = None,
    image: Annotated[Optional[list[str]], typer.Option("--image", help="An image document (local file or data: URL; never fetched) for vision-language models; repeat for several, scored after the --document texts.")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", help="JSONL of {\"query\", \"document\"} or {\"query\", \"documents\"} lines ('-' reads stdin).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="With --input: write the JSONL results to this file instead of stdout (with --ray: a folder).")] = None,
    top_n: Annotated[Optional[int], typer.Option("--top-n", min=0, help="Keep only the best N documents per query (0: all).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto (every GPU when present), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.")] = "auto",
    instruction: Annotated[Optional[str], typer.Option("--instruction", help="Replace the recipe's default instruction ('' for none).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print raw logits instead of probabilities.")] = False,
    max_length: Annotated[Optional[int], typer.Option("--max-length", min=1, help="Longest prompt in tokens (default: the model's).")] = None,
    no_truncate: Annotated[bool, typer.Option("--no-truncate", help="Refuse over-long pairs instead of cutting their documents.")] = False,
    batch_tokens: Annotated[Optional[int], typer.Option("--batch-tokens", min=1, help="Tokens per forward pass (default 64k on GPU, 4k on CPU).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary on stderr.")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="Score on Ray: --input a JSONL/Parquet file, folder or glob; --output a folder of parts (resumable).")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="With --ray: the cluster to join (host:6379 or ray://host:10001); default a local instance.")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", min=1, help="With --ray: Scorer actors (default one per GPU of the cluster, else one per CPU).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output file (with --ray: rescore everything into an existing --output folder).")] = False,
) -> None:
    """Score query-document pairs with a converted model (probabilities unless --raw)."""
    if ray:
        if image:
            raise UsageError("--image does not go with --ray (Ray inputs are text pairs); score images without --ray.")
        _score_on_ray(model, input_file, output, query, document, top_n, json_out, device, dtype, instruction, raw, max_length,
                      no_truncate, batch_tokens, quiet, ray_address, num_workers, overwrite)
        return
    if ray_address is not None or num_workers is not None:
        raise UsageError("--ray-address and --num-workers go with --ray; add --ray (or drop them).")
    if output is not None and output.exists() and not overwrite:
        raise UsageError(f"--output {output} already exists; pass --overwrite to replace it or choose another file.")
    if input_file is not None and (query or document or image):
        raise UsageError("Pass either --query/--document/--image or --input FILE.jsonl, not both.")
    if input_file is None:
        if not query or not (document or image):
            raise UsageError("Pass --query and at least one --document (or --image), or --input FILE.jsonl.")
        if output is not None:
            raise UsageError("--output goes with --input; with --query/--document use --json and redirect stdout.")
    records = _read_jsonl(input_file) if input_file is not None else None
    if query and len(query) > 1 and top_n:
        raise UsageError("--top-n needs a single --query (with several queries the pairs are scored N:N in input order).")

    from .scorer import Scorer

    started = time.perf_counter()
    scorer = Scorer(model, device=device, dtype=dtype, max_length=max_length, truncate=not no_truncate, batch_tokens=batch_tokens)
    loaded = time.perf_counter()
    if records is not None:
        total = sum(len(r["docs"]) for r in records)
        with _Progress(not quiet, total) as progress:
            lines = _score_records(scorer, records, top_n, raw, not no_truncate, max_length, progress, instruction)
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        if output is not None:  # written whole, then renamed into place: never a half-written results file
            tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
            try:
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, output)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            sys.stdout.write(text)
        if not quiet:
            seconds = time.perf_counter() - loaded
            sys.stderr.write(f"Scored {total} pairs from {len(records)} lines in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} pairs/s) on {scorer.device}.\n")
        return

    assert query is not None
    items: list[Any] = list(document or []) + [{"type": "image_url", "image_url": {"url": x}} for x in image or []]
    document = list(document or []) + [f"[image] {x if not x.startswith('data:') else x[:40] + '...'}" for x in image or []]
    with _Progress(not quiet and not json_out, len(document)) as progress:
        result = scorer.score(query if len(query) > 1 else query[0], items, instruction=instruction, raw=raw,
                              progress=progress.callback())
    single = len(query) == 1
    order = list(range(len(document)))
    if single:
        order.sort(key=lambda i: (-_key(result.scores[i]), i))
        if top_n:
            order = order[:top_n]
    rows = []
    for i in order:
        row: dict[str, Any] = {"index": i, "score": result.scores[i], "document": document[i]}
        if not single:
            row["query"] = query[i]
        rows.append(row)
    if json_out:
        data = {"model": str(model), "activation": result.activation, "results": rows, "usage": result.usage.to_dict(),
                "truncated": result.truncated}
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    label = "logit" if result.activation == "none" else ("probability" if result.activation == "sigmoid" else result.activation)
    table = Table(title=f"{scorer.model_name}: {len(document)} pair(s)", title_justify="left")
    table.add_column("rank" if single else "pair", justify="right")
    table.add_column("index", justify="right")
    table.add_column(label, justify="right")
    if not single:
        table.add_column("query", overflow="fold")
    table.add_column("document", overflow="fold")
    for rank, row in enumerate(rows, 1):
        score = row["score"]
        shown = f"{score:.6f}" if isinstance(score, float) else ", ".join(f"{x:.4f}" for x in score)
        cells = [str(rank if single else row["index"]), str(row["index"]), shown]
        if not single:
            cells.append(_short(row["query"], 30))
        cells.append(_short(row["document"]))
        table.add_row(*cells)
    console = Console(soft_wrap=True)
    console.print(table)
    if not quiet:
        note = f", {len(result.truncated)} truncated" if result.truncated else ""
        Console(stderr=True).print(
            f"{result.usage.prompt_tokens} prompt tokens{note}; {time.perf_counter() - started:.1f} s on {scorer.device} ({scorer.dtype}).",
            highlight=False,
        )


def _score_on_ray(model: str, input_file: Optional[Path], output: Optional[Path], query: Optional[list[str]],
                  document: Optional[list[str]], top_n: Optional[int], json_out: bool, device: str, dtype: str,
                  instruction: Optional[str], raw: bool, max_length: Optional[int], no_truncate: bool,
                  batch_tokens: Optional[int], quiet: bool, address: Optional[str], num_workers: Optional[int],
                  overwrite: bool) -> None:
    """``seqcls score --ray``: files in, a resumable folder of scored parts out (seqcls.distributed)."""
    if query or document:
        raise UsageError("--ray scores files: pass --input PAIRS (JSONL/Parquet file, folder or glob) instead of --query/--document.")
    if input_file is None or str(input_file) == "-":
        raise UsageError("--ray needs --input: a JSONL or Parquet file, a folder of them, or a glob (not stdin).")
    if output is None:
        raise UsageError("--ray needs --output FOLDER (one part per input file plus a manifest; end it in .jsonl for JSONL parts).")
    if top_n:
        raise UsageError("--top-n does not apply to --ray, which scores one pair per row; rank the output instead.")
    text = device.strip().lower()
    if text not in ("auto", "cpu", "cuda"):
        raise UsageError(f"With --ray, --device is auto, cpu or cuda (Ray gives each worker its own GPU), not {device!r}.")
    gpus = None if text == "auto" else (0.0 if text == "cpu" else 1.0)

    from ..distributed import require_ray, score_files

    require_ray()

    def log(message: str) -> None:
        if not quiet:
            sys.stderr.write(message + "\n")

    with _Progress(not quiet) as bar:
        summary = score_files(model, str(input_file), output, address=address, num_workers=num_workers, gpus_per_worker=gpus,
                              dtype=dtype, raw=raw, instruction=instruction, max_length=max_length, truncate=not no_truncate,
                              pack_tokens=batch_tokens, overwrite=overwrite, progress=bar.callback(), log=log)
    if json_out:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    if not quiet:
        if summary.rows:
            sys.stderr.write(f"Scored {summary.rows} pairs from {summary.files_scored} file(s) in {summary.seconds:.1f} s "
                             f"({summary.pairs_per_second:.1f} pairs/s) on {summary.workers} {summary.device} worker(s); "
                             f"{summary.files_skipped} file(s) already done; parts in {summary.output}.\n")
        else:
            sys.stderr.write(f"Nothing to score: {summary.files_skipped} file(s) already scored in {summary.output}.\n")
