"""Safetensors without torch: headers as JSON, tensors as byte ranges, rows read with ``pread``.

The converter never loads a whole checkpoint: it plans from headers, reads only the answer-token
rows of the head, and copies every other tensor as raw bytes (``copy_file_range`` where the kernel
has it), so memory stays bounded by a chunk, not by the model.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import UsageError
from .dtypes import ITEM_SIZES, convert_bytes, to_float32

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024
COPY_CHUNK = 256 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.nbytes


def _corrupt(path: Path, reason: str) -> UsageError:
    return UsageError(f"{path} is not a valid safetensors file ({reason}); re-download or re-save the checkpoint.")


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate one safetensors header; returns tensors (in file order) and ``__metadata__``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _corrupt(path, "file shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise _corrupt(path, f"header length {header_len} does not fit in a file of {size} bytes")
            header_bytes = fh.read(header_len)
    except OSError as exc:
        raise UsageError(f"Cannot read {path} ({exc.strerror}); check the path and its permissions.") from exc
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"bad entry for tensor {name!r}") from exc
        if dtype not in ITEM_SIZES:
            raise _corrupt(path, f"unknown dtype {dtype!r} for tensor {name!r}")
        expected = math.prod(shape) * ITEM_SIZES[dtype]
        if end - begin != expected or begin < 0:
            raise _corrupt(path, f"tensor {name!r} has {end - begin} bytes but its shape needs {expected}")
        if end > data_size:
            raise _corrupt(path, f"tensor {name!r} ends at byte {end} but the file holds {data_size} (truncated?)")
        tensors.append(TensorInfo(name, dtype, shape, path, data_start + begin, expected))
    tensors.sort(key=lambda t: t.offset)
    return {t.name: t for t in tensors}, dict(metadata)


@dataclass
class Checkpoint:
    """All safetensors tensors of a folder (single file, sharded with an index, or loose shards)."""

    folder: Path
    tensors: dict[str, TensorInfo]
    files: list[Path]

    @classmethod
    def open(cls, folder: Path) -> "Checkpoint":
        folder = Path(folder)
        index_path = folder / INDEX_NAME
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UsageError(f"{index_path} is not a valid safetensors index; re-download or re-save the checkpoint.") from exc
            names = list(dict.fromkeys(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise UsageError(f"{index_path} lists {missing[0]}, which is missing from {folder}; download the complete checkpoint.")
            files = [folder / n for n in names]
        elif (folder / SINGLE_NAME).is_file():
            files = [folder / SINGLE_NAME]
        else:
            files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise UsageError(
                f"{folder} has no .safetensors weights; convert pickled weights with save_pretrained(safe_serialization=True) first."
            )
        tensors: dict[str, TensorInfo] = {}
        for path in files:
            found, _ = read_header(path)
            for name, info in found.items():
                if name in tensors:
                    raise UsageError(f"Tensor {name!r} appears in both {tensors[name].path.name} and {path.name}; remove the stray shard.")
                tensors[name] = info
        if index_path.is_file():
            for name, file_name in weight_map.items():
                if name not in tensors:
                    raise UsageError(f"{index_path} maps {name!r} to {file_name}, but that file does not hold it; re-download the checkpoint.")
        return cls(folder, tensors, files)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def read_rows(self, name: str, rows: Iterable[int]) -> np.ndarray:
        """Read selected rows of a 2-D float tensor as float32, touching only those bytes."""
        info = self.tensors[name]
        out = []
        with open(info.path, "rb") as fh:
            fd = fh.fileno()
            for row in rows:
                raw = os.pread(fd, info.row_bytes, info.offset + row * info.row_bytes)
                out.append(to_float32(raw, info.dtype))
        return np.stack(out)


@dataclass
class OutTensor:
    """One tensor of the output: copied from a source byte range (cast if dtypes differ) or given as bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: TensorInfo | None = None
    data: bytes | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_SIZES[self.dtype]


@dataclass
class ShardPlan:
    shards: list[list[OutTensor]] = field(default_factory=list)

    @property
    def file_names(self) -> list[str]:
        n = len(self.shards)
        if n == 1:
            return [SINGLE_NAME]
        return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for shard in self.shards for t in shard)


def plan_shards(tensors: list[OutTensor], max_shard_bytes: int) -> ShardPlan:
    """Greedy sharding in the given order; a tensor larger than the limit gets a shard of its own."""
    plan = ShardPlan()
    current: list[OutTensor] = []
    size = 0
    for tensor in tensors:
        if current and size + tensor.nbytes > max_shard_bytes:
            plan.shards.append(current)
            current, size = [], 0
        current.append(tensor)
        size += tensor.nbytes
    if current or not plan.shards:
        plan.shards.append(current)
    return plan


