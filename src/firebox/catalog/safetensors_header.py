"""The header of a safetensors file, read without loading any tensor.

A safetensors file is an 8-byte little-endian length, a JSON table of
tensors (dtype, shape, byte offsets) and the raw bytes. Reading the table is
enough to know every tensor's shape and to check the file is whole; nothing
in it can run code, unlike a pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOATS = {"F64", "F32", "F16", "BF16"}


@dataclass(frozen=True, slots=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def read_safetensors_header(path: Path) -> dict[str, Tensor]:
    """The tensors a safetensors file declares, checked against its size; no tensor is read."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise ValueError("too short to be a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length < 2 or length > min(_MAX_HEADER_BYTES, size - 8):
            raise ValueError("not a safetensors file (its header length is impossible)")
        try:
            raw = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("not a safetensors file (its header is not JSON)") from None
    if not isinstance(raw, dict):
        raise ValueError("not a safetensors file (its header is not a JSON object)")
    data_bytes = size - 8 - length
    tensors: dict[str, Tensor] = {}
    for name, entry in raw.items():
        if name == "__metadata__":
            continue
        tensor = _tensor_entry(name, entry, data_bytes)
        tensors[name] = tensor
    return tensors


def _tensor_entry(name: str, entry: Any, data_bytes: int) -> Tensor:
    if not isinstance(entry, dict):
        raise ValueError(f"tensor {name!r} has no description")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"tensor {name!r} has the unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"tensor {name!r} has an invalid shape")
    tensor = Tensor(dtype=dtype, shape=tuple(shape))
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        or offsets[1] - offsets[0] != tensor.numel * DTYPE_BYTES[dtype]
    ):
        raise ValueError(f"tensor {name!r} does not fit the file (truncated or corrupt)")
    return tensor
