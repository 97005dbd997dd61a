"""Dev evaluation of a reranker for checkpoint selection: rerank each dev query's candidates, nDCG@10.

A reranker sees a first stage's candidates, never the whole corpus, so its dev set is per query: the top
``candidates`` documents a first stage mined for it (the ``dretriever mine`` file given as ``dev_negatives``,
judged documents already removed) plus every document judged relevant to it (the first stage's misses
included, so a perfect reranker reaches nDCG@10 1). The model scores every pair, the candidates are sorted
by score (ties keep the mined order, judged documents after it: no tie favours a relevant one), and
nDCG@10 (trec_eval's, graded), MRR@10 and the cost (pairs, pairs/s) are reported.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import DretrieverError
from .data import ndcg_at_k


class RerankDevEvaluator:
    def __init__(self, corpus, queries: dict[str, str], qrels: dict[str, dict[str, int]],
                 mined: dict[str, list[str]], candidates: int, batch_size: int = 32, precision: str = "auto"):
        self.queries, self.qrels = queries, qrels
        self.batch_size, self.precision = batch_size, precision
        self.lists: dict[str, list[str]] = {}
        without = []
        for qid in queries:
            judged = [d for d, r in qrels.get(qid, {}).items() if r > 0 and d in corpus]
            first = [d for d in mined.get(qid, []) if d in corpus and d not in qrels.get(qid, {})][:candidates]
            self.lists[qid] = first + judged
            if not first:
                without.append(qid)
        if without:
            raise DretrieverError(f"dev_negatives: no mined candidates for {len(without)} dev queries "
                                  f"(e.g. {without[0]!r}); mine the dev split too")
        self.pairs = [(queries[q], corpus[d].contents) for q in queries for d in self.lists[q]]

    def __call__(self, model) -> dict[str, float]:
        t = time.perf_counter()
        scores = model.predict(self.pairs, batch_size=self.batch_size, precision=self.precision)
        seconds = time.perf_counter() - t
        ndcg, mrr, at = [], [], 0
        for qid in self.queries:
            ids = self.lists[qid]
            s = scores[at:at + len(ids)]
            at += len(ids)
            ranked = [ids[i] for i in np.argsort(-s, kind="stable")]
            rels = self.qrels[qid]
            ndcg.append(ndcg_at_k(ranked, rels, 10))
            mrr.append(next((1 / (r + 1) for r, d in enumerate(ranked[:10]) if rels.get(d, 0) > 0), 0.0))
        self.per_query_ndcg = dict(zip(self.queries, map(float, ndcg)))
        return {"dev_ndcg@10": float(np.mean(ndcg)), "dev_mrr@10": float(np.mean(mrr)),
                "dev_pairs": len(self.pairs), "dev_pairs_per_s": round(len(self.pairs) / max(seconds, 1e-9), 1),
                "eval_pairs_s": round(seconds, 3)}
