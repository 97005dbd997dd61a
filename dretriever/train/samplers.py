"""TAS-Balanced's samplers: topic-aware batches (k-means query clusters) and balanced margin sampling.

* :func:`cluster_queries` clusters query embeddings once with FAISS k-means (spherical when the
  embeddings are normalised).
* :class:`ClusterBatchSampler` fills every batch with exactly ``batch_size`` queries from few clusters, as
  matchmaker's loader does: each epoch, each cluster's queries are shuffled; a batch is filled by drawing a
  cluster at random (seeded) and taking its next queries, ``batch_size // clusters_per_batch`` of them (the
  first ``batch_size % clusters_per_batch`` shares one more); a cluster that runs out is continued by another
  random one. So ``clusters_per_batch`` is the minimum (target) number of clusters a batch mixes: exactly that
  many while clusters are large enough, more when one runs out. Every query is used once per epoch; the
  epoch's final leftover (fewer than ``batch_size`` queries) is topped up to a full batch with queries already
  used this epoch, those of the leftover's clusters first (in the epoch's order), then the others: each epoch
  has ``ceil(queries / batch_size)`` batches and ``-queries % batch_size`` repeats.
* :class:`BalancedMarginSampler` draws, for one query, a (positive, negative) pair: first one of the
  query's positives, uniformly (a fresh draw every epoch), then the teacher margins ``t(pos) - t(neg)`` of
  that positive's pairs are put into ``bins`` equal-width bins over their range, a non-empty bin is drawn
  uniformly, then a pair inside it uniformly. Pairs of every margin size are drawn equally often, instead
  of the many low-margin ones dominating.

Many positives: drawing the positive first gives every positive of a query the same chance whatever its
margins, and the pairs are never materialised (:class:`QueryPairs` keeps the positives and the negatives;
NFCorpus's 42.7 judged documents per query times 100 negatives would be ~11 million pairs). With one
positive per query the draws are exactly those of binning all the query's pairs (earlier versions), since
the positive draw only happens when there is more than one.

Both are deterministic given the seed and the epoch (and, for pairs, the query).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np

from ..errors import DretrieverError

log = logging.getLogger(__name__)


def cluster_queries(embeddings: np.ndarray, n_clusters: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """k-means cluster id (0..n_clusters-1) of each row; spherical k-means when rows have unit norm."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not 1 <= n_clusters <= len(x):
        raise DretrieverError(f"n_clusters: must lie in [1, {len(x)}] (the number of queries), got {n_clusters}")
    spherical = bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-3))
    kmeans = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed, spherical=spherical,
                          min_points_per_centroid=1, max_points_per_centroid=max(256, len(x)))
    kmeans.train(x)
    _, labels = kmeans.index.search(x, 1)
    return labels[:, 0].astype(np.int64)


