"""Score pairs on a Ray cluster: one ``Scorer`` actor per GPU (or CPU worker), fed by Ray Data.

Optional extra: ``pip install 'seqcls[ray]'``. Nothing here imports Ray, torch or transformers at
module import time.

Two layers:

* ``score_dataset(ds, model)``: a lazy Ray Dataset transform. Rows of ``{query, document, ...}`` go
  through ``map_batches`` with ``ScorerActor`` (a callable class, one actor per worker, ``num_gpus=1``
  each on GPU clusters) and come back with a ``score`` column, in input order. Ray batches are sized
  in tokens; inside each batch the runtime engine packs by its own token budget.
* ``score_files(model, inputs, output)``: behind ``seqcls score --ray``. Reads JSONL or Parquet files
  with Ray Data, writes one output part per input file (temp file + rename) and a manifest, so a
  rerun skips the files already scored and a killed run loses and duplicates nothing.

Example:
    >>> import ray, seqcls.distributed as sd
    >>> ds = ray.data.read_parquet("pairs/")
    >>> sd.score_dataset(ds, "qwen3-reranker-seqcls", num_workers=4).write_parquet("scores/")
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import CheckFailed, SeqclsError, UsageError

INSTALL_HINT = "install seqcls[ray] (pip install 'seqcls[ray]')"
MANIFEST = "_seqcls_manifest.json"
PATH_COLUMN = "path"  # the column Ray Data's include_paths adds
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_PACK_TOKENS = {"cpu": 4096, "cuda": 65536}  # the engine's own defaults
PACKS_PER_BATCH = 8  # a Ray batch holds about this many engine packs: room to sort and pack, small retries
SAMPLE_ROWS = 256
READ_CPUS = 0  # reading is light next to scoring: read tasks reserve no CPU, so they never queue behind the actors


def require_ray() -> Any:
    """Import Ray (with Ray Data) or raise UsageError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"Ray is not installed ({exc.name or 'ray'} is missing); {INSTALL_HINT} to score on Ray.") from exc
    return ray


# ---------------------------------------------------------------- the actor


