"""The Ray app's BM25 stage: a deployment holding the datastore's Lucene index (``bm25/``, built by
``datastore build --bm25 true``) through Pyserini, per generation like the shard groups."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from ray import serve

from ..index import manifest as mf
from ..index.datastore import BM25_DIR
from ..search.backend import rss_bytes
from ..search.bm25 import BM25Searcher


@serve.deployment(max_ongoing_requests=64, health_check_period_s=2, health_check_timeout_s=10)
class Lexical:
    """The datastore's Lucene BM25 index (Pyserini), for the generation served and the one before."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.held: dict[int, BM25Searcher] = {}
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> int:
        with self._lock:
            manifest = mf.read_manifest(self.root)
            generation = int(manifest.get("generation", 0))
            if generation not in self.held:
                self.held[generation] = BM25Searcher(self.root / (manifest.get("bm25") or BM25_DIR))
                for old in sorted(self.held)[:-2]:
                    self.held.pop(old)
            return generation

    def prepare(self) -> dict:
        return {"generation": self._open(), "pid": os.getpid(), "rss_bytes": rss_bytes()}

    def _search(self, queries: list[str], k: int, generation: int):
        searcher = self.held.get(generation)
        if searcher is None:
            return None
        with self._lock:  # one Lucene search at a time, like the Retriever's lock
            run = searcher.search({str(i): q for i, q in enumerate(queries)}, k)
        return [run[str(i)] for i in range(len(queries))]

    async def search(self, queries: list[str], k: int, generation: int):
        """Per query, BM25's ``(passage id, score)`` top-``k``, or ``None`` when ``generation`` is not held."""
        return await asyncio.get_running_loop().run_in_executor(None, self._search, queries, k, generation)
