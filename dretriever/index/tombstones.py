"""Tombstones: the deleted positions of a shard, one immutable file per generation that changed them.

``shard-00003/deleted.g000007.npy`` holds every position of shard 3 deleted up to generation 7 (sorted, unique
int64); the manifest's shard entry names it (``"deleted": {"file", "count", "sha256"}``). Older generations keep
their own file, so a reader of generation 6 still sees its snapshot. Search turns a shard's tombstones (and a
filter's allowed rows) into a faiss ``IDSelectorBitmap`` of the live positions, applied inside the search.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from ..atomic import fsync_dir, sha256_file


def tombstone_name(generation: int) -> str:
    return f"deleted.g{generation:06d}.npy"


def write_tombstones(shard_dir: Path, generation: int, positions: np.ndarray) -> dict:
    """Write the shard's deleted positions for ``generation``; returns the manifest's ``deleted`` record."""
    name = tombstone_name(generation)
    positions = np.unique(np.asarray(positions, dtype=np.int64))
    tmp = shard_dir / f".{name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, positions)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, shard_dir / name)
    fsync_dir(shard_dir)
    return {"file": name, "count": int(len(positions)), "sha256": sha256_file(shard_dir / name)}


def read_tombstones(shard_dir: Path, record: dict | None) -> np.ndarray:
    if not record:
        return np.zeros(0, dtype=np.int64)
    positions = np.load(shard_dir / record["file"])
    if len(positions) != record["count"]:
        from ..errors import DretrieverError

        raise DretrieverError(f"{shard_dir / record['file']}: {len(positions)} positions, the manifest says "
                              f"{record['count']}")
    return positions


class Allowed:
    """The positions a search may return in one shard: a boolean mask and its faiss selector (bitmap)."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self.count = int(mask.sum())
        self._bits = np.packbits(mask, bitorder="little")  # kept alive: the selector points into it
        self.selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(self._bits))

    @property
    def positions(self) -> np.ndarray:
        return np.flatnonzero(self.mask)
