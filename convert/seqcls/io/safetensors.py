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
COPY_CHUNK = 64 * 1024 * 1024


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


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int, progress: Callable[[int], None]) -> None:
    """Copy ``length`` bytes from ``src_fd`` at ``offset`` to the current position of ``dst_fd``."""
    copy_file_range = getattr(os, "copy_file_range", None)
    remaining = length
    while remaining:
        step = min(remaining, COPY_CHUNK)
        done = 0
        if copy_file_range is not None:
            try:
                done = copy_file_range(src_fd, dst_fd, step, offset)
            except OSError:
                copy_file_range = None
        if not done:
            chunk = os.pread(src_fd, step, offset)
            if not chunk:
                raise UsageError("A source file shrank while it was being copied; rerun the conversion on a stable checkpoint.")
            os.write(dst_fd, chunk)
            done = len(chunk)
        offset += done
        remaining -= done
        progress(done)


def _write_tensor(tensor: OutTensor, dst_fd: int, progress: Callable[[int], None], open_fds: dict[Path, int]) -> None:
    if tensor.data is not None:
        os.write(dst_fd, tensor.data)
        progress(len(tensor.data))
        return
    src = tensor.source
    assert src is not None
    fd = open_fds.get(src.path)
    if fd is None:
        fd = open_fds[src.path] = os.open(src.path, os.O_RDONLY)
    if src.dtype == tensor.dtype:
        _copy_range(fd, dst_fd, src.offset, src.nbytes, progress)
        return
    rows_per_chunk = max(1, COPY_CHUNK // max(1, src.row_bytes))
    rows = src.shape[0] if src.shape else 1
    for start in range(0, rows, rows_per_chunk):
        count = min(rows_per_chunk, rows - start)
        raw = os.pread(fd, count * src.row_bytes, src.offset + start * src.row_bytes)
        out = convert_bytes(raw, src.dtype, tensor.dtype)
        os.write(dst_fd, out)
        progress(len(out))


def write_shards(plan: ShardPlan, folder: Path, progress: Callable[[int], None] = lambda n: None) -> list[str]:
    """Write every shard (and the index when there are several) into ``folder``; returns the file names."""
    names = plan.file_names
    metadata = {"format": "pt"}
    open_fds: dict[Path, int] = {}
    try:
        for name, shard in zip(names, plan.shards):
            dst_fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(dst_fd, _header_bytes(shard, metadata))
                for tensor in shard:
                    _write_tensor(tensor, dst_fd, progress, open_fds)
            finally:
                os.close(dst_fd)
    finally:
        for fd in open_fds.values():
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
