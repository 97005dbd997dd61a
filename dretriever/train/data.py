"""Training-data helpers shared by the methods: train queries/qrels, the deterministic dev carve-out, and a
fast in-process dev evaluation (nDCG@10 on a dev corpus subset) for checkpoint selection.

The dev split is carved from the *training* qrels (``TrainArgs.dev_queries`` queries, chosen by a seeded
shuffle of the sorted query ids), so the test split is never looked at while training; or, with
``TrainArgs.dev_split`` (e.g. ``dev``), it is the dataset's own ``qrels/<dev_split>.tsv`` (all its queries,
or a seeded ``dev_queries`` of them) and training keeps every training query.

Relevance grades are kept (``qrels[q][d]`` is the judged grade, > 0); ``positives`` lists the judged ids.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.beir import Document, load_beir, load_corpus
from ..errors import DretrieverError

log = logging.getLogger(__name__)
DEV_SEED = 20240601  # fixed, independent of the training seed: every recipe sees the same dev split


@dataclass
class TrainData:
    corpus: dict[str, Document]
    queries: dict[str, str]              # train queries (dev removed)
    qrels: dict[str, dict[str, int]]     # train judgments (dev removed)
    dev_queries: dict[str, str]
    dev_qrels: dict[str, dict[str, int]]

    def positives(self, qid: str) -> list[str]:
        return [d for d, r in self.qrels.get(qid, {}).items() if r > 0]


def negative_pools(data: TrainData, negatives: dict[str, list[str]], start: int, depth: int,
                   keep_empty: bool = False) -> dict[str, list[str]]:
    """Each training query's mined negatives at ranks ``[start, depth)`` that are in the corpus and not judged
    for it; a query left with none is dropped (kept with an empty pool when ``keep_empty``)."""
    pools = {}
    for qid in data.queries:
        cands = [d for d in negatives.get(qid, [])[start:depth] if d in data.corpus and d not in data.qrels[qid]]
        if cands or keep_empty:
            pools[qid] = cands
    return pools


def epoch_query_batches(qids: list[str], rng: random.Random, global_batch: int) -> list[list[str]]:
    """``qids`` shuffled by ``rng`` and cut into full global batches (the last partial one dropped)."""
    order = qids[:]
    rng.shuffle(order)
    return [order[i:i + global_batch] for i in range(0, len(order) - global_batch + 1, global_batch)]


def split_dev(qids, n_dev: int, seed: int = DEV_SEED, need_train: bool = True) -> tuple[list[str], list[str]]:
    """``(train, dev)``: ``n_dev`` query ids drawn by a seeded shuffle of the sorted ids.

    ``need_train=False`` lets the dev split take every query (an unsupervised method such as Contriever reads
    no training queries, so all of them can judge its checkpoints)."""
    qids = sorted(qids)
    if n_dev > len(qids) or (need_train and n_dev == len(qids)):
        raise DretrieverError(f"dev_queries: {n_dev} leaves no training queries (there are {len(qids)})"
                              if n_dev == len(qids) else f"dev_queries: {n_dev} > the {len(qids)} queries there are")
    shuffled = qids[:]
    random.Random(seed).shuffle(shuffled)
    dev = set(shuffled[:n_dev])
    return [q for q in qids if q not in dev], [q for q in qids if q in dev]


@functools.lru_cache(maxsize=2)
def _corpus(path: str) -> dict[str, Document]:
    return load_corpus(path)


def load_corpus_cached(data: str | Path) -> dict[str, Document]:
    return _corpus(str(Path(data) / "corpus.jsonl"))


def _positive_qrels(qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    kept = {q: {d: r for d, r in docs.items() if r > 0} for q, docs in qrels.items()}
    return {q: docs for q, docs in kept.items() if docs}


def load_train_data(data: str | Path, split: str = "train", dev_queries: int = 0, need_train: bool = True,
                    dev_split: str = "") -> TrainData:
    """Queries and qrels (graded, positives only) of ``split`` with ``dev_queries`` of them carved off as the dev
    split (``need_train=False``: they may be all of them; see ``split_dev``).

    With ``dev_split``, the dev queries are those of ``qrels/<dev_split>.tsv`` instead (``dev_queries`` > 0: a
    seeded subset of that many), nothing is carved from ``split``, and a training query that is also a dev
    query is dropped from training (with a warning)."""
    corpus = load_corpus_cached(data)
    ds = load_beir(data, split=split, corpus=corpus)
    qrels = _positive_qrels(ds.qrels)
    if not dev_split:
        train, dev = split_dev(qrels, dev_queries, need_train=need_train) if dev_queries else (sorted(qrels), [])
        return TrainData(corpus, {q: ds.queries[q] for q in train}, {q: qrels[q] for q in train},
                         {q: ds.queries[q] for q in dev}, {q: qrels[q] for q in dev})
    if dev_split == split:
        raise DretrieverError(f"dev_split: {dev_split!r} is the training split; choose another (e.g. dev)")
    dev_ds = load_beir(data, split=dev_split, corpus=corpus)
    dev_qrels = _positive_qrels(dev_ds.qrels)
    dev = split_dev(dev_qrels, dev_queries, need_train=False)[1] if dev_queries else sorted(dev_qrels)
    both = set(dev) & set(qrels)
    if both:
        log.warning("dev_split: %d of the %s queries are also %s queries; they are left out of training",
                    len(both), split, dev_split)
    train = [q for q in sorted(qrels) if q not in both]
    if need_train and not train:
        raise DretrieverError(f"dev_split: every {split} query is a {dev_split} query; no training queries left")
    return TrainData(corpus, {q: ds.queries[q] for q in train}, {q: qrels[q] for q in train},
                     {q: dev_ds.queries[q] for q in dev}, {q: dev_qrels[q] for q in dev})


# ------------------------------------------------------------------------------------------- metrics
def ndcg_at_k(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    """trec_eval's ndcg_cut: gain = relevance, discount log2(rank + 1), ideal from the judgments."""
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: list[str], rels: dict[str, int], k: int = 100) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