class ScorerActor:
    """A callable class for ``Dataset.map_batches``: loads one ``Scorer`` and scores batches with it.

    Args:
        model: a converted folder (reachable from every node) or a Hub repo id of one.
        device: ``cpu`` or ``cuda`` (the GPU Ray assigned to this actor).
        dtype: as in ``Scorer``.
        raw: write raw logits instead of probabilities (one-label models).
        instruction: replaces the recipe's default instruction.
        max_length, truncate: as in ``Scorer``.
        pack_tokens: tokens per forward pass (the engine's ``batch_tokens``).
        query_column, document_column, score_column: column names.

    Subclass it to add pre- or post-processing; pass the subclass as ``actor_class``.
    """

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", *, raw: bool = False,
                 instruction: Optional[str] = None, max_length: Optional[int] = None, truncate: bool = True,
                 pack_tokens: Optional[int] = None, query_column: str = "query", document_column: str = "document",
                 score_column: str = "score"):
        from .runtime.scorer import Scorer

        self.scorer = Scorer(model, device=device, dtype=dtype, max_length=max_length, truncate=truncate, batch_tokens=pack_tokens)
        self.raw = raw
        self.instruction = instruction
        self.query_column = query_column
        self.document_column = document_column
        self.score_column = score_column

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Score one batch (a dict of numpy columns); returns it with the score column added."""
        import numpy as np

        _check_columns(list(batch), self.query_column, self.document_column, "A batch")
        queries = _strings(batch[self.query_column], self.query_column)
        documents = _strings(batch[self.document_column], self.document_column)
        out = dict(batch)
        if not queries:
            out[self.score_column] = np.zeros(0, dtype=np.float64)
            return out
        result = self.scorer.score(queries, documents, instruction=self.instruction, raw=self.raw)
        if self.scorer.num_labels == 1:
            out[self.score_column] = np.asarray(result.scores, dtype=np.float64)
        else:
            column = np.empty(len(result.scores), dtype=object)
            column[:] = [list(row) for row in result.scores]
            out[self.score_column] = column
        return out


def _check_columns(columns: list[str], query_column: str, document_column: str, where: str) -> None:
    missing = [c for c in (query_column, document_column) if c not in columns]
    if missing:
        raise UsageError(f"{where} has no {missing[0]!r} column (it has {', '.join(columns) or 'none'}); "
                         f"give every row a string {query_column!r} and {document_column!r}.")


def _strings(column: Any, name: str) -> list[str]:
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise UsageError(f"Column {name!r} holds {type(value).__name__} in a row (batch row {i}); every {name} must be a string.")
    return values


# ---------------------------------------------------------------- the Dataset transform


@dataclass(frozen=True)
class Workers:
    """How many Scorer actors run, and what each one reserves."""

    count: int
    gpus: float
    cpus: float

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def plan_workers(num_workers: Optional[int] = None, gpus_per_worker: Optional[float] = None, cpus_per_worker: float = 1.0) -> Workers:
    """Workers for the connected cluster: one per GPU when it has GPUs, else one per ``cpus_per_worker`` CPUs."""
    ray = require_ray()
    resources = ray.cluster_resources()
    gpus_total = float(resources.get("GPU", 0))
    cpus_total = float(resources.get("CPU", 1))
    gpus = (1.0 if gpus_total > 0 else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
    if gpus > 0 and gpus_total == 0:
        raise UsageError("GPU workers were asked for but the Ray cluster has no GPUs; drop gpus_per_worker or add GPU nodes.")
    if num_workers is None:
        if gpus > 0:
            num_workers = max(1, int(gpus_total // gpus))
        else:
            num_workers = max(1, int(cpus_total // cpus_per_worker))
    if num_workers < 1:
        raise UsageError(f"num_workers must be at least 1, not {num_workers}.")
    return Workers(int(num_workers), gpus, float(cpus_per_worker))


def rows_per_batch(model: str, sample: list[dict[str, Any]], batch_tokens: int, *, instruction: Optional[str] = None,
                   max_length: Optional[int] = None, query_column: str = "query", document_column: str = "document") -> int:
    """Rows per Ray batch so that a batch holds about ``batch_tokens`` prompt tokens, from the mean prompt
    length of ``sample`` (tokenised with the model's own tokenizer and template, on the driver)."""
    from .runtime.folder import load_folder
    from .runtime.prompts import PromptEncoder, load_tokenizer

    pairs = [(r.get(query_column), r.get(document_column)) for r in sample]
    pairs = [(q, d) for q, d in pairs if isinstance(q, str) and isinstance(d, str)]
    if not pairs:
        return 64
    folder = load_folder(model)
    limit = folder.max_length if max_length is None else min(int(max_length), folder.max_length)
    encoder = PromptEncoder(load_tokenizer(folder.path), folder.template, limit)
    encoded = encoder.encode([q for q, _ in pairs], [d for _, d in pairs], instruction, truncate=True)
    mean = max(1.0, encoded.num_tokens / len(pairs))
    return max(1, int(batch_tokens // mean))


def score_dataset(
    dataset: Any,
    model: str | Path,
    *,
    num_workers: Optional[int] = None,
    gpus_per_worker: Optional[float] = None,
    cpus_per_worker: float = 1.0,
    dtype: str = "auto",
    raw: bool = False,
    instruction: Optional[str] = None,
    max_length: Optional[int] = None,
    truncate: bool = True,
    batch_tokens: Optional[int] = None,
    pack_tokens: Optional[int] = None,
    batch_rows: Optional[int] = None,
    query_column: str = "query",
    document_column: str = "document",
    score_column: str = "score",
    actor_class: type = ScorerActor,
) -> Any:
    """Add a score column to a Ray Dataset of (query, document) rows, one Scorer actor per worker.

    Lazy: nothing runs until the result is consumed (``write_parquet``, ``iter_batches``, ...). Input
    order is kept (the result's DataContext has ``preserve_order`` set); other columns (an ``id``)
    pass through. Scores equal the single-process ``Scorer``'s on the same pairs, model, dtype and
    device kind up to float rounding (the engine's sums depend on how pairs are packed together).
    A worker that dies is restarted by Ray and its batch retried; failed batches' rows are never emitted.

    Args:
        dataset: a ``ray.data.Dataset`` with string columns ``query_column`` and ``document_column``.
        model: a converted folder, at the same path on every node (or a Hub repo id of one).
        num_workers: Scorer actors (default: one per GPU of the cluster, else one per CPU). CPU
            workers that take every CPU starve the dataset's read tasks: read with ``num_cpus=0``
            as ``score_files`` does, or leave CPUs free.
        gpus_per_worker: GPUs each actor reserves (default 1 on clusters with GPUs, else 0: CPU).
        cpus_per_worker: CPUs each actor reserves (and torch threads on CPU workers).
        dtype, raw, instruction, max_length, truncate: as in ``Scorer.score``.
        batch_tokens: prompt tokens per Ray batch handed to an actor (default 8 engine packs: 512k on
            GPU, 32k on CPU), turned into a row count from a sample of the data.
        pack_tokens: tokens per forward pass inside an actor (the engine's budget).
        batch_rows: rows per Ray batch, skipping the token estimate.
        query_column, document_column, score_column: column names.
        actor_class: ``ScorerActor`` or a subclass of it.

    Returns:
        The lazy scored Dataset.

    Example:
        >>> scored = score_dataset(ray.data.read_json("pairs.jsonl", lines=True), "out", num_workers=2)
        >>> scored.take(1)[0]["score"]
    """
    ray = require_ray()
    model = str(model)
    workers = plan_workers(num_workers, gpus_per_worker, cpus_per_worker)
    pack = pack_tokens or DEFAULT_PACK_TOKENS[workers.device]
    if batch_rows is None:
        sample = dataset.limit(SAMPLE_ROWS).take_all()
        _check_columns(list(sample[0]) if sample else [], query_column, document_column, "The dataset")
        batch_rows = rows_per_batch(model, sample, batch_tokens or PACKS_PER_BATCH * pack, instruction=instruction,
                                    max_length=max_length, query_column=query_column, document_column=document_column)
    scored = dataset.map_batches(
        actor_class,
        fn_constructor_kwargs=dict(model=model, device=workers.device, dtype=dtype, raw=raw, instruction=instruction,
                                   max_length=max_length, truncate=truncate, pack_tokens=pack, query_column=query_column,
                                   document_column=document_column, score_column=score_column),
        batch_size=int(batch_rows),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers.count),
        num_gpus=workers.gpus or None,
        num_cpus=workers.cpus,
    )
    scored.context.execution_options.preserve_order = True
    return scored


# ---------------------------------------------------------------- files in, parts out (the CLI)


@dataclass
class InputFile:
    """One input file: where it is, its format and row count, and its output part's name."""

    path: Path
    kind: str  # "jsonl" or "parquet"
    rows: int
    size: int
    mtime_ns: int
    columns: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return str(self.path)

    def part_name(self, kind: str) -> str:
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:10]
        return f"part-{self.path.stem}-{digest}.{'jsonl' if kind == 'jsonl' else 'parquet'}"

    def stamp(self) -> dict[str, int]:
        return {"rows": self.rows, "size": self.size, "mtime_ns": self.mtime_ns}


def _kind(path: Path) -> Optional[str]:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def find_inputs(spec: str | Path) -> list[Path]:
    """Input files of ``spec``: a file, a folder (its .jsonl/.json/.parquet files, sorted) or a glob."""
    text = str(spec)
    path = Path(text)
    if path.is_file():
        if _kind(path) is None:
            raise UsageError(f"{path} is neither JSONL (.jsonl, .json) nor Parquet (.parquet); convert it or rename it.")
        return [path.resolve()]
    if path.is_dir():
        found = sorted(p.resolve() for p in path.iterdir() if p.is_file() and _kind(p) is not None)
        if not found:
            raise UsageError(f"Folder {path} holds no .jsonl or .parquet files; point --input at the pair files.")
        return found
    if any(ch in text for ch in "*?["):
        found = sorted(Path(p).resolve() for p in glob.glob(text, recursive=True) if Path(p).is_file() and _kind(Path(p)) is not None)
        if not found:
            raise UsageError(f"No .jsonl or .parquet files match {text}; check the pattern.")
        return found
    raise UsageError(f"Input {text} not found; pass a JSONL or Parquet file, a folder of them, or a glob.")


def inspect_input(path: Path, query_column: str = "query", document_column: str = "document") -> InputFile:
    """Count rows and check the columns of one input file (Parquet metadata; JSONL lines)."""
    kind = _kind(path)
    stat = path.stat()
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(str(path))
        except Exception as exc:  # pyarrow raises ArrowInvalid and OSError for broken files
            raise UsageError(f"{path} is not a readable Parquet file ({exc}); rewrite it.") from exc
        columns = list(meta.schema_arrow.names)
        rows = meta.metadata.num_rows
    else:
        rows, columns = 0, []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if rows == 0:
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"{path} line {number} is not valid JSON ({exc.msg}); write one JSON object per line.") from exc
                    if not isinstance(first, dict):
                        raise UsageError(f"{path} line {number} is not a JSON object; write one {{\"query\", \"document\"}} object per line.")
                    columns = list(first)
                rows += 1
    if rows and "documents" in columns and document_column not in columns:
        raise UsageError(f"{path} has \"documents\" lists; --ray scores one pair per row, so write one {{\"query\", \"document\"}} row per document.")
    if rows:
        _check_columns(columns, query_column, document_column, str(path))
    if PATH_COLUMN in columns:
        raise UsageError(f"{path} has a column named {PATH_COLUMN!r}, which Ray Data uses to tag rows with their file; rename that column.")
    return InputFile(path, kind or "jsonl", rows, stat.st_size, stat.st_mtime_ns, columns)


