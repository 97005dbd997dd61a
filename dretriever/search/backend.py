"""What the HTTP API (``search/server.py``) asks of an engine, and the single-process engine itself.

``create_app`` is written once against a *backend*: an object with ``filter_keys`` (the metadata keys a filter
may name, built into the request schema) and four coroutines:

- ``search(query, k, mode, filter)`` and ``batch_search(queries, k, mode, filter)``: the hits (dicts of
  :class:`HitOut`'s fields) and the one generation that answered;
- ``health()``: passages, shards, modes, model, generation, and ``details`` (per process holding shards:
  its shards, passages, pid and RSS);
- ``reload()``: ``(generation, previous, passages)`` after moving to the datastore's current generation.

A backend with a cross-encoder also has ``reranker`` (its name) and ``rerank_depth`` (the most hits a search
reranks), takes ``rerank=True, rerank_depth=N`` in both searches, and has ``rerank(query, texts)`` (raw logits);
one without (the Ray engine) gets neither keyword, since the app refuses those requests first.

A bad request raises ``DretrieverError`` (400), a part of the service that is down raises ``Unavailable`` (503).
:class:`LocalBackend` serves a :class:`Retriever` in this process (micro-batching ``/search``);
``ray/serve.py`` has the Ray Serve one, so both engines publish the same OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import os

from fastapi.concurrency import run_in_threadpool

from .batcher import DEFAULT_MAX_WAIT_MS, MicroBatcher
from .retriever import Retriever


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class LocalBackend:
    """One :class:`Retriever` in this process, swapped whole by ``reload`` (requests in flight keep the one they
    started with); concurrent ``search`` calls with the same options gathered into batches of up to
    ``micro_batch`` (waiting at most ``micro_batch_wait_ms``; 0 or 1: off), each batch answered by one generation."""

    def __init__(self, retriever: Retriever, micro_batch: int = 32, micro_batch_wait_ms: float = DEFAULT_MAX_WAIT_MS):
        self.retriever = retriever
        self.batcher = MicroBatcher(self._batched, micro_batch, micro_batch_wait_ms) if micro_batch > 1 else None
        self.rerank_batcher = (MicroBatcher(self._scored, micro_batch, micro_batch_wait_ms)
                               if micro_batch > 1 and retriever.reranker is not None else None)
        self._reloading: asyncio.Lock | None = None

    @property
    def filter_keys(self) -> dict[str, str]:
        return self.retriever.filter_keys

    @property
    def reranker(self) -> str | None:
        return self.retriever.reranker.name if self.retriever.reranker is not None else None

    @property
    def rerank_depth(self) -> int | None:
        return self.retriever.rerank_depth if self.retriever.reranker is not None else None

    def _batched(self, queries: list[str], k: int, mode: str | None, filter: str | None, rerank: bool = False,
                 rerank_depth: int | None = None):
        r = self.retriever  # the whole batch is served by one generation
        rows = r.batch_search(queries, k, mode, True, json.loads(filter) if filter else None, rerank, rerank_depth)
        return [([h.to_dict() for h in row], r.generation) for row in rows]

    def _scored(self, requests: list[tuple[str, list[str]]]) -> list[list[float]]:
        """Concurrent /rerank requests: every pair of the batch scored in one token-budget pass."""
        found = self.retriever.reranker.score_lists([q for q, _ in requests], [texts for _, texts in requests])
        return [s.tolist() for s in found]

    async def search(self, query: str, k: int, mode: str | None, filter: dict | None, rerank: bool = False,
                     rerank_depth: int | None = None):
        if self.batcher is not None:
            key = json.dumps(filter, sort_keys=True) if filter is not None else None  # hashable
            return await self.batcher(query, k=k, mode=mode, filter=key, rerank=rerank, rerank_depth=rerank_depth)
        r = self.retriever  # this request's generation, whatever a reload does meanwhile
        hits = await run_in_threadpool(r.search, query, k, mode, True, filter, rerank, rerank_depth)
        return [h.to_dict() for h in hits], r.generation

    async def batch_search(self, queries: list[str], k: int, mode: str | None, filter: dict | None,
                           rerank: bool = False, rerank_depth: int | None = None):
        r = self.retriever
        rows = await run_in_threadpool(r.batch_search, queries, k, mode, True, filter, rerank, rerank_depth)
        return [[h.to_dict() for h in row] for row in rows], r.generation

    async def rerank(self, query: str, texts: list[str]) -> list[float]:
        if self.rerank_batcher is not None:
            return await self.rerank_batcher((query, texts))
        return (await run_in_threadpool(self._scored, [(query, texts)]))[0]

    async def health(self) -> dict:
        r = self.retriever
        index = r.index
        return {"passages": len(index), "shards": len(index.shards), "modes": r.modes,
                "model": str(index.manifest["encoder"]["model"]), "generation": r.generation,
                "details": [{"group": 0, "shards": list(range(len(index.shards))), "passages": len(index),
                             "generation": r.generation, "pid": os.getpid(), "rss_bytes": rss_bytes()}]}

    async def reload(self) -> tuple[int, int, int]:
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            old = self.retriever
            new = await run_in_threadpool(old.reopen)
            self.retriever = new
        return new.generation, old.generation, len(new.index)
