"""Safetensors dtypes as numpy arrays, with bfloat16 handled bit-exactly (numpy has no bfloat16)."""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

# safetensors dtype -> bytes per element
ITEM_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
FLOAT_DTYPES = {"F32", "F16", "BF16"}

# user-facing names (--dtype, config.json "dtype") <-> safetensors names
NAME_TO_ST = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
ST_TO_NAME = {v: k for k, v in NAME_TO_ST.items()}


def to_float32(raw: bytes | memoryview, dtype: str) -> np.ndarray:
    """Decode raw little-endian bytes of a float tensor into a float32 array (exact for F16/BF16/F32)."""
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    raise UsageError(f"Tensors of dtype {dtype} cannot be used as a score head; only F32, F16 and BF16 are supported.")


def from_float32(values: np.ndarray, dtype: str) -> bytes:
    """Encode a float32 array as raw bytes of ``dtype``, rounding to nearest even like ``torch.Tensor.to``."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    if dtype == "BF16":
        bits = values.view(np.uint32)
        rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16
        nan = np.isnan(values)
        rounded = np.where(nan, (bits >> 16) | 0x0040, rounded)
        return rounded.astype("<u2").tobytes()
    raise UsageError(f"Cannot write dtype {dtype}; use float32, bfloat16 or float16.")


def convert_bytes(raw: bytes | memoryview, src: str, dst: str) -> bytes:
    """Cast raw tensor bytes from one float dtype to another (identity when equal)."""
    if src == dst:
        return bytes(raw)
    return from_float32(to_float32(raw, src), dst)
