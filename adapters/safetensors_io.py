"""Reading safetensors files without torch: the JSON header, and a scan of the raw values for NaN/Inf.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets) and the
raw tensor bytes (https://github.com/huggingface/safetensors#format). Reading it by hand keeps the hub core free
of torch; the `safetensors` package's own numpy loader cannot read bf16, the dtype most adapters use.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters.errors import InvalidAdapterError

MAX_HEADER_BYTES = 100 << 20

# dtype -> (integer view of one element, mask of the exponent bits): a float is NaN or Inf exactly when all its
# exponent bits are set, so checking integer views needs no float conversion (and works for bf16 and fp8).
_EXPONENT_MASKS: dict[str, tuple[type[np.unsignedinteger], int]] = {
    "F64": (np.uint64, 0x7FF0000000000000),
    "F32": (np.uint32, 0x7F800000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
}
_INTEGER_DTYPES = {"I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name -> info, refusing files whose header does not describe a well-formed safetensors file."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise InvalidAdapterError(f"{path.name} is not a safetensors file: it is only {size} bytes long")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise InvalidAdapterError(f"{path.name} is not a safetensors file: its header length is impossible")
        try:
            header = json.loads(stream.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidAdapterError(f"{path.name} is not a safetensors file: its header is not JSON") from exc
    if not isinstance(header, dict):
        raise InvalidAdapterError(f"{path.name} is not a safetensors file: its header is not an object")
    data_len = size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in entry["data_offsets"])
            info = TensorInfo(str(entry["dtype"]), tuple(int(d) for d in entry["shape"]), start, end)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidAdapterError(f"{path.name}: tensor {name!r} has a malformed header entry") from exc
        if not 0 <= info.start <= info.end <= data_len:
            raise InvalidAdapterError(f"{path.name}: tensor {name!r} points outside the file")
        tensors[name] = info
    return tensors


def find_non_finite(path: Path, tensors: dict[str, TensorInfo]) -> str | None:
    """The name of the first tensor holding a NaN or an infinity, or None."""
    offset = 8 + _header_len(path)
    if path.stat().st_size <= offset:
        return None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
    for name, info in tensors.items():
        if info.dtype in _INTEGER_DTYPES or info.start == info.end:
            continue
        if info.dtype not in _EXPONENT_MASKS:
            raise InvalidAdapterError(f"{path.name}: tensor {name!r} has unsupported dtype {info.dtype}")
        view, mask = _EXPONENT_MASKS[info.dtype]
        raw = data[info.start : info.end]
        if raw.size % np.dtype(view).itemsize:
            raise InvalidAdapterError(f"{path.name}: tensor {name!r} is not a whole number of {info.dtype} values")
        exponent = raw.view(view) & view(mask)
        if np.any(exponent == view(mask)):
            return name
    return None


def _header_len(path: Path) -> int:
    with path.open("rb") as stream:
        return int(struct.unpack("<Q", stream.read(8))[0])
