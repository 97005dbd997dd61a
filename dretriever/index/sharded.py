"""Open a built index and search all its shards, merging their top-k exactly as one index would.

Opening reads the manifest and checks each shard's file sizes; faiss indexes are memory-mapped
(``IO_FLAG_MMAP_IFC``: Flat codes and IVF lists stay on disk, in the page cache, not in the process's
heap), docids are looked up in mapped files, and the doc store and kept vectors are opened on demand.
Full sha256 checks are ``verify=True`` (``dretriever index verify``).

Shards are searched in parallel by a thread pool (faiss releases the GIL; each worker runs faiss with one
OpenMP thread), except Flat inner-product shards searched without a filter for 20 queries or more: those are scanned
together with BLAS products instead of faiss's Flat search, several times faster and exact all the same
(:mod:`dretriever.index.topk`).
IVF shards that share the index's trained quantizer are searched with one coarse
assignment for all of them (``search_preassigned``), so the quantizer runs once, not once per shard.
With ``rerank=R`` the approximate top-R candidates are re-scored exactly from the full vectors kept on disk.

A living datastore (``index/changes.py``) adds tombstones (deleted positions per shard) and metadata filters
(``index/filters.py``). Both restrict the search *inside* faiss: each shard gets an ``IDSelectorBitmap`` of its
allowed positions (live, and matching the filter), passed in the search parameters (also to the shared coarse
assignment's ``search_preassigned`` and before re-ranking), so k hits come back whenever k allowed rows exist;
nothing is dropped afterwards. A planner chooses per search: when a filter leaves at most ``exact_limit`` rows
and their full vectors are kept beside an approximate index, those rows alone are scored exactly (exact and
fast at low selectivity; a Flat index with the selector is already exact and computes only the allowed rows); otherwise the approximate index searches with the selector, and any query that
still got fewer than ``min(k, allowed)`` hits (an IVF probe holding too few allowed rows) is searched again
exhaustively. Opening also opens every doc store and kept-vector file, so a reader keeps its generation's files
however a later change garbage-collects them (Linux keeps unlinked open files).
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
from .filters import Filter, compile_filter, parse_filter
from .tombstones import Allowed, read_tombstones
from .topk import COPY_BYTES, SCAN_MIN_QUERIES, block_rows, gather, scan, stable_top_k
from .vectors import open_vectors

EXACT_LIMIT = 50_000  # a filter matching at most this many rows is scored exactly (when vectors can be read)


@dataclass
class Shard:
    dir: Path
    index: faiss.Index
    ids: DocIds | None = None
    vectors_file: str | None = None
    dim: int = 0
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _store: DocStore | None = field(default=None, repr=False)
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _live: Allowed | None = field(default=None, repr=False)

    @property
    def live(self) -> Allowed | None:
        """The live positions' selector (``None`` when nothing is deleted)."""
        if self._live is None and len(self.deleted):
            mask = np.ones(self.index.ntotal, dtype=bool)
            mask[self.deleted] = False
            self._live = Allowed(mask)
        return self._live

    @property
    def live_count(self) -> int:
        return self.index.ntotal - len(self.deleted)

    def scannable(self) -> bool:
        """Whether exact scores of chosen rows can be computed (kept vectors, or a Flat index)."""
        return bool(self.vectors_file) or isinstance(self.index, faiss.IndexFlat)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Full float32 vectors of ``positions`` (sorted): kept vectors, else reconstructed from a Flat index."""
        if self.vectors_file:
            return np.asarray(self.vectors[positions], dtype=np.float32)
        return self.index.reconstruct_batch(positions)

    def flat_ip(self) -> bool:
        """Whether the index is an exact inner-product Flat index (searched by :func:`topk.scan`)."""
        return isinstance(self.index, faiss.IndexFlat) and self.index.metric_type == faiss.METRIC_INNER_PRODUCT

    def blocks(self, positions: np.ndarray | None, size: int):
        """``(positions, vectors)`` blocks over ``positions`` (``None``: every row), for :func:`topk.scan`. A Flat
        index's own float32 rows are read (exact, even where float16 vectors are kept beside it): every row in
        place in blocks of ``size`` (positions as a ``range``), else as copies of :data:`topk.COPY_BYTES` at most,
        so that a search never holds a shard twice (a memory-mapped index file's rows sit at an offset that BLAS
        cannot take in place). Other indexes give their kept vectors (:meth:`rows`), in blocks of that size too."""
        d = self.index.d
        step = max(1, min(size, COPY_BYTES // (4 * d)))
        if self.flat_ip():
            n = self.index.ntotal
            if n == 0:
                return
            stored = faiss.rev_swig_ptr(self.index.get_xb(), n * d).reshape(n, d)
            if positions is None:
                step = size if stored.flags.aligned else step
                for start in range(0, n, step):
                    block = stored[start:start + step]
                    yield range(start, start + len(block)), block if stored.flags.aligned else np.array(block)
                return
            for start in range(0, len(positions), step):
                block = positions[start:start + step]
                yield block, stored[block]
            return
        positions = np.arange(self.index.ntotal) if positions is None else positions
        for start in range(0, len(positions), step):
            block = positions[start:start + step]
            yield block, self.rows(block)

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

    def __init__(self, root: Path, manifest: dict, shards: list[Shard], threads: int | None = None,
                 numbers: list[int] | None = None):
        self.root, self.manifest, self.shards = root, manifest, shards
        # the manifest's number of each opened shard (all of them, unless opened with ``select``)
        self.numbers = list(range(len(shards))) if numbers is None else list(numbers)
        self.threads = max(1, min(len(shards), threads or os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.rerank = 0
        self.exact_limit = EXACT_LIMIT
        self._positions: dict[str, tuple[int, int]] | None = None
        self.search_params: dict = {}
        self.last_plan = ""  # how the last search ran: exact | index | index+exhaustive (benchmarks print it)
        self.filter_keys: dict[str, str] = manifest.get("filter_keys") or {}

    @property
    def generation(self) -> int:
        return int(self.manifest.get("generation", 0))

    @classmethod
    def open(cls, root: str | Path, verify: bool = False, mmap: bool = True,
             threads: int | None = None, select=None) -> "ShardedIndex":
        """Open every shard (sizes checked; ``verify``: also every sha256). ``mmap=False`` reads indexes into RAM.
        ``select(num_shards)``: the manifest numbers of the shards to open (a Ray shard group opens only its own,
        chosen from the generation it opens); the others' files are never touched. Shard numbers in results are
        then positions in :attr:`shards`; :attr:`numbers` maps them to the manifest's."""
        root = Path(root)
        manifest = mf.read_manifest(root)
        if not manifest.get("complete"):
            raise DretrieverError(f"{root}: the index is incomplete (an interrupted build?); rerun the build to finish it")
        dim = int(manifest["dim"])
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        shards = []
        numbers = list(range(len(manifest["shards"]))) if select is None else list(select(len(manifest["shards"])))
        for number in numbers:
            entry = manifest["shards"][number]
            d = root / entry["dir"]
            problem = mf.shard_problem(root, entry, full=verify)
            if problem:
                raise DretrieverError(f"{d}: shard files do not match the manifest ({problem}); rerun the build "
                                      "to rebuild it")
            ids = DocIds(d)
            index = faiss.read_index(str(d / "index"), flags)
            if index.ntotal != len(ids) or index.ntotal != entry["num_docs"]:
                raise DretrieverError(f"{d}: index holds {index.ntotal} vectors but docid lists {len(ids)} ids")
            shard = Shard(d, index, ids, entry.get("vectors"), dim, read_tombstones(d, entry.get("deleted")))
            shard.store  # opened now: the snapshot's files stay readable after a later change removes them
            if shard.vectors_file:
                shard.vectors
            shards.append(shard)
        return cls(root, manifest, shards, threads, numbers)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        """Live passages (deleted rows are not counted)."""
        return sum(s.live_count for s in self.shards)

    def set_search_params(self, rerank: int | None = None, **params) -> None:
        """Set faiss parameters on every shard, e.g. ``nprobe=32`` (IVF) or ``efSearch=128`` (HNSW);
        ``rerank=R`` re-scores the top-R approximate candidates exactly (0: off)."""
        if rerank is not None:
            if rerank and not all(s.vectors_file for s in self.shards):
                raise DretrieverError(f"{self.root}: rerank needs full vectors kept beside every shard "
                                      "(build with --keep_vectors float16 or float32)")
            self.rerank = int(rerank)
        self.search_params.update(params)  # remembered, so that a reopened generation gets them too
        space = faiss.ParameterSpace()
        for shard in self.shards:
            for key, value in params.items():
                space.set_index_parameter(shard.index, key, value)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, rerank: int | None = None, filter: dict | Filter | None = None
               ) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
        """Top-``k`` over all shards for each query row.

        Returns ``scores`` of shape (n, k') and, per query, ``(shard, position)`` pairs, best first.
        Ties keep shard order then in-shard order, which is what a single index over the
        concatenated shards returns. Deleted rows never come back; ``filter`` (``index/filters.py``)
        restricts the search to matching rows.
        """
        scores, shard_of, pos = self.search_arrays(queries, k, rerank, filter)
        hits = [[(int(sh), int(i)) for sh, i in zip(rs, ri) if i >= 0] for rs, ri in zip(shard_of, pos)]
        return scores, hits

    def parse_filter(self, spec: dict | Filter | None) -> Filter | None:
        return spec if isinstance(spec, Filter) or spec is None else parse_filter(spec, self.filter_keys)

    def allowed(self, flt: Filter | None) -> list[Allowed | None]:
        """Per shard, the positions a search may return (``None``: every row)."""
        if flt is None:
            return [shard.live for shard in self.shards]
        out = []
        for shard in self.shards:
            where, params = compile_filter(flt, shard.store.doc_id_expr)
            mask = np.zeros(shard.index.ntotal, dtype=bool)
            mask[shard.store.positions_where(where, params)] = True
            mask[shard.deleted] = False
            out.append(Allowed(mask))
        return out

    def search_arrays(self, queries: np.ndarray, k: int, rerank: int | None = None,
                      filter: dict | Filter | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`search`, as arrays ``scores, shard, position`` of shape (n, k'); position -1 = no hit."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise DretrieverError(f"query vectors must have shape (n, {self.dim}), got {queries.shape}")
        flt = self.parse_filter(filter)
        rerank = self.rerank if rerank is None else rerank
        allowed = self.allowed(flt)
        total = sum(s.index.ntotal if a is None else a.count for s, a in zip(self.shards, allowed))
        if flt is not None and total <= self.exact_limit and self._scan_pays():
            self.last_plan = "exact"
            return self._exact(queries, k, allowed)
        if flt is None and not rerank and len(queries) >= SCAN_MIN_QUERIES and all(s.flat_ip() for s in self.shards):
            self.last_plan = "exact"  # BLAS products beat faiss's Flat search here (dretriever.index.topk)
            return self._exact(queries, k, allowed)
        self.last_plan = "index"
        depth = max(k, rerank)
        parts = self._per_shard(queries, depth, allowed)
        scores, shard_of, pos = _merge(parts, depth)
        if rerank:
            scores, shard_of, pos = self._rerank(queries, scores, shard_of, pos, k)
        scores, shard_of, pos = scores[:, :k], shard_of[:, :k], pos[:, :k]
        short = np.flatnonzero((pos >= 0).sum(axis=1) < min(k, total))
        if len(short):  # probed lists held too few allowed rows: search those queries exhaustively
            self.last_plan = "index+exhaustive"
            again = self._exhaustive(queries[short], k, allowed, rerank)
            width = max(scores.shape[1], again[0].shape[1])
            scores, shard_of, pos = (_pad(a, width, fill) for a, fill in
                                     ((scores, -np.inf), (shard_of, 0), (pos, -1)))
            for a, b in zip((scores, shard_of, pos), again):
                a[short, :b.shape[1]] = b
        return scores, shard_of, pos

    def _scan_pays(self) -> bool:
        """Exact scan of the matching rows: when their vectors can be read and the index is approximate (a Flat
        index with a selector already computes only the allowed rows' scores, natively, and exactly)."""
        return all(s.scannable() for s in self.shards) and not all(
            isinstance(s.index, faiss.IndexFlat) for s in self.shards)

    def _exhaustive(self, queries, k, allowed, rerank):
        if all(s.scannable() for s in self.shards):
            return self._exact(queries, k, allowed)
        parts = self._per_shard(queries, max(k, rerank), allowed, nprobe="all")
        scores, shard_of, pos = _merge(parts, max(k, rerank))
        if rerank:
            scores, shard_of, pos = self._rerank(queries, scores, shard_of, pos, k)
        return scores[:, :k], shard_of[:, :k], pos[:, :k]

    def _exact(self, queries: np.ndarray, k: int, allowed: list[Allowed | None]):
        """Score exactly every allowed row (from full vectors) and keep the top-``k``: Flat search, exact filtered
        search and the exhaustive fallback. One scan over all shards' rows (:func:`topk.scan`: BLAS products of
        bounded memory; BLAS threads do the parallel work)."""
        size = block_rows(len(queries))
        blocks = ((s, positions, vectors) for s, (shard, a) in enumerate(zip(self.shards, allowed))
                  for positions, vectors in shard.blocks(None if a is None else a.positions, size))
        return scan(queries, blocks, k)

    def _per_shard(self, queries: np.ndarray, k: int, allowed: list[Allowed | None] | None = None,
                   nprobe=None) -> list[tuple[int, np.ndarray, np.ndarray]]:
        allowed = allowed or [None] * len(self.shards)
        coarse = self._coarse(queries, nprobe)
        jobs = [s for s, shard in enumerate(self.shards)
                if shard.index.ntotal > 0 and (allowed[s] is None or allowed[s].count > 0)]

        def one(s: int):
            index, a = self.shards[s].index, allowed[s]
            kk = min(k, index.ntotal)
            params = _params(index, a.selector if a is not None else None, nprobe)
            if coarse is not None:
                xt, dq, iq = coarse
                ivf = faiss.extract_index_ivf(index)
                if params is None:
                    d, i = ivf.search_preassigned(xt, kk, iq, dq)
                else:  # the Python wrapper refuses params; the C++ call takes them
                    n = len(xt)
                    d, i = np.empty((n, kk), np.float32), np.empty((n, kk), np.int64)
                    ivf.search_preassigned_c(n, faiss.swig_ptr(xt), kk, faiss.swig_ptr(iq), faiss.swig_ptr(dq),
                                             faiss.swig_ptr(d), faiss.swig_ptr(i), False, params[-1])
            else:
                d, i = index.search(queries, kk, params=params[0] if params else None)
            return s, d, i

        if not jobs:
            return [(0, np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))]
        if self.threads == 1 or len(jobs) == 1:
            return [one(s) for s in jobs]
        return list(self._executor().map(one, jobs))

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shard",
                                                initializer=_one_omp_thread)
            return self._pool

    def _coarse(self, queries: np.ndarray, nprobe=None):
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
        probes = ivf.nlist if nprobe == "all" else ivf.nprobe
        xt = np.ascontiguousarray(xt, dtype=np.float32)
        dq, iq = ivf.quantizer.search(xt, probes)
        return xt, dq, np.ascontiguousarray(iq, dtype=np.int64)

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

    def columns(self, scores: np.ndarray, shard_of: np.ndarray, pos: np.ndarray
                ) -> tuple[list[str], list[float], list[int], list[int]]:
        """:meth:`search_arrays`' output as flat columns: the ids, scores and shards of every hit (queries in
        order, each best first, empty slots dropped) and each query's end offset in them. Ids are read in bulk
        per shard (:meth:`DocIds.take`), not one lookup per hit; when the hits outnumber the index's rows (k=1000 on
        a small corpus) every id is read once instead and the hits' ids are one gather from them."""
        found = pos >= 0
        shards, positions = shard_of[found], pos[found]
        sizes = [len(shard.ids) for shard in self.shards]
        if len(positions) > sum(sizes):  # every id once, then one gather
            starts = np.cumsum([0] + sizes[:-1])
            every = np.array([i for shard in self.shards for i in shard.ids.tolist()], dtype=object)
            ids = every[starts[shards] + positions]
        else:
            ids = np.empty(len(positions), dtype=object)
            for s in np.unique(shards):
                at = shards == s
                ids[at] = self.shards[int(s)].ids.take(positions[at])
        return ids.tolist(), scores[found].tolist(), shards.tolist(), np.cumsum(found.sum(axis=1)).tolist()

    def rows(self, scores: np.ndarray, shard_of: np.ndarray, pos: np.ndarray) -> list[list[tuple[str, float, int]]]:
        """:meth:`columns` as ``(docid, score, shard)`` rows per query, best first."""
        ids, values, shards, ends = self.columns(scores, shard_of, pos)
        flat = list(zip(ids, values, shards))
        return [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]

    @property
    def positions(self) -> dict[str, tuple[int, int]]:
        """``docid -> (shard, position)`` of every live row, built on first use (an index small enough to hold
        its ids in a dict: the trainers' and the teacher's corpora)."""
        if self._positions is None:
            self._positions = {}
            for s, shard in enumerate(self.shards):
                dead = set(shard.deleted.tolist())
                self._positions.update((d, (s, i)) for i, d in enumerate(shard.docids) if i not in dead)
        return self._positions

    def vectors_of(self, docids: list[str]) -> np.ndarray | None:
        """The stored float32 vectors of ``docids``, in order: what encoding them with the index's document
        model gives, without encoding. ``None`` when a docid is not in the index or a shard keeps no exact
        vectors (neither kept vectors nor a Flat index); the caller then encodes."""
        where = [self.positions.get(d) for d in docids]
        if any(w is None for w in where) or not all(self.shards[s].scannable() for s in {w[0] for w in where}):
            return None
        return self.vectors_at(where)

    def vectors_at(self, hits: list[tuple[int, int]]) -> np.ndarray:
        """The stored float32 vectors of ``(shard, position)`` hits, in order, one gather per shard (kept vectors,
        else the Flat index's; faiss raises ``RuntimeError`` for an index that stores neither)."""
        out = np.empty((len(hits), self.dim), dtype=np.float32)
        shard_of = np.array([h[0] for h in hits], dtype=np.int64)
        pos = np.array([h[1] for h in hits], dtype=np.int64)
        for s in np.unique(shard_of):
            at = np.flatnonzero(shard_of == s)
            order = np.argsort(pos[at], kind="stable")
            out[at[order]] = self.shards[int(s)].rows(pos[at][order])
        return out

    def texts(self, shard: int, docids: list[str]) -> dict[str, dict]:
        return self.shards[shard].store.get_many(docids)

    def live_texts(self, docids: list[str]) -> dict[str, tuple[int, dict]]:
        """``docid -> (shard, record)`` for the live row of each id found in any shard (for hits without a
        shard, e.g. BM25's; a replaced passage's old, deleted row is skipped)."""
        found: dict[str, tuple[int, dict]] = {}
        missing = list(docids)
        for s, shard in enumerate(self.shards):
            if not missing:
                break
            for pid, rec in shard.store.get_many(missing, with_pos=True).items():
                pos = rec.pop("pos")
                at = int(np.searchsorted(shard.deleted, pos))
                if at == len(shard.deleted) or shard.deleted[at] != pos:
                    found[pid] = (s, rec)
            missing = [pid for pid in missing if pid not in found]
        return found

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for shard in self.shards:
            if shard._store is not None:
                shard._store.close()