def _header_bytes(shard: list[OutTensor], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for tensor in shard:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


@dataclass
class _Job:
    """One piece of output: bytes at ``dst_offset`` taken from a source range, a cast, or memory."""

    dst_offset: int
    length: int
    src: TensorInfo | None = None
    src_offset: int = 0
    cast_to: str | None = None
    data: bytes | None = None


def _jobs(shard: list[OutTensor], data_start: int) -> list[_Job]:
    """Split a shard into offset-addressed jobs: byte-adjacent plain copies are merged, then cut into
    COPY_CHUNK pieces so several threads can copy at once."""
    jobs: list[_Job] = []
    offset = data_start
    for tensor in shard:
        src = tensor.source
        if tensor.data is not None:
            jobs.append(_Job(offset, len(tensor.data), data=tensor.data))
        elif src is not None and src.dtype == tensor.dtype:
            last = jobs[-1] if jobs else None
            if last is not None and last.src is not None and last.cast_to is None and last.src.path == src.path and last.src_offset + last.length == src.offset:
                last.length += src.nbytes
            else:
                jobs.append(_Job(offset, src.nbytes, src=src, src_offset=src.offset))
        else:
            assert src is not None
            rows = src.shape[0] if src.shape else 1
            per_chunk = max(1, COPY_CHUNK // max(1, src.row_bytes))
            out_row = tensor.nbytes // rows
            for first in range(0, rows, per_chunk):
                count = min(per_chunk, rows - first)
                jobs.append(_Job(offset + first * out_row, count * out_row, src=src, src_offset=src.offset + first * src.row_bytes, cast_to=tensor.dtype))
        offset += tensor.nbytes
    pieces: list[_Job] = []
    for job in jobs:
        if job.src is None or job.cast_to is not None or job.length <= COPY_CHUNK:
            pieces.append(job)
            continue
        for done in range(0, job.length, COPY_CHUNK):
            size = min(COPY_CHUNK, job.length - done)
            pieces.append(_Job(job.dst_offset + done, size, src=job.src, src_offset=job.src_offset + done))
    return pieces


def _run_job(job: _Job, dst_fd: int, src_fd: int | None, progress: Callable[[int], None]) -> None:
    if job.data is not None:
        os.pwrite(dst_fd, job.data, job.dst_offset)
        progress(job.length)
        return
    assert job.src is not None and src_fd is not None
    if job.cast_to is not None:
        rows = job.length // _out_row(job)
        raw = os.pread(src_fd, rows * job.src.row_bytes, job.src_offset)
        out = convert_bytes(raw, job.src.dtype, job.cast_to)
        os.pwrite(dst_fd, out, job.dst_offset)
        progress(len(out))
        return
    src_off, dst_off, remaining = job.src_offset, job.dst_offset, job.length
    copy_file_range = getattr(os, "copy_file_range", None)
    while remaining:
        done = 0
        if copy_file_range is not None:
            try:
                done = copy_file_range(src_fd, dst_fd, remaining, src_off, dst_off)
            except OSError:
                copy_file_range = None
        if not done:
            chunk = os.pread(src_fd, min(remaining, 64 * 1024 * 1024), src_off)
            if not chunk:
                raise UsageError("A source file shrank while it was being copied; rerun the conversion on a stable checkpoint.")
            os.pwrite(dst_fd, chunk, dst_off)
            done = len(chunk)
        src_off += done
        dst_off += done
        remaining -= done
        progress(done)


def _out_row(job: _Job) -> int:
    return ITEM_SIZES[job.cast_to] * (job.src.row_bytes // ITEM_SIZES[job.src.dtype])


def write_shards(plan: ShardPlan, folder: Path, progress: Callable[[int], None] = lambda n: None, threads: int | None = None) -> list[str]:
    """Write every shard (and the index when there are several) into ``folder``; returns the file names.

    Each file is pre-sized and filled by offset-addressed jobs on a few threads: the kernel copies
    (``copy_file_range``) release the GIL, so copies overlap the way a single ``cp`` cannot.
    """
    from concurrent.futures import ThreadPoolExecutor

    names = plan.file_names
    metadata = {"format": "pt"}
    src_fds: dict[Path, int] = {}
    dst_fds: list[int] = []
    work: list[tuple[_Job, int]] = []
    try:
        for name, shard in zip(names, plan.shards):
            header = _header_bytes(shard, metadata)
            dst_fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            dst_fds.append(dst_fd)
            os.write(dst_fd, header)
            os.ftruncate(dst_fd, len(header) + sum(t.nbytes for t in shard))
            for job in _jobs(shard, len(header)):
                if job.src is not None and job.src.path not in src_fds:
                    src_fds[job.src.path] = os.open(job.src.path, os.O_RDONLY)
                work.append((job, dst_fd))
        workers = threads or min(4, max(2, os.cpu_count() or 2))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_run_job, job, dst_fd, src_fds.get(job.src.path) if job.src else None, progress) for job, dst_fd in work]
            for future in futures:
                future.result()
    finally:
        for fd in (*dst_fds, *src_fds.values()):
            os.close(fd)
    if len(names) > 1:
        index = {
            "metadata": {"total_size": plan.total_bytes},
            "weight_map": {t.name: name for name, shard in zip(names, plan.shards) for t in shard},
        }
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """Parse sizes like ``5GB`` (10^9), ``500MiB`` (2^20) or a plain byte count."""
    if isinstance(text, int):
        return text
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1
    if unit not in _SIZE_UNITS or value <= 0:
        raise UsageError(f"Invalid size {text!r}; use a number with a unit such as 5GB, 500MB or 2GiB.")
    return int(value * _SIZE_UNITS[unit])
