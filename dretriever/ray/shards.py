"""The Ray app's shard groups: the datastore's shards split into contiguous ranges, each a deployment.

``ShardGroupN`` (``--shard_groups``, default ``min(shards, 2)``) opens only its range (:func:`group_shards`;
``ShardedIndex.open(select=...)``, global shard numbers kept in its hits) and returns its exact top-k with text and
metadata from its own doc stores. It holds the generation it serves and the one before (for requests in flight
during a reload). :func:`merge` puts the groups' top-k together exactly as ``ShardedIndex`` merges shards (score,
then shard order, then in-shard order: ranges are contiguous and concatenated in order, so a stable sort gives the
single-process order). Exact indexes (Flat) give the single-process answers; with approximate ones each group
plans its own search (re-ranking its own top-R, the exact filtered scan when *its* matching rows are few), so a
group is at least as thorough as one process.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import numpy as np
from ray import serve

from ..index.sharded import ShardedIndex
from ..search.backend import rss_bytes
from ..search.retriever import make_hits


def group_shards(num_shards: int, groups: int, group: int) -> list[int]:
    """The shard numbers of ``group``: ``num_shards`` split into ``groups`` contiguous, near-equal ranges
    (recomputed for each generation, whose shard count may differ)."""
    base, extra = divmod(num_shards, groups)
    start = group * base + min(group, extra)
    return list(range(start, start + base + (group < extra)))


def describe(group: int, shards: list[int]) -> str:
    where = "no shards" if not shards else (f"shard {shards[0]}" if len(shards) == 1 else
                                            f"shards {shards[0]}-{shards[-1]}")
    return f"shard group {group} ({where})"


@serve.deployment(max_ongoing_requests=64, health_check_period_s=2, health_check_timeout_s=10)
class ShardGroup:
    """One contiguous range of the datastore's shards, opened alone; exact top-k with text over them."""

    def __init__(self, root: str, group: int, groups: int, search_params: dict):
        self.root, self.group, self.groups, self.search_params = Path(root), group, groups, dict(search_params)
        self.held: dict[int, ShardedIndex] = {}  # generation -> index: the one served and the one before
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> ShardedIndex:
        with self._lock:
            index = ShardedIndex.open(self.root, select=lambda n: group_shards(n, self.groups, self.group))
            if index.generation in self.held:
                index.close()
                return self.held[index.generation]
            params = dict(self.search_params)
            rerank = params.pop("rerank", None)
            if params or rerank:
                index.set_search_params(rerank=rerank, **params)
            self.held[index.generation] = index
            for old in sorted(self.held)[:-2]:  # keep the newest two generations
                self.held.pop(old).close()
            return index

    def prepare(self) -> dict:
        """Open the datastore's current generation (keeping the one before); this group's :meth:`info` on it."""
        return self.info(self._open().generation)

    def info(self, generation: int | None = None) -> dict:
        index = self.held[max(self.held) if generation is None else generation]
        return {"group": self.group, "shards": index.numbers, "passages": len(index), "generation": index.generation,
                "generations": sorted(self.held), "pid": os.getpid(), "rss_bytes": rss_bytes(),
                "open_shards": open_shards(self.root)}

    def _search(self, vectors: np.ndarray, k: int, filter: dict | None, generation: int):
        index = self.held.get(generation)
        if index is None:
            return None  # not held (a replacement replica opened a newer generation): the ingress reloads
        out = []
        for row in index.rows(*index.search_arrays(vectors, k, filter=filter)):
            hits = [h.to_dict() for h in make_hits(index, row, True)]
            for h in hits:
                h["shard"] = index.numbers[h["shard"]]
            out.append(hits)
        return out

    async def search(self, vectors: np.ndarray, k: int, filter: dict | None, generation: int):
        """Per query, this group's top-``k`` hits (dicts, best first; global shard numbers), or ``None`` when
        ``generation`` is not held here."""
        return await asyncio.get_running_loop().run_in_executor(None, self._search, vectors, k, filter, generation)

    def _live_texts(self, pids: list[str], generation: int):
        index = self.held.get(generation)
        if index is None:
            return None
        return {pid: (index.numbers[s], rec) for pid, (s, rec) in index.live_texts(pids).items()}

    async def live_texts(self, pids: list[str], generation: int):
        """``pid -> (global shard, record)`` for the live row of each id in this group's shards (first shard
        first), or ``None`` when ``generation`` is not held here."""
        return await asyncio.get_running_loop().run_in_executor(None, self._live_texts, pids, generation)


def open_shards(root: Path) -> list[str]:
    """The shard folders of ``root`` whose files this process has open or mapped (``/proc/self``; Linux)."""
    root = str(Path(root).resolve())
    paths = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                paths.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        with open("/proc/self/maps") as f:
            paths.update(line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6)
    except OSError:
        return []
    found = set()
    for p in paths:
        if p.startswith(root + os.sep):
            first = p[len(root) + 1:].split(os.sep, 1)
            if len(first) == 2:  # a file inside a folder of the datastore: a shard folder
                found.add(first[0])
    return sorted(found)


def merge(parts: list[list[list[dict]]], k: int) -> list[list[dict]]:
    """Per query, the exact top-``k`` of the groups' hits: by score, ties in group order then in each group's
    order (= shard order, then in-shard order: ``index/sharded.py``'s ``_merge``)."""
    rows = []
    for q in range(len(parts[0])):
        hits = [h for part in parts for h in part[q]]
        rows.append(sorted(hits, key=lambda h: -h["score"])[:k])  # stable; scores are float32 values
    return rows