class DevEvaluator:
    """Encode the dev queries and a dev corpus subset; report nDCG@10, R@100 and MRR@10 (in-process, exact).

    The dev corpus holds every judged document of the dev queries and the top ``candidates`` hard candidates
    per dev query (from a mined-negatives file, when given), then a seeded random sample of the rest fills it
    up to ``corpus_size`` documents (0: the whole corpus). The first two parts are always kept, so the
    corpus can exceed ``corpus_size``.

    When training cannot change the document vectors (ADORE: documents are the fixed index vectors),
    :meth:`fix_documents` hands over those vectors once and no evaluation encodes a document again. Each
    evaluation reports its seconds for queries and documents (``eval_queries_s``, ``eval_docs_s``) and how
    many documents it encoded (``dev_docs_encoded``).
    """

    def __init__(self, corpus: dict[str, Document], queries: dict[str, str], qrels: dict[str, dict[str, int]],
                 corpus_size: int = 2000, hard: dict[str, list[str]] | None = None, candidates: int = 10,
                 batch_size: int = 64, precision: str = "auto", seed: int = DEV_SEED):
        self.queries, self.qrels = queries, qrels
        self.batch_size, self.precision = batch_size, precision
        if corpus_size <= 0 or corpus_size >= len(corpus):
            ids = list(corpus)
        else:
            chosen = dict.fromkeys(d for q in queries for d in qrels.get(q, {}) if d in corpus)
            for q in queries:
                for d in (hard or {}).get(q, [])[:candidates]:
                    if d in corpus:
                        chosen.setdefault(d)
            rest = [d for d in corpus if d not in chosen]
            random.Random(seed).shuffle(rest)
            for d in rest[:max(0, corpus_size - len(chosen))]:
                chosen.setdefault(d)
            ids = list(chosen)
        self.doc_ids = ids
        self.doc_texts = [corpus[d].contents for d in ids]
        self.doc_vectors: np.ndarray | None = None

    def fix_documents(self, vectors: np.ndarray) -> None:
        """Use ``vectors`` (one row per ``doc_ids`` entry, in order) for every evaluation instead of encoding."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[0] != len(self.doc_ids):
            raise DretrieverError(f"dev corpus: {vectors.shape[0]} fixed vectors for {len(self.doc_ids)} documents")
        self.doc_vectors = vectors

    def __call__(self, encoder) -> dict[str, float]:
        qids = list(self.queries)
        t0 = time.perf_counter()
        q = encoder.encode_queries([self.queries[x] for x in qids], batch_size=self.batch_size, precision=self.precision)
        t1 = time.perf_counter()
        if self.doc_vectors is not None:
            d, encoded = self.doc_vectors, 0
        else:
            d = encoder.encode_docs(self.doc_texts, batch_size=self.batch_size, precision=self.precision)
            encoded = len(self.doc_texts)
        t2 = time.perf_counter()
        scores = q.astype(np.float32) @ d.astype(np.float32).T
        k = min(100, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        ndcg, recall, mrr = [], [], []
        for i, qid in enumerate(qids):
            order = top[i][np.argsort(-scores[i, top[i]], kind="stable")]
            ranked = [self.doc_ids[j] for j in order]
            rels = self.qrels[qid]
            ndcg.append(ndcg_at_k(ranked, rels, 10))
            recall.append(recall_at_k(ranked, rels, 100))
            mrr.append(next((1 / (r + 1) for r, x in enumerate(ranked[:10]) if rels.get(x, 0) > 0), 0.0))
        self.per_query_ndcg = dict(zip(qids, map(float, ndcg)))  # the last evaluation's, for paired tests
        return {"dev_ndcg@10": float(np.mean(ndcg)), "dev_recall@100": float(np.mean(recall)),
                "dev_mrr@10": float(np.mean(mrr)), "dev_docs": len(self.doc_ids), "dev_docs_encoded": encoded,
                "eval_queries_s": round(t1 - t0, 3), "eval_docs_s": round(t2 - t1, 3)}
