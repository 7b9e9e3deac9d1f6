"""Streaming safetensors reader and writer on numpy (no torch, no whole-file loads).

The format: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw little-endian data. Reading reads one tensor's byte range
at a time; writing computes the header from shapes first and then streams one tensor at a
time.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from jax_tinyr1.cli import CheckpointError

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in file
    end: int


def _read_header(path: Path) -> dict[str, TensorInfo]:
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw_len)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from None
    base = 8 + n
    out = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        if meta["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {meta['dtype']}")
        begin, end = meta["data_offsets"]
        out[key] = TensorInfo(path, SAFETENSORS_DTYPES[meta["dtype"]], tuple(meta["shape"]), base + begin, base + end)
    return out


class SafetensorsReader:
    """All tensors of an HF directory (single file or sharded with an index), read lazily."""

    def __init__(self, directory: Path, file: str | None = None):
        """`file`: read that one file of the directory (a PEFT adapter's), not the model's."""
        directory = Path(directory)
        if file is not None:
            if not (directory / file).is_file():
                raise FileNotFoundError(f"{directory}: no {file}")
            files = [file]
        elif (directory / INDEX_FILE).is_file():
            weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (directory / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            for key, info in _read_header(directory / name).items():
                if key in self.tensors:
                    raise CheckpointError(f"{directory}: tensor {key!r} appears in two shard files")
                self.tensors[key] = info

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __iter__(self):
        return iter(self.tensors)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def get(self, key: str) -> np.ndarray:
        """One tensor, read into fresh memory (a read, not a map: the file's pages never count
        as this process's memory, so a streaming conversion stays at one tensor)."""
        info = self.tensors[key]
        count = int(np.prod(info.shape, dtype=np.int64))
        if info.end - info.start != count * info.dtype.itemsize:
            raise CheckpointError(f"{info.file}: tensor {key!r} byte range does not match its shape")
        out = np.empty(info.shape, info.dtype)
        with open(info.file, "rb") as f:
            f.seek(info.start)
            if f.readinto(out.reshape(-1).view(np.uint8)) != info.end - info.start:
                raise CheckpointError(f"{info.file}: tensor {key!r} is truncated")
        return out


@dataclass(frozen=True)
class TensorToWrite:
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]  # called once, when the tensor's turn comes


def write_safetensors(path: Path, tensors: Iterable[TensorToWrite], metadata: dict[str, str] | None = None):
    """Write tensors one by one; peak extra memory is one tensor."""
    tensors = list(tensors)
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for t in tensors:
        nbytes = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
        header[t.key] = {
            "dtype": DTYPE_NAMES[np.dtype(t.dtype)],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            array = np.ascontiguousarray(t.produce(), dtype=t.dtype)
            if array.shape != tuple(t.shape):
                raise CheckpointError(f"{path}: tensor {t.key!r} produced shape {array.shape}, header says {t.shape}")
            f.write(array.reshape(-1).view(np.uint8).data)
