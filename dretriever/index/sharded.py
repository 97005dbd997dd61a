"""Open a built index and search all its shards, merging their top-k exactly as one index would.

Opening reads the manifest and checks each shard's file sizes; faiss indexes are memory-mapped
(``IO_FLAG_MMAP_IFC``: Flat codes and IVF lists stay on disk, in the page cache, not in the process's
heap), docids are looked up in mapped files, and the doc store and kept vectors are opened on demand.
Full sha256 checks are ``verify=True`` (``dretriever index verify``).

Shards are searched in parallel by a thread pool (faiss releases the GIL; each worker runs faiss with one
OpenMP thread). IVF shards that share the index's trained quantizer are searched with one coarse
assignment for all of them (``search_preassigned``), so the quantizer runs once, not once per shard.
With ``rerank=R`` the approximate top-R candidates are re-scored exactly from the full vectors kept on disk.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from ..errors import DretrieverError
from . import manifest as mf
from .docids import DocIds
from .docstore import FILENAME as DOCSTORE
from .docstore import DocStore
from .vectors import open_vectors


@dataclass
class Shard:
    dir: Path
    index: faiss.Index
    ids: DocIds | None = None
    vectors_file: str | None = None
    dim: int = 0
    _store: DocStore | None = field(default=None, repr=False)
    _vectors: np.ndarray | None = field(default=None, repr=False)

    @property
    def docids(self) -> list[str]:
        """Every docid of the shard as a list (small indexes; search uses :attr:`ids`)."""
        return self.ids.tolist()

    @property
    def store(self) -> DocStore:
        if self._store is None:
            self._store = DocStore(self.dir / DOCSTORE)
        return self._store

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            if not self.vectors_file:
                raise DretrieverError(f"{self.dir}: no full vectors kept (build with --keep_vectors float16) "
                                      "so it cannot re-rank")
            self._vectors = open_vectors(self.dir / self.vectors_file, self.dim)
        return self._vectors


def _one_omp_thread() -> None:
    faiss.omp_set_num_threads(1)


class ShardedIndex:
    """All shards of a complete index. ``search`` takes query vectors and returns merged top-k."""

    def __init__(self, root: Path, manifest: dict, shards: list[Shard], threads: int | None = None):
        self.root, self.manifest, self.shards = root, manifest, shards
        self.threads = max(1, min(len(shards), threads or os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.rerank = 0

    @classmethod
    def open(cls, root: str | Path, verify: bool = False, mmap: bool = True,
             threads: int | None = None) -> "ShardedIndex":
        """Open every shard (sizes checked; ``verify``: also every sha256). ``mmap=False`` reads indexes into RAM."""
        root = Path(root)
        manifest = mf.read_manifest(root)
        if not manifest.get("complete"):
            raise DretrieverError(f"{root}: the index is incomplete (an interrupted build?); rerun the build to finish it")
        dim = int(manifest["dim"])
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        shards = []
        for entry in manifest["shards"]:
            d = root / entry["dir"]
            problem = mf.shard_problem(root, entry, full=verify)
            if problem:
                raise DretrieverError(f"{d}: shard files do not match the manifest ({problem}); rerun the build "
                                      "to rebuild it")
            ids = DocIds(d)
            index = faiss.read_index(str(d / "index"), flags)
            if index.ntotal != len(ids) or index.ntotal != entry["num_docs"]:
                raise DretrieverError(f"{d}: index holds {index.ntotal} vectors but docid lists {len(ids)} ids")
            shards.append(Shard(d, index, ids, entry.get("vectors"), dim))
        return cls(root, manifest, shards, threads)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return sum(s.index.ntotal for s in self.shards)

    def set_search_params(self, rerank: int | None = None, **params) -> None:
        """Set faiss parameters on every shard, e.g. ``nprobe=32`` (IVF) or ``efSearch=128`` (HNSW);
        ``rerank=R`` re-scores the top-R approximate candidates exactly (0: off)."""
        if rerank is not None:
            if rerank and not all(s.vectors_file for s in self.shards):
                raise DretrieverError(f"{self.root}: rerank needs full vectors kept beside every shard "
                                      "(build with --keep_vectors float16 or float32)")
            self.rerank = int(rerank)
        space = faiss.ParameterSpace()
        for shard in self.shards:
            for key, value in params.items():
                space.set_index_parameter(shard.index, key, value)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, rerank: int | None = None
               ) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
        """Top-``k`` over all shards for each query row.

        Returns ``scores`` of shape (n, k') and, per query, ``(shard, position)`` pairs, best first.
        Ties keep shard order then in-shard order, which is what a single index over the
        concatenated shards returns.
        """
        scores, shard_of, pos = self.search_arrays(queries, k, rerank)
        hits = [[(int(sh), int(i)) for sh, i in zip(rs, ri) if i >= 0] for rs, ri in zip(shard_of, pos)]
        return scores, hits

    def search_arrays(self, queries: np.ndarray, k: int, rerank: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`search`, as arrays ``scores, shard, position`` of shape (n, k'); position -1 = no hit."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise DretrieverError(f"query vectors must have shape (n, {self.dim}), got {queries.shape}")
        rerank = self.rerank if rerank is None else rerank
        depth = max(k, rerank)
        parts = self._per_shard(queries, depth)
        scores, shard_of, pos = _merge(parts, depth)
        if rerank:
            scores, shard_of, pos = self._rerank(queries, scores, shard_of, pos, k)
        return scores[:, :k], shard_of[:, :k], pos[:, :k]

    def _per_shard(self, queries: np.ndarray, k: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        coarse = self._coarse(queries)
        jobs = [s for s, shard in enumerate(self.shards) if shard.index.ntotal > 0]

        def one(s: int):
            index = self.shards[s].index
            kk = min(k, index.ntotal)
            if coarse is not None:
                xt, dq, iq = coarse
                d, i = faiss.extract_index_ivf(index).search_preassigned(xt, kk, iq, dq)
            else:
                d, i = index.search(queries, kk)
            return s, d, i

        if self.threads == 1 or len(jobs) == 1:
            return [one(s) for s in jobs]
        return list(self._executor().map(one, jobs))

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shard",
                                                initializer=_one_omp_thread)
            return self._pool

    def _coarse(self, queries: np.ndarray):
        """One coarse assignment for every shard when they share the trained quantizer (IVF), else None."""
        if not self.manifest["faiss"].get("trained_index") or not self.shards:
            return None
        first = self.shards[0].index
        try:
            ivf = faiss.extract_index_ivf(first)
        except RuntimeError:
            return None
        xt = queries
        if isinstance(first, faiss.IndexPreTransform):
            for j in range(first.chain.size()):
                xt = first.chain.at(j).apply(xt)
        dq, iq = ivf.quantizer.search(np.ascontiguousarray(xt, dtype=np.float32), ivf.nprobe)
        return xt, dq, iq

    def _rerank(self, queries, scores, shard_of, pos, k):
        exact = np.full(scores.shape, -np.inf, dtype=np.float32)
        for s in np.unique(shard_of[pos >= 0]):
            mask = (shard_of == s) & (pos >= 0)
            qi, _ = np.nonzero(mask)
            rows = pos[mask]
            order = np.argsort(rows, kind="stable")  # read the mapped file in position order
            vecs = np.empty((len(rows), self.dim), dtype=np.float32)
            vecs[order] = self.shards[int(s)].vectors[rows[order]]
            exact[mask] = np.einsum("ij,ij->i", vecs, queries[qi])
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        new_scores, new_shard, new_pos = take(exact), take(shard_of), take(pos)
        new_pos = np.where(np.isinf(new_scores), -1, new_pos)
        return new_scores, new_shard, new_pos

    # ------------------------------------------------------------------ ids and text
    def docid(self, shard: int, position: int) -> str:
        return self.shards[shard].ids[position]

    def texts(self, shard: int, docids: list[str]) -> dict[str, dict]:
        return self.shards[shard].store.get_many(docids)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for shard in self.shards:
            if shard._store is not None:
                shard._store.close()


def _merge(parts: list[tuple[int, np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``k`` over per-shard results (shard order, then in-shard order, breaks ties)."""
    if not parts:
        raise DretrieverError("the index holds no vectors")
    scores = np.concatenate([d for _, d, _ in parts], axis=1)
    ids = np.concatenate([i for _, _, i in parts], axis=1)
    shard_of = np.concatenate([np.full_like(i, s) for s, _, i in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(scores, order, axis=1), np.take_along_axis(shard_of, order, axis=1),
            np.take_along_axis(ids, order, axis=1))