def _params(index: faiss.Index, selector, nprobe=None):
    """faiss search parameters carrying ``selector`` (with the index's own nprobe / efSearch), as a tuple whose
    objects must stay referenced during the search; ``None`` when there is nothing to pass."""
    if selector is None and nprobe is None:
        return None
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        inner = faiss.SearchParametersIVF(nprobe=ivf.nlist if nprobe == "all" else ivf.nprobe,
                                          max_codes=ivf.max_codes)
        if selector is not None:
            inner.sel = selector
        if isinstance(index, faiss.IndexPreTransform):
            return faiss.SearchParametersPreTransform(index_params=inner), inner
        return inner, inner
    if selector is None:
        return None
    if isinstance(index, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    else:
        p = faiss.SearchParameters(sel=selector)
    return p, p


def _pad(a: np.ndarray, width: int, fill) -> np.ndarray:
    if a.shape[1] >= width:
        return a.copy()
    out = np.full((a.shape[0], width), fill, dtype=a.dtype)
    out[:, :a.shape[1]] = a
    return out


def _merge(parts: list[tuple[int, np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``k`` over per-shard results (shard order, then in-shard order, breaks ties)."""
    if not parts:
        raise DretrieverError("the index holds no vectors")
    scores = np.concatenate([d for _, d, _ in parts], axis=1)
    ids = np.concatenate([i for _, _, i in parts], axis=1)
    shard_of = np.concatenate([np.full_like(i, s) for s, _, i in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    order = stable_top_k(scores, k)
    return gather(scores, order), gather(shard_of, order), gather(ids, order)
