"""A shard's docids without a Python list of them: the ``docid`` file (one id per line, Pyserini's format)
memory-mapped, with ``docid.offsets`` (little-endian uint64, n + 1 byte offsets) to find line ``i``.

Opening costs nothing; looking up ids reads only the pages that hold them.
"""

from __future__ import annotations

import os
import sys
from array import array
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DretrieverError

DOCID = "docid"
OFFSETS = "docid.offsets"


def write_docids(folder: Path, ids: Iterable[str]) -> int:
    """Write ``docid`` and ``docid.offsets`` in ``folder``; returns the number of ids.

    Both files are streamed (offsets go out in blocks of 64k), so memory does not grow with the shard.
    """
    count, end = 0, 0
    block = array("Q", [0])
    with open(folder / DOCID, "wb") as f, open(folder / OFFSETS, "wb") as g:
        for docid in ids:
            line = docid.encode("utf-8") + b"\n"
            f.write(line)
            end += len(line)
            block.append(end)
            count += 1
            if len(block) >= 1 << 16:
                _write_offsets(g, block)
                block = array("Q")
        _write_offsets(g, block)
        for h in (f, g):
            h.flush()
            os.fsync(h.fileno())
    return count


def _write_offsets(f, block: array) -> None:
    if sys.byteorder != "little":  # the file format is little-endian uint64
        block.byteswap()
    f.write(block.tobytes())


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
        """The ids at ``positions``, in that order, read with one gather (no Python work per id): each
        position's line (id and newline) is copied into one buffer, which is decoded and split once."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(pos) == 0:
            return []
        if int(pos.min()) < 0 or int(pos.max()) >= len(self):
            raise IndexError(f"positions out of range [0, {len(self)})")
        starts = self._offsets[pos].astype(np.int64)
        lengths = self._offsets[pos + 1].astype(np.int64) - starts  # with the newline
        ends = np.cumsum(lengths)
        gather = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)
        return self._data[gather].tobytes().decode("utf-8").split("\n")[:-1]

    def __iter__(self):
        for line in open(self.folder / DOCID, encoding="utf-8"):
            yield line.rstrip("\n")

    def tolist(self) -> list[str]:
        """Every id, in order (one decode of the whole file, no Python work per id)."""
        return self._data.tobytes().decode("utf-8").split("\n")[:-1] if len(self) else []
