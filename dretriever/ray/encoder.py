"""The Ray app's query encoder: a deployment holding the index's query encoder.

``query_side`` of ``search/dense.py`` gives it, encoding with ``encode_queries`` and the same batch size, precision
and token budget, on the backend ``Retriever.load`` would pick on the replica's CPU, so the vectors are the
single-process server's. Concurrent ``/search`` queries are gathered by ``@serve.batch`` (``--micro_batch``
queries at most, waiting at most ``--micro_batch_wait_ms``); a ``/batch_search`` is encoded in one call.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
from ray import serve

from ..index import manifest as mf
from ..search.backend import rss_bytes
from ..search.dense import query_side


@serve.deployment(max_ongoing_requests=256, health_check_period_s=2, health_check_timeout_s=10)
class QueryEncoder:
    """The index's query encoder; ``encode_one`` is dynamically batched by ``@serve.batch``."""

    def __init__(self, root: str, model: str | None, settings: dict, micro_batch: int, wait_ms: float):
        self.settings = {k: v for k, v in settings.items() if k != "backend"}  # batch_size, precision, max_tokens
        # with no backend asked for, the fastest for this replica's CPU, as Retriever.load picks it
        self.encoder, self.settings["max_tokens"] = query_side(
            mf.read_manifest(root), root, model, settings.get("backend"), self.settings.get("precision", "auto"),
            self.settings.get("max_tokens", "auto"))
        self.encode_one.set_max_batch_size(max(1, micro_batch))
        self.encode_one.set_batch_wait_timeout_s(wait_ms / 1000 if micro_batch > 1 else 0.0)
        self._lock = threading.Lock()
        self.batches = 0  # forward passes of encode_one (tests and logs)

    def _encode(self, queries: list[str]) -> np.ndarray:
        with self._lock:  # one forward at a time, like the Retriever's lock
            return self.encoder.encode_queries(queries, **self.settings)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def encode_one(self, queries: list[str]) -> list[np.ndarray]:
        self.batches += 1
        vectors = await asyncio.get_running_loop().run_in_executor(None, self._encode, queries)
        return list(vectors)

    async def encode_many(self, queries: list[str]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(None, self._encode, queries)

    def stats(self) -> dict:
        return {"batches": self.batches, "pid": os.getpid(), "rss_bytes": rss_bytes()}
