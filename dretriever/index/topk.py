"""Exact top-k selection on score matrices, and the exact inner-product scan built on it.

:func:`stable_top_k` keeps, per row, the ``k`` best columns in the order a stable descending sort of the whole row
gives (ties broken by column), but sorts only ``k`` of them: an ``argpartition`` finds the k-th best score, every
column above it is kept and the ties at it are taken in column order. Merging per-shard results (columns in shard
order, then in-shard order) therefore keeps "shard order, then in-shard order" as the tie-break at any ``k``.

:func:`scan` scores queries against blocks of full vectors with one BLAS product per block and keeps the running
top-k. It is how Flat shards are searched: on the 2-core Intel Xeon (AVX-512, 2026-12-07), 300 queries against
200,000 random 384-d vectors took 0.33 s this way and 2.2 s through ``faiss.IndexFlatIP.search`` at k=10 (2.0 s
at k=1000); on SciFact's four Flat shards at k=1000, 0.02 s against 0.09 s (``eval/profile_search.py``). Below
:data:`SCAN_MIN_QUERIES` queries faiss keeps the search: there it runs its own SIMD loop over the rows where they
lie, while BLAS wants a copy of a memory-mapped shard's rows (at one query on 150,000 mapped 384-d rows: faiss 40 ms,
the scan 69 ms; at 64 queries 680 against 386 ms).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BLOCK_SCORES = 1 << 24  # scores held at once per selection (64 MiB of float32)
MAX_ROWS = 1 << 18  # rows per selection at most: argpartition's indices and masks stay a few MiB
SCAN_MIN_QUERIES = 20  # faiss's own threshold for BLAS (distance_compute_blas_threshold); below it faiss searches
COPY_BYTES = 1 << 22  # vectors copied at once where the stored ones cannot go to BLAS in place (4 MiB)


def gather(a: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``np.take_along_axis(a, cols, axis=1)`` for 2-D arrays, by one flat ``take`` (several times faster)."""
    n, width = a.shape
    return np.take(a.reshape(-1), cols + (np.arange(n, dtype=np.int64) * width)[:, None])


def stable_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices ``(n, min(k, width))`` of each row's best scores, best first, ties in column order: what
    ``np.argsort(-scores, axis=1, kind="stable")[:, :k]`` gives, several times faster on rows of a few thousand
    (an ``argpartition``, then numpy's default SIMD sort of ``k``; rows with ties take the exact, slower way)."""
    scores = np.ascontiguousarray(scores)
    n, width = scores.shape
    if k >= width:
        cols = np.broadcast_to(np.arange(width), (n, width))
        vals = scores
    else:
        cols = np.argpartition(scores, width - k, axis=1)[:, width - k:]
        vals = gather(scores, cols)
        kth = vals.min(axis=1, keepdims=True)
        straddle = np.flatnonzero((scores == kth).sum(axis=1) > (vals == kth).sum(axis=1))
        if len(straddle):  # ties across the cut: keep the lowest columns among them, as a stable sort would
            cols[straddle] = np.argsort(-scores[straddle], axis=1, kind="stable")[:, :k]
            vals = gather(scores, cols)
    order = np.argsort(-vals, axis=1)
    ranked = gather(vals, order)
    tied = np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1))
    if len(tied):
        order[tied] = np.lexsort((cols[tied], -vals[tied]), axis=-1)
    return gather(np.ascontiguousarray(cols), order)


def block_rows(queries: int) -> int:
    """Rows scored per selection: scores for ``queries`` queries near :data:`BLOCK_SCORES`, and never more than
    :data:`MAX_ROWS` rows (a one-query search of a large index would otherwise select over millions at once)."""
    return min(MAX_ROWS, max(1024, BLOCK_SCORES // max(1, queries)))


def scan(queries: np.ndarray, blocks: Iterable[tuple[int, range | np.ndarray, np.ndarray]], k: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``queries`` over ``blocks`` of ``(shard, positions, vectors)`` (in shard
    order, positions ascending; a ``range`` or an array): scores, shards and positions ``(n, k')``, best first,
    ties to the lower shard, then position; ``k' = min(k, rows scanned)``. Each block is scored as it comes (its
    vectors are not kept); the scores of up to :func:`block_rows` rows are then cut to the top ``k`` at once."""
    n = len(queries)
    size, best, pending, rows = block_rows(n), [], [], 0

    def select():
        scores = pending[0][2] if len(pending) == 1 else np.concatenate([part for _, _, part in pending], axis=1)
        shard = np.repeat([s for s, _, _ in pending], [len(p) for _, p, _ in pending])
        pos = np.concatenate([np.arange(p.start, p.stop) if isinstance(p, range) else p for _, p, _ in pending])
        top = stable_top_k(scores, k)
        best.append((gather(scores, top), shard[top], pos[top]))

    for s, positions, vectors in blocks:
        if rows and rows + len(positions) > size:
            select()
            pending, rows = [], 0
        pending.append((s, positions, np.ascontiguousarray(queries @ vectors.T, dtype=np.float32)))
        rows += len(positions)
    if rows:
        select()
    if not best:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64), np.zeros((n, 0), np.int64)
    if len(best) == 1:
        return best[0]
    scores, shard, pos = (np.concatenate(parts, axis=1) for parts in zip(*best))
    top = stable_top_k(scores, k)
    return gather(scores, top), gather(shard, top), gather(pos, top)
