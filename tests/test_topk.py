"""Exact top-k selection (dretriever/index/topk.py) and the BLAS scan that searches Flat shards: the same order as a
stable sort of every score (ties to the lower shard, then position), at any k, with ties everywhere."""

import faiss
import numpy as np
import pytest

from dretriever.index import topk
from dretriever.index.sharded import Shard, ShardedIndex
from dretriever.index.topk import scan, stable_top_k


def reference(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("k", [1, 7, 50, 199, 200, 500])
def test_stable_top_k_is_the_stable_sort_cut_at_k_even_with_ties_across_the_cut(k):
    rng = np.random.default_rng(k)
    # few distinct values: most rows hold ties at the k-th score and inside the top k; -inf as empty slots
    scores = rng.integers(0, 6, size=(40, 200)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    scores[:5] = rng.standard_normal((5, 200)).astype(np.float32)  # rows without ties take the fast way
    assert np.array_equal(stable_top_k(scores, k), reference(scores, k))


def test_stable_top_k_keeps_the_lowest_columns_among_equal_scores():
    scores = np.array([[1.0, 2.0, 2.0, 0.5, 2.0, 2.0]], np.float32)
    assert stable_top_k(scores, 3).tolist() == [[1, 2, 4]]
    assert stable_top_k(scores, 6).tolist() == [[1, 2, 4, 5, 0, 3]]


def small_integers(rng, shape) -> np.ndarray:
    """Vectors whose inner products are exact in float32 whatever the order of the sums (so BLAS, faiss and the
    reference agree bit for bit, and duplicate rows tie exactly)."""
    return rng.integers(-3, 4, size=shape).astype(np.float32)


def blocks_of(vectors_by_shard, size):
    for s, vectors in enumerate(vectors_by_shard):
        for start in range(0, len(vectors), size):
            yield s, np.arange(start, min(len(vectors), start + size)), vectors[start:start + size]


def test_scan_over_many_blocks_equals_brute_force_with_duplicate_vectors_across_shards(monkeypatch):
    rng = np.random.default_rng(0)
    base = small_integers(rng, (30, 16))
    shards = [base[rng.integers(0, 30, size=n)] for n in (700, 1, 0, 900, 450)]  # every vector many times over
    queries = small_integers(rng, (9, 16))
    monkeypatch.setattr(topk, "BLOCK_SCORES", 9 * 1024)  # blocks of 1,024 rows: several selections, then a merge
    everything = np.concatenate([v for v in shards if len(v)])
    labels = [(s, p) for s, v in enumerate(shards) for p in range(len(v))]
    for k in (1, 10, 333, 2051, 5000):
        scores, shard, pos = scan(queries, blocks_of(shards, 300), k)
        want = reference(queries @ everything.T, k)
        assert scores.shape == want.shape == shard.shape == pos.shape
        assert [[(int(a), int(b)) for a, b in zip(rs, rp)] for rs, rp in zip(shard, pos)] == \
            [[labels[j] for j in row] for row in want]
        assert np.allclose(scores, np.take_along_axis(queries @ everything.T, want, axis=1), atol=1e-5)


def test_scan_of_nothing_returns_empty_columns():
    scores, shard, pos = scan(np.ones((3, 4), np.float32), iter([]), 10)
    assert scores.shape == shard.shape == pos.shape == (3, 0)


def flat_index(tmp_path, vectors_by_shard):
    shards = []
    for s, vectors in enumerate(vectors_by_shard):
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        shards.append(Shard(tmp_path / f"shard-{s}", index, dim=vectors.shape[1]))
    return ShardedIndex(tmp_path, {"dim": vectors_by_shard[0].shape[1], "faiss": {}}, shards, threads=2)


def test_flat_shards_are_scanned_and_agree_with_faiss_and_its_tie_order(tmp_path):
    rng = np.random.default_rng(1)
    base = small_integers(rng, (50, 24))
    by_shard = [base[rng.integers(0, 50, size=n)] for n in (400, 333, 600)]  # exact duplicates: ties
    index = flat_index(tmp_path, by_shard)
    queries = small_integers(rng, (24, 24))
    everything = np.concatenate(by_shard)
    labels = [(s, p) for s, v in enumerate(by_shard) for p in range(len(v))]
    for k in (5, 100, 1333, 2000):
        scores, shard, pos = index.search_arrays(queries, k)
        assert index.last_plan == "exact"
        want = reference(queries @ everything.T, k)
        assert [[(int(a), int(b)) for a, b in zip(rs, rp)] for rs, rp in zip(shard, pos)] == \
            [[labels[j] for j in row] for row in want]
        # faiss's own Flat search over the shards, merged as before: the same scores in the same order
        parts = index._per_shard(queries, k)
        faiss_scores = np.sort(np.concatenate([d for _, d, _ in parts], axis=1), axis=1)[:, ::-1][:, :k]
        assert np.allclose(scores, faiss_scores, atol=1e-5)
    few, _, _ = index.search_arrays(queries[:3], 100)  # under SCAN_MIN_QUERIES queries faiss searches
    assert index.last_plan == "index" and np.array_equal(few, index.search_arrays(queries, 100)[0][:3])


def test_a_filtered_or_approximate_index_is_not_scanned(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    index = flat_index(tmp_path, [vectors])
    index.shards[0].index = faiss.IndexHNSWFlat(8, 8, faiss.METRIC_INNER_PRODUCT)
    index.shards[0].index.add(vectors)
    index.search_arrays(vectors[:3], 5)
    assert index.last_plan == "index"
    l2 = faiss.IndexFlatL2(8)
    l2.add(vectors)
    index.shards[0].index = l2
    assert not index.shards[0].flat_ip()


def test_flat_scan_reads_the_exact_float32_rows_even_with_float16_kept_and_rows_deleted(tmp_path):
    rng = np.random.default_rng(3)
    by_shard = [rng.standard_normal((500, 16)).astype(np.float32) for _ in range(2)]
    index = flat_index(tmp_path, by_shard)
    for shard, vectors in zip(index.shards, by_shard):  # float16 vectors kept beside the Flat index
        shard.vectors_file, shard._vectors = "kept.f16", vectors.astype(np.float16)
    index.shards[1].deleted = np.array([0, 7, 499])
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    scores, shard, pos = index.search_arrays(queries, 1000)
    live = [(s, p) for s in range(2) for p in range(500) if not (s == 1 and p in (0, 7, 499))]
    assert index.last_plan == "exact" and scores.shape == (20, 997)
    for q, row_scores, row_shard, row_pos in zip(queries, scores, shard, pos):
        assert sorted(zip(row_shard.tolist(), row_pos.tolist())) == live  # every live row once, no deleted one
        assert np.all(np.diff(row_scores) <= 0)
        exact = np.array([by_shard[s][p] @ q for s, p in zip(row_shard, row_pos)], np.float32)
        np.testing.assert_allclose(row_scores, exact, atol=1e-5)  # float32 rows: float16's error is ~1e-3
