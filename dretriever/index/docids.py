"""A shard's docids without a Python list of them: the ``docid`` file (one id per line, Pyserini's format)
memory-mapped, with ``docid.offsets`` (little-endian uint64, n + 1 byte offsets) to find line ``i``.

Opening costs nothing; looking up ids reads only the pages that hold them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DretrieverError

DOCID = "docid"
OFFSETS = "docid.offsets"


def write_docids(folder: Path, ids: Iterable[str]) -> int:
    """Write ``docid`` and ``docid.offsets`` in ``folder``; returns the number of ids."""
    offsets = [0]
    with open(folder / DOCID, "wb") as f:
        for docid in ids:
            line = docid.encode("utf-8") + b"\n"
            f.write(line)
            offsets.append(offsets[-1] + len(line))
        f.flush()
        os.fsync(f.fileno())
    arr = np.asarray(offsets, dtype="<u8")
    with open(folder / OFFSETS, "wb") as f:
        f.write(arr.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return len(offsets) - 1


class DocIds:
    """``ids[i]`` / ``ids.take(positions)`` -> docids of a shard, read from the mapped files."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._offsets = np.memmap(self.folder / OFFSETS, dtype="<u8", mode="r")
        size = (self.folder / DOCID).stat().st_size
        if len(self._offsets) == 0 or int(self._offsets[-1]) != size:
            raise DretrieverError(f"{self.folder}: {OFFSETS} does not match {DOCID} ({size} bytes)")
        self._data = np.memmap(self.folder / DOCID, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(i)
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._data[a:b - 1].tobytes().decode("utf-8")

    def take(self, positions) -> list[str]:
        return [self[int(i)] for i in positions]

    def __iter__(self):
        for line in open(self.folder / DOCID, encoding="utf-8"):
            yield line.rstrip("\n")

    def tolist(self) -> list[str]:
        return list(self)