@dataclass
class RunSummary:
    """What ``score_files`` did."""

    output: Path
    files_scored: int
    files_skipped: int
    rows: int
    seconds: float
    workers: int
    device: str

    @property
    def pairs_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output"] = str(self.output)
        out["pairs_per_second"] = self.pairs_per_second
        return out


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def _write_part(path: Path, table: Any, kind: str) -> None:
    if kind == "jsonl":
        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as handle:
                for row in table.to_pylist():
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow.parquet as pq

        def write(tmp: Path) -> None:
            pq.write_table(table, str(tmp))
    _write_atomic(path, write)


def output_kind(output: Path) -> str:
    """Part format from the output folder's name: ``.jsonl``/``.json`` gives JSONL parts, else Parquet."""
    return "jsonl" if output.name.lower().endswith((".jsonl", ".json")) else "parquet"


def _prepare_output(output: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The manifest to continue from (empty for a fresh run); refuses folders that are not ours."""
    import shutil

    manifest_path = output / MANIFEST
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; with --ray it is a folder of parts, so name a folder.")
    if output.is_dir() and any(output.iterdir()):
        if not manifest_path.is_file():
            raise UsageError(f"{output} exists and is not a seqcls scores folder (no {MANIFEST}); choose another --output.")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if overwrite:
            shutil.rmtree(output)
        elif manifest.get("settings") != settings:
            raise UsageError(f"{output} was scored with other settings ({_diff(manifest.get('settings') or {}, settings)}); "
                             "pass --overwrite to rescore everything or choose another --output.")
        else:
            for stale in output.glob(".tmp-*"):  # parts a killed run was writing
                stale.unlink()
            return manifest
    output.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "seqcls-scores/1", "settings": settings, "files": {}}
    _write_json(manifest_path, manifest)  # written first: a run killed before its first part can still be resumed
    return manifest


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys) or "unknown"


def _connect(address: Optional[str] = None, runtime_env: Optional[dict[str, Any]] = None) -> bool:
    """Connect to the Ray cluster at ``address`` (None: a local instance, or the RAY_ADDRESS one; the
    caller has checked that something answers there). Returns whether this call started the
    connection (and so should shut it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "include_dashboard": False}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    try:
        ray.init(address=address or None, **kwargs)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        where = f"the Ray cluster at {address}" if address else "Ray"
        raise UsageError(f"Could not connect to {where} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                         "check --ray-address (`ray status` on the head node shows it) or leave it out to start a local instance.") from exc
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens at (ray.init would retry for minutes)."""
    import socket

    text = address.strip()
    if text in ("auto", "local"):
        return
    hostport = text.split("://", 1)[1] if "://" in text else text
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"Ray address {address!r} is not host:port (or ray://host:port); pass the head node's address, e.g. 10.0.0.1:6379.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"Nothing answers at Ray address {address} ({exc.strerror or exc}); start the cluster (`ray start --head`) "
                         "or fix --ray-address (`ray status` on the head node shows it).") from exc


def _user_error(exc: BaseException) -> Optional[SeqclsError]:
    """A clean copy of the SeqclsError a Ray task raised, if ``exc`` is or wraps one (Ray's wrappers
    subclass the original exception but print a remote traceback)."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # RayTaskError and Ray Data's UserCodeException keep the original here
        if isinstance(cause, BaseException) and id(cause) not in seen:
            current = cause
            continue
        if type(current) in (UsageError, CheckFailed, SeqclsError):
            return type(current)(*current.args)
        current = current.__cause__ or current.__context__
    # A remote exception reaches the driver as text: its message names the original class.
    import re

    found = re.findall(r"seqcls\.errors\.(UsageError|CheckFailed): ([^\n]+)", str(exc))
    if found:
        name, message = found[-1]
        return (UsageError if name == "UsageError" else CheckFailed)(message.strip())
    return None


def score_files(
    model: str | Path,
    inputs: str | Path,
    output: str | Path,
    *,
    address: Optional[str] = None,
    num_workers: Optional[int] = None,
    gpus_per_worker: Optional[float] = None,
    cpus_per_worker: float = 1.0,
    dtype: str = "auto",
    raw: bool = False,
    instruction: Optional[str] = None,
    max_length: Optional[int] = None,
    truncate: bool = True,
    batch_tokens: Optional[int] = None,
    pack_tokens: Optional[int] = None,
    overwrite: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    log: Optional[Callable[[str], None]] = None,
    runtime_env: Optional[dict[str, Any]] = None,
    actor_class: type = ScorerActor,
) -> RunSummary:
    """Score JSONL/Parquet pair files on Ray into a folder of parts, one per input file, resumably.

    Each input file's rows come back in order with their other columns (``id``) and a ``score``, and are
    written as ``output/part-<stem>-<hash>.parquet`` (or ``.jsonl`` when ``output`` ends in ``.jsonl``)
    through a temporary file and a rename; then ``_seqcls_manifest.json`` records the file. A rerun skips
    the files the manifest lists (unchanged size and mtime), so a killed run loses and duplicates nothing.

    Args:
        model: a converted folder (the same path on every node) or a Hub repo id of one.
        inputs: a JSONL or Parquet file, a folder of them, or a glob.
        output: the output folder.
        address: a Ray cluster address (``ray://host:10001`` or ``host:6379``); None starts a local
            instance (or joins the one RAY_ADDRESS names).
        num_workers, gpus_per_worker, cpus_per_worker, dtype, raw, instruction, max_length, truncate,
            batch_tokens, pack_tokens, actor_class: as in ``score_dataset``.
        overwrite: rescore everything, replacing an earlier output folder.
        progress: called as ``progress(done, total)`` in pairs as results arrive.
        log: called with one-line status messages.
        runtime_env: a Ray runtime_env for a Ray instance this call starts.

    Returns:
        RunSummary.
    """
    require_ray()
    if address:  # fail fast, before any file is read or the output folder made (ray.init would retry for minutes)
        _check_reachable(address)
    model = str(model)
    output = Path(output)
    kind = output_kind(output)
    paths = find_inputs(inputs)
    if len({_kind(p) for p in paths}) > 1:
        raise UsageError("The inputs mix JSONL and Parquet files; score each format in its own run (or convert one of them).")
    files = [inspect_input(p) for p in paths]
    settings = {"model": model, "dtype": dtype, "raw": raw, "instruction": instruction, "max_length": max_length,
                "truncate": truncate, "part_format": kind}
    manifest = _prepare_output(output, settings, overwrite)
    done = manifest["files"]
    pending = [f for f in files if not (f.key in done and done[f.key].get("input") == f.stamp() and (output / done[f.key]["part"]).is_file())]
    skipped = len(files) - len(pending)
    say = log or (lambda message: None)
    if skipped:
        say(f"Skipping {skipped} of {len(files)} input file(s) already scored in {output}.")
    empty = [f for f in pending if f.rows == 0]
    pending = [f for f in pending if f.rows > 0]
    for f in empty:  # nothing to score: an empty part keeps one part per input file
        _finish_file(output, manifest, f, None, kind)
    total = sum(f.rows for f in pending)
    started = time.perf_counter()
    if not pending:
        return RunSummary(output, len(empty), skipped, 0, 0.0, 0, "-")

    ray = require_ray()
    started_here = _connect(address, runtime_env)
    saved: dict[str, Any] = {}
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        saved.update({name: getattr(ctx, name) for name in ("enable_progress_bars", "use_datasource_v2") if hasattr(ctx, name)})
        ctx.enable_progress_bars = False  # the caller's progress callback reports instead
        if "use_datasource_v2" in saved:
            # the v2 Parquet reader lists files in tasks that need a whole CPU, which the actors may hold all of
            ctx.use_datasource_v2 = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        paths = [str(f.path) for f in pending]
        if pending[0].kind == "parquet":
            ds = ray.data.read_parquet(paths, include_paths=True, num_cpus=READ_CPUS)
        else:
            ds = ray.data.read_json(paths, lines=True, include_paths=True, num_cpus=READ_CPUS)
        workers = plan_workers(num_workers, gpus_per_worker, cpus_per_worker)
        pack = pack_tokens or DEFAULT_PACK_TOKENS[workers.device]
        sample = _sample_rows(pending[0], SAMPLE_ROWS)
        rows = rows_per_batch(model, sample, batch_tokens or PACKS_PER_BATCH * pack, instruction=instruction, max_length=max_length)
        say(f"Scoring {total} pairs from {len(pending)} file(s) with {workers.count} {workers.device} worker(s), "
            f"{rows} pairs per Ray batch.")
        scored = score_dataset(ds, model, num_workers=workers.count, gpus_per_worker=workers.gpus, cpus_per_worker=workers.cpus,
                               dtype=dtype, raw=raw, instruction=instruction, max_length=max_length, truncate=truncate,
                               pack_tokens=pack, batch_rows=rows, actor_class=actor_class)
        by_path = {_norm(f.path): f for f in pending}
        _collect(scored, by_path, output, manifest, kind, total, progress)
    except Exception as exc:
        user = _user_error(exc)
        if user is None:
            raise
        raise user from exc
    finally:
        for name, value in saved.items():
            setattr(ray.data.DataContext.get_current(), name, value)
        if started_here:
            ray.shutdown()
    return RunSummary(output, len(pending) + len(empty), skipped, total, time.perf_counter() - started, workers.count, workers.device)


def _norm(path: str | Path) -> str:
    text = str(path)
    if text.startswith("local://"):
        text = text[len("local://"):]
    return os.path.normpath(os.path.abspath(text))


def _sample_rows(f: InputFile, n: int) -> list[dict[str, Any]]:
    if f.kind == "parquet":
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(str(f.path)).iter_batches(batch_size=n), None)
        return batch.to_pylist() if batch is not None else []
    rows = []
    with open(f.path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
                if len(rows) >= n:
                    break
    return rows


def _collect(scored: Any, by_path: dict[str, InputFile], output: Path, manifest: dict[str, Any], kind: str, total: int,
             progress: Optional[Callable[[int, int], None]]) -> None:
    """Stream results to the driver; write a file's part as soon as all of its rows are in."""
    import pyarrow as pa

    current: Optional[str] = None
    pieces: list[Any] = []
    finished: set[str] = set()
    done = 0

    def flush() -> None:
        if current is None:
            return
        f = by_path[current]
        table = pa.concat_tables(pieces) if pieces else None
        got = table.num_rows if table is not None else 0
        if got != f.rows:
            raise CheckFailed(f"Scored {got} rows of {f.path} but it holds {f.rows}; nothing was written for it, rerun to score it again.")
        _finish_file(output, manifest, f, table.drop_columns([PATH_COLUMN]), kind)
        finished.add(current)

    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        if batch.num_rows == 0:
            continue
        paths = batch.column(PATH_COLUMN).to_pylist()
        start = 0
        for i in range(1, len(paths) + 1):
            if i == len(paths) or paths[i] != paths[start]:
                key = _norm(paths[start])
                if key not in by_path:
                    raise CheckFailed(f"Ray returned rows of an unknown file {paths[start]}; rerun.")
                if key != current:
                    if key in finished:
                        raise CheckFailed(f"Rows of {key} came back out of order; rerun (finished files are kept).")
                    flush()
                    current, pieces = key, []
                pieces.append(batch.slice(start, i - start))
                start = i
        done += batch.num_rows
        if progress:
            progress(done, total)
    flush()
    missing = [k for k in by_path if k not in finished]
    if missing:
        raise CheckFailed(f"No scores came back for {missing[0]}; rerun to score it (finished files are kept).")


def _finish_file(output: Path, manifest: dict[str, Any], f: InputFile, table: Any, kind: str) -> None:
    """Write one file's part atomically, then record it in the manifest (atomically too)."""
    name = f.part_name(kind)
    if table is None:
        import pyarrow as pa

        table = pa.table({c: pa.array([], type=pa.string()) for c in f.columns} | {"score": pa.array([], type=pa.float64())})
    _write_part(output / name, table, kind)
    manifest["files"][f.key] = {"part": name, "rows": table.num_rows, "input": f.stamp()}
    _write_json(output / MANIFEST, manifest)


def read_scores(output: str | Path) -> Any:
    """All scored rows of an output folder as one pyarrow Table, in manifest (input-file) order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output = Path(output)
    manifest = json.loads((output / MANIFEST).read_text(encoding="utf-8"))
    tables = []
    for _, entry in sorted(manifest["files"].items()):
        path = output / entry["part"]
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            tables.append(pa.Table.from_pylist(rows))
        else:
            tables.append(pq.read_table(str(path)))
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