class ClusterBatchSampler:
    """Full batches of ``batch_size`` query indices, each from at least ``clusters_per_batch`` clusters."""

    def __init__(self, clusters: np.ndarray, batch_size: int, clusters_per_batch: int = 1, seed: int = 0):
        if batch_size < 1 or clusters_per_batch < 1:
            raise DretrieverError("batch_size and clusters_per_batch must be positive")
        self.clusters = np.asarray(clusters)
        if batch_size > len(self.clusters):
            raise DretrieverError(f"batch_size ({batch_size}) exceeds the number of training queries "
                                  f"({len(self.clusters)})")
        if clusters_per_batch > batch_size:
            raise DretrieverError(f"clusters_per_batch ({clusters_per_batch}) exceeds batch_size ({batch_size})")
        self.members: dict[int, list[int]] = {}
        for i, c in enumerate(self.clusters.tolist()):
            self.members.setdefault(int(c), []).append(i)
        if clusters_per_batch > len(self.members):
            raise DretrieverError(f"clusters_per_batch ({clusters_per_batch}) exceeds the number of non-empty "
                                  f"clusters ({len(self.members)})")
        self.batch_size, self.per_batch, self.seed = batch_size, clusters_per_batch, seed
        mean = len(self.clusters) / len(self.members)
        if mean < batch_size / clusters_per_batch:
            log.warning("clusters too small for batch_size: %d queries in %d clusters (mean %.1f per cluster) < "
                        "batch_size %d / clusters_per_batch %d = %.1f, so batches mix more clusters than "
                        "clusters_per_batch; use fewer clusters (n_clusters <= %d)", len(self.clusters),
                        len(self.members), mean, batch_size, clusters_per_batch, batch_size / clusters_per_batch,
                        max(1, len(self.clusters) * clusters_per_batch // batch_size))

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{epoch}")
        left: dict[int, list[int]] = {}
        for c in sorted(self.members):
            ids = list(self.members[c])
            rng.shuffle(ids)
            left[c] = ids[::-1]  # pop() takes the shuffled order
        open_ = sorted(left)  # clusters with queries left
        shares = [self.batch_size // self.per_batch + (k < self.batch_size % self.per_batch)
                  for k in range(self.per_batch)]
        batches: list[list[int]] = []
        while open_:
            batch, used = [], set()
            for share in shares:
                while share and open_:
                    c = rng.choice(open_)
                    while c in used and sum(bool(left[u]) for u in used) < len(open_):
                        c = rng.choice(open_)  # a cluster not yet in this batch while there is one
                    used.add(c)
                    while share and left[c]:
                        batch.append(left[c].pop())
                        share -= 1
                    if not left[c]:
                        open_.remove(c)
            batches.append(batch)
        if len(batches[-1]) < self.batch_size:
            batches[-1] = self._top_up(batches[-1], [i for b in batches[:-1] for i in b])
        return batches

    def _top_up(self, last: list[int], earlier: list[int]) -> list[int]:
        """The leftover batch filled with queries used earlier this epoch: its clusters' first, in epoch order."""
        mine = {int(self.clusters[i]) for i in last}
        same = [i for i in earlier if int(self.clusters[i]) in mine]
        other = [i for i in earlier if int(self.clusters[i]) not in mine]
        return last + (same + other)[:self.batch_size - len(last)]

    def __len__(self) -> int:
        return -(-len(self.clusters) // self.batch_size)


@dataclass
class Pair:
    positive: str
    negative: str
    teacher_pos: float
    teacher_neg: float

    @property
    def margin(self) -> float:
        return self.teacher_pos - self.teacher_neg


@dataclass
class QueryPairs:
    """Every (positive, negative) pair of one query, kept as its two lists of ``(document, teacher score)``.

    Iterating gives the :class:`Pair` objects positive by positive (each against every negative, in order)."""
    positives: list[tuple[str, float]]
    negatives: list[tuple[str, float]]

    def __iter__(self):
        for p, tp in self.positives:
            for n, tn in self.negatives:
                yield Pair(p, n, tp, tn)

    def __len__(self) -> int:
        return len(self.positives) * len(self.negatives)

    def documents(self) -> set[str]:
        return {d for d, _ in self.positives} | {d for d, _ in self.negatives}


@dataclass
class _Group:
    """One positive of a query and its negatives; ``t_pos`` is a scalar (QueryPairs) or per negative."""
    positive: str
    negatives: list[str]
    t_pos: float | np.ndarray
    t_neg: np.ndarray

    @property
    def margins(self) -> np.ndarray:
        return np.asarray(self.t_pos, dtype=np.float64) - self.t_neg

    def pair(self, k: int) -> Pair:
        tp = self.t_pos if np.ndim(self.t_pos) == 0 else self.t_pos[k]
        return Pair(self.positive, self.negatives[k], float(tp), float(self.t_neg[k]))


def _groups(pairs) -> list[_Group]:
    if isinstance(pairs, QueryPairs):
        neg_ids = [d for d, _ in pairs.negatives]
        t_neg = np.array([t for _, t in pairs.negatives], dtype=np.float64)
        return [_Group(p, neg_ids, float(tp), t_neg) for p, tp in pairs.positives] if neg_ids else []
    by_pos: dict[str, list[Pair]] = {}
    for x in pairs:
        by_pos.setdefault(x.positive, []).append(x)
    return [_Group(p, [x.negative for x in ps], np.array([x.teacher_pos for x in ps], dtype=np.float64),
                   np.array([x.teacher_neg for x in ps], dtype=np.float64)) for p, ps in by_pos.items()]


class BalancedMarginSampler:
    """Per query: draw a positive, bin the teacher margins of its pairs, and sample a bin, then a pair.

    ``pairs`` maps each query to its :class:`QueryPairs` or to a list of :class:`Pair` (grouped by positive,
    in order of first appearance)."""

    def __init__(self, pairs: dict[str, QueryPairs | list[Pair]], bins: int = 10, seed: int = 0):
        if bins < 1:
            raise DretrieverError(f"margin_bins: must be positive, got {bins}")
        self.groups = {q: _groups(p) for q, p in pairs.items()}
        empty = [q for q, g in self.groups.items() if not g]
        if empty:
            raise DretrieverError(f"no (positive, negative) pair for query {empty[0]!r}")
        self.nbins, self.seed = bins, seed

    @staticmethod
    def bin_margins(margins: np.ndarray, bins: int) -> list[list[int]]:
        """Indices per equal-width margin bin (empty bins dropped), lowest margins first."""
        margins = np.asarray(margins, dtype=np.float64)
        lo, hi = margins.min(), margins.max()
        if hi - lo <= 0:
            return [list(range(len(margins)))]
        which = np.minimum(((margins - lo) / (hi - lo) * bins).astype(int), bins - 1)
        return [np.flatnonzero(which == b).tolist() for b in range(bins) if (which == b).any()]

    @staticmethod
    def bin_pairs(pairs: list[Pair], bins: int) -> list[list[int]]:
        """Indices of ``pairs`` per equal-width margin bin (empty bins dropped), lowest margins first."""
        return BalancedMarginSampler.bin_margins(np.array([p.margin for p in pairs], dtype=np.float64), bins)

    def sample(self, qid: str, epoch: int, draw: int = 0) -> Pair:
        rng = random.Random(f"{self.seed}:{epoch}:{qid}:{draw}")
        groups = self.groups[qid]
        group = groups[rng.randrange(len(groups))] if len(groups) > 1 else groups[0]
        bin_ = rng.choice(self.bin_margins(group.margins, self.nbins))
        return group.pair(rng.choice(bin_))
