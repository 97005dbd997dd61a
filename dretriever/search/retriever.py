"""The retrieval API for RAG: ``Retriever.load(index_dir).search(query, k)`` -> hits carrying their text.

The query encoder is configured from the index's manifest (``search/dense.py``). Modes:

- ``dense``: batched query encoding, then every shard searched and merged exactly (``ShardedIndex``);
- ``bm25``: Pyserini's Lucene over the passages (``OUTPUT/bm25``, built by ``datastore build --bm25``);
- ``hybrid``: both runs to ``fusion_depth`` fused by reciprocal rank (``rrf``) or min-max score
  interpolation (``interpolation``, ``alpha`` weighs the dense run).

Calls are serialised by a lock, so one Retriever can serve concurrent threads (the HTTP server).

A Retriever serves one generation of a living datastore (``retriever.generation``); ``reopen()`` returns a
Retriever of the datastore's current generation that shares the loaded query encoder (the server's hot
reload). ``filter=`` (dense mode) restricts hits to passages whose metadata match (``index/filters.py``).

Reranking, a second stage over any of the three: ``Retriever.load(root, rerank=MODEL, rerank_depth=100)`` loads a
cross-encoder (``search/rerank.py``); each search then takes the first stage's top ``rerank_depth`` (fewer when
the first stage has fewer), scores every (query, passage) pair of the batch in one token-budget pass, and returns
the top ``k`` of them by the cross-encoder's raw logit: ``hit.score`` is that logit and ``hit.first_stage_score``
the first stage's score (``None`` on a hit that was not reranked). ``k`` may not exceed the depth.
``rerank=False`` per call searches with the first stage alone.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DretrieverError
from ..heap import gc_paused
from ..index.datastore import BM25_DIR
from ..index.sharded import ShardedIndex
from .bm25 import BM25Searcher
from .dense import DenseSearcher, query_side
from .fusion import fuse
from .rerank import Reranker, passage_text, reranked_order
from .types import Run

MODES = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "interpolation")
DEFAULT_RERANK_DEPTH = 100


@dataclass(slots=True)
class Hit:
    id: str  # passage id (``doc#chunk`` in a datastore)
    doc_id: str  # the source document's id
    score: float
    title: str = ""
    text: str = ""
    metadata: dict = field(default_factory=dict)
    shard: int | None = None
    first_stage_score: float | None = None  # set when reranked: the first stage's score (``score``: the reranker's)

    def to_dict(self) -> dict:
        return asdict(self)


def check_queries(queries, k) -> None:
    if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
        raise DretrieverError(f"queries: expected a list of strings, got {type(queries).__name__}")
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise DretrieverError(f"queries[{i}]: expected a non-empty string, got {q!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DretrieverError(f"k: expected a positive integer, got {k!r}")


def check_rerank_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise DretrieverError(f"rerank_depth: expected a positive integer, got {depth!r}")
    return depth


def search_rerank_depth(rerank: bool | None, depth: int | None, k: int, loaded: bool, default_depth: int) -> int:
    """The rerank depth of a search (0: the first stage alone), checked before any work: ``rerank`` (None:
    whether a reranker is ``loaded``), ``depth`` (None: ``default_depth``) and ``k`` no larger than it."""
    if rerank is None:
        rerank = loaded
    if not isinstance(rerank, bool):
        raise DretrieverError(f"rerank: expected true or false, got {rerank!r}")
    if not rerank:
        return 0
    if not loaded:
        raise DretrieverError("rerank: no reranker is loaded (Retriever.load(..., rerank=MODEL); "
                              "dretriever serve --rerank MODEL)")
    depth = check_rerank_depth(default_depth if depth is None else depth)
    if k > depth:
        raise DretrieverError(f"k: {k} is more than rerank_depth {depth}; a reranked search returns at most "
                              "the reranked hits (raise rerank_depth or ask for fewer)")
    return depth


class Retriever:
    def __init__(self, dense: DenseSearcher, bm25: BM25Searcher | None = None, mode: str = "dense",
                 fusion: str = "rrf", alpha: float = 0.5, fusion_depth: int = 100, reranker: Reranker | None = None,
                 rerank_depth: int = DEFAULT_RERANK_DEPTH):
        if fusion not in FUSIONS:
            raise DretrieverError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
        if not 0.0 <= alpha <= 1.0:
            raise DretrieverError(f"alpha: must lie in [0, 1], got {alpha}")
        self.dense, self.bm25 = dense, bm25
        self.fusion, self.alpha, self.fusion_depth = fusion, alpha, fusion_depth
        self.mode = self._check_mode(mode)
        self.reranker, self.rerank_depth = reranker, check_rerank_depth(rerank_depth)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, root: str | Path, mode: str = "dense", model: str | None = None, fusion: str = "rrf",
             alpha: float = 0.5, fusion_depth: int = 100, verify: bool = False, batch_size: int = 128,
             precision: str = "auto", backend: str | None = None,
             max_tokens: int | str | None = "auto", encoder=None, rerank: str | Path | Reranker | None = None,
             rerank_depth: int = DEFAULT_RERANK_DEPTH, rerank_max_tokens: int | str | None = "auto",
             rerank_max_length: int | None = None, rerank_backend: str = "torch") -> "Retriever":
        """Open the index at ``root`` (and its Lucene index, ``bm25/`` or the generation's, when present).
        Queries are encoded with ``backend``, by default the fastest for this CPU at ``precision``
        (:mod:`dretriever.autotune`: measured once, cached; an ``onnx-int8`` index keeps its own), or by
        ``encoder``, an already loaded one, in batches of at most ``batch_size`` queries and ``max_tokens`` padded
        tokens (``auto``: the budget measured with the backend). ``rerank``: a
        CrossEncoder folder or hub id (or a loaded :class:`Reranker`) reranking each search's top ``rerank_depth``
        in batches of ``rerank_max_tokens`` padded tokens, pairs truncated to ``rerank_max_length`` tokens
        (default: the model's), at ``precision``, on ``rerank_backend`` (torch | onnx | openvino); loaded first,
        so a bad model fails before the index opens."""
        root = Path(root)
        check_rerank_depth(rerank_depth)
        reranker = rerank
        if rerank is not None and not isinstance(rerank, Reranker):
            reranker = Reranker.load(rerank, max_length=rerank_max_length, max_tokens=rerank_max_tokens,
                                     precision=precision, backend=rerank_backend)
        index = ShardedIndex.open(root, verify=verify)
        if encoder is None:
            encoder, max_tokens = query_side(index.manifest, root, model, backend, precision, max_tokens)
        dense = DenseSearcher(index, encoder, batch_size=batch_size, precision=precision, max_tokens=max_tokens)
        lucene = root / (index.manifest.get("bm25") or BM25_DIR)
        bm25 = BM25Searcher(lucene) if lucene.is_dir() else None
        return cls(dense, bm25, mode, fusion, alpha, fusion_depth, reranker, rerank_depth)

    def reopen(self) -> "Retriever":
        """This datastore's current generation, with the same settings and the already loaded query encoder."""
        new = Retriever.load(self.index.root, self.mode,
                             fusion=self.fusion, alpha=self.alpha, fusion_depth=self.fusion_depth,
                             batch_size=self.dense.batch_size, precision=self.dense.precision,
                             max_tokens=self.dense.max_tokens, encoder=self.dense.encoder, rerank=self.reranker,
                             rerank_depth=self.rerank_depth)
        new.index.set_search_params(rerank=self.index.rerank or None, **self.index.search_params)
        new.index.exact_limit = self.index.exact_limit
        return new

    @property
    def generation(self) -> int:
        return self.index.generation

    @property
    def filter_keys(self) -> dict[str, str]:
        return self.index.filter_keys

    @property
    def index(self) -> ShardedIndex:
        return self.dense.index

    @property
    def modes(self) -> list[str]:
        return list(MODES) if self.bm25 is not None else ["dense"]

    def _check_mode(self, mode: str | None) -> str:
        mode = mode or self.mode
        if mode not in MODES:
            raise DretrieverError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode != "dense" and self.bm25 is None:
            raise DretrieverError(f"mode: {mode!r} needs a BM25 index ({BM25_DIR}/; build the datastore with --bm25)")
        return mode

    def search(self, query: str, k: int = 10, mode: str | None = None, with_text: bool = True,
               filter: dict | None = None, rerank: bool | None = None, rerank_depth: int | None = None) -> list[Hit]:
        return self.batch_search([query], k, mode, with_text, filter, rerank, rerank_depth)[0]

    def batch_search(self, queries: list[str], k: int = 10, mode: str | None = None,
                     with_text: bool = True, filter: dict | None = None, rerank: bool | None = None,
                     rerank_depth: int | None = None) -> list[list[Hit]]:
        """Top-``k`` hits per query, best first; ``with_text=False`` skips the doc-store lookup (not when
        reranking: the cross-encoder reads the texts).

        ``filter`` (dense mode): e.g. ``{"year": {"gte": 2015}, "source": {"in": ["pubmed", "pmc"]}}``; the
        hits are the true top-``k`` among the matching passages (exact with Flat).
        ``rerank`` (default: whether a reranker is loaded): rerank the first stage's top ``rerank_depth``
        (default: the one given at load) and keep the top ``k`` of them.
        """
        check_queries(queries, k)
        mode = self._check_mode(mode)
        depth = self._check_rerank(rerank, rerank_depth, k)
        if depth:
            first = self.batch_search(queries, depth, mode, True, filter, rerank=False)
            return self._rerank(queries, first, k)
        flt = self.index.parse_filter(filter)  # validated before any work: filter.KEY names the fault
        if flt is not None and mode != "dense":
            raise DretrieverError(f"filter: supported in dense mode only (Lucene holds no metadata columns), "
                                  f"not {mode!r}")
        with self._lock, gc_paused():
            if mode == "dense" and not with_text:
                return self._dense_hits(queries, k, flt)
            if mode == "dense":
                rows = self._dense(queries, k, flt)
            elif mode == "bm25":
                rows = [[(pid, s, None) for pid, s in hits] for hits in self._run(self.bm25, queries, k)]
            else:
                rows = self._hybrid(queries, k)
            return [self._hits(row, with_text) for row in rows]

    def run(self, queries: dict[str, str], k: int = 1000, mode: str | None = None,
            by_document: bool = True, rerank: bool | None = None, rerank_depth: int | None = None) -> Run:
        """A TREC-style run; ``by_document`` keeps each document's best passage under its document id."""
        qids = list(queries)
        out: Run = {}
        found = self.batch_search([queries[q] for q in qids], k, mode, by_document, None, rerank, rerank_depth)
        for qid, hits in zip(qids, found):
            seen, row = set(), []
            for h in hits:
                key = h.doc_id if by_document else h.id
                if key not in seen:
                    seen.add(key)
                    row.append((key, h.score))
            out[qid] = row
        return out

    # ------------------------------------------------------------------ internals
    def _check_rerank(self, rerank: bool | None, depth: int | None, k: int) -> int:
        return search_rerank_depth(rerank, depth, k, self.reranker is not None, self.rerank_depth)

    def _rerank(self, queries: list[str], first: list[list[Hit]], k: int) -> list[list[Hit]]:
        """Each query's first-stage hits scored by the cross-encoder (one pass over every pair), best ``k`` kept."""
        scores = self.reranker.score_lists(queries, [[passage_text(h.title, h.text) for h in row] for row in first])
        out = []
        for row, s in zip(first, scores):
            hits = []
            for i in reranked_order(s)[:k]:
                h = row[i]
                hits.append(Hit(h.id, h.doc_id, float(s[i]), h.title, h.text, h.metadata, h.shard, h.score))
            out.append(hits)
        return out

    def _dense(self, queries: list[str], k: int, flt=None) -> list[list[tuple[str, float, int]]]:
        return self.index.rows(*self.index.search_arrays(self.dense.encode(queries), k, filter=flt))

    def _dense_hits(self, queries: list[str], k: int, flt=None) -> list[list[Hit]]:
        """Dense hits without text, made straight from the index's columns (no per-hit row tuple: at k=1000 the
        hits are most of what a call builds)."""
        ids, scores, shards, ends = self.index.columns(*self.index.search_arrays(self.dense.encode(queries), k,
                                                                                 filter=flt))
        hits = [Hit(i, i, s, "", "", {}, sh) for i, s, sh in zip(ids, scores, shards)]
        return [hits[a:b] for a, b in zip([0] + ends[:-1], ends)]

    @staticmethod
    def _run(searcher: BM25Searcher, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        run = searcher.search({str(i): q for i, q in enumerate(queries)}, k)
        return [run[str(i)] for i in range(len(queries))]

    def _hybrid(self, queries: list[str], k: int) -> list[list[tuple[str, float, int | None]]]:
        depth = max(k, self.fusion_depth)
        dense = self._dense(queries, depth)
        sparse = self._run(self.bm25, queries, depth)
        rows = []
        for d, s in zip(dense, sparse):
            shard_of = {pid: sh for pid, _, sh in d}
            fused = fuse({"q": [(pid, sc) for pid, sc, _ in d]}, {"q": s}, self.fusion, self.alpha, k)["q"]
            rows.append([(pid, sc, shard_of.get(pid)) for pid, sc in fused])
        return rows

    def _hits(self, row: list[tuple[str, float, int | None]], with_text: bool) -> list[Hit]:
        return make_hits(self.index, row, with_text)


def make_hits(index: ShardedIndex, row: list[tuple[str, float, int | None]], with_text: bool) -> list[Hit]:
    """Hits for ``(passage id, score, shard)`` rows, with title, text and metadata from ``index``'s doc stores
    (a Ray shard group calls it with its own shards)."""
    if not with_text:
        return [Hit(pid, pid, score, "", "", {}, sh) for pid, score, sh in row]
    found: dict[str, tuple[int, dict]] = {}
    by_shard: dict[int, list[str]] = {}
    for pid, _, sh in row:
        if sh is not None:
            by_shard.setdefault(sh, []).append(pid)
    for sh, pids in by_shard.items():
        found.update((pid, (sh, rec)) for pid, rec in index.texts(sh, pids).items())
    missing = [pid for pid, _, _ in row if pid not in found]  # BM25-only hits: the live row in any shard
    if missing:
        found.update(index.live_texts(missing))
    hits = []
    for pid, score, _ in row:
        sh, rec = found.get(pid, (None, {"title": "", "text": "", "metadata": {}}))
        hits.append(Hit(pid, str(rec["metadata"].get("doc_id", pid)), score, rec["title"], rec["text"],
                        rec["metadata"], sh))
    return hits
