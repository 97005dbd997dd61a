"""Raw vector files: ``vectors.f32`` / ``vectors.f16``, row-major, no header (rows = size / (dim * itemsize)).

A build appends each encoded chunk to ``vectors.f32`` and fsyncs it before the manifest commits the chunk,
so a rerun truncates the file to the committed rows and goes on. A finished shard may keep its vectors
(float32, or float16 to halve the disk) beside the faiss index for exact re-ranking, memory-mapped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DretrieverError

DTYPES = {"float32": ("vectors.f32", np.float32), "float16": ("vectors.f16", np.float16)}
WORK = DTYPES["float32"][0]


def filename(dtype: str) -> str:
    if dtype not in DTYPES:
        raise DretrieverError(f"vector dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype][0]


class VectorAppender:
    """Appends float32 rows to ``path`` after truncating it to ``rows`` committed rows."""

    def __init__(self, path: Path, dim: int, rows: int):
        self.path, self.dim = Path(path), dim
        self._f = open(self.path, "ab")
        self._f.truncate(rows * dim * 4)
        self._f.seek(rows * dim * 4)

    def append(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DretrieverError(f"vectors must have shape (n, {self.dim}), got {vectors.shape}")
        self._f.write(vectors.tobytes())

    def commit(self) -> None:
        """Make the appended rows durable (call before recording them as committed)."""
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self.commit()
        self._f.close()


def open_vectors(path: Path, dim: int) -> np.ndarray:
    """Memory-map a vector file as an (n, dim) array of its dtype (from the suffix)."""
    path = Path(path)
    dtype = np.float16 if path.suffix == ".f16" else np.float32
    size = path.stat().st_size
    row = dim * np.dtype(dtype).itemsize
    if size % row:
        raise DretrieverError(f"{path}: {size} bytes is not a whole number of {dim}-dimensional rows")
    if size == 0:
        return np.zeros((0, dim), dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(size // row, dim))


def convert(src: Path, dst: Path, dim: int, block: int = 65536) -> None:
    """Write ``src`` (float32) to ``dst`` in the dtype named by ``dst``'s suffix, block by block."""
    dtype = np.float16 if Path(dst).suffix == ".f16" else np.float32
    data = open_vectors(src, dim)
    with open(dst, "wb") as f:
        for start in range(0, len(data), block):
            f.write(np.asarray(data[start:start + block], dtype=dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
