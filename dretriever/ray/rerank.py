"""The Ray app's second stage: ``serve --engine ray --rerank MODEL``.

``CrossEncoderScorer`` is a deployment holding a :class:`~dretriever.search.rerank.Reranker` (the same loading,
token-budget batches, precision and backend as the single-process server's). Concurrent reranked searches and
``/rerank`` requests are gathered by ``@serve.batch`` (``--micro_batch`` requests at most, waiting at most
``--micro_batch_wait_ms``) and every pair of a gathered batch is scored in one pass, as the local server's
micro-batcher does. The ingress asks the shard groups for the first stage's top ``rerank_depth`` (with texts)
and :func:`rerank_rows` reorders them by the scorer's logits: each hit's ``score`` becomes the logit and
``first_stage_score`` keeps the first stage's, as :meth:`Retriever.batch_search
<dretriever.search.retriever.Retriever.batch_search>` gives them.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
from ray import serve

from ..search.backend import rss_bytes
from ..search.rerank import Reranker, passage_text, reranked_order


@serve.deployment(max_ongoing_requests=256, health_check_period_s=2, health_check_timeout_s=10)
class CrossEncoderScorer:
    """The server's cross-encoder; ``score_one`` ((query, texts) -> raw logits) is batched by ``@serve.batch``."""

    def __init__(self, model: str, settings: dict, micro_batch: int, wait_ms: float):
        self.reranker = Reranker.load(model, **settings)  # max_length, max_tokens, precision, backend
        self.score_one.set_max_batch_size(max(1, micro_batch))
        self.score_one.set_batch_wait_timeout_s(wait_ms / 1000 if micro_batch > 1 else 0.0)
        self._lock = threading.Lock()
        self.batches = 0  # scoring passes of score_one (tests and logs)

    def _score(self, requests: list[tuple[str, list[str]]]) -> list[list[float]]:
        with self._lock:  # one forward at a time
            found = self.reranker.score_lists([q for q, _ in requests], [texts for _, texts in requests])
        return [s.tolist() for s in found]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def score_one(self, requests: list[tuple[str, list[str]]]) -> list[list[float]]:
        self.batches += 1
        return await asyncio.get_running_loop().run_in_executor(None, self._score, requests)

    def stats(self) -> dict:
        return {"batches": self.batches, "pairs": self.reranker.pairs, "pid": os.getpid(), "rss_bytes": rss_bytes()}


def rerank_rows(rows: list[list[dict]], scores: list[list[float]], k: int) -> list[list[dict]]:
    """Each query's first-stage hits (dicts) reordered by their cross-encoder ``scores``, the best ``k`` kept."""
    out = []
    for row, s in zip(rows, scores):
        s = np.asarray(s, dtype=np.float32)
        out.append([{**row[i], "score": float(s[i]), "first_stage_score": row[i]["score"]}
                    for i in reranked_order(s)[:k]])
    return out


def pair_texts(row: list[dict]) -> list[str]:
    """What each hit of a first-stage row is scored as (title and text, as the single-process server)."""
    return [passage_text(h["title"], h["text"]) for h in row]
