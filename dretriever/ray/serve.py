"""``serve --engine ray``: the HTTP API of ``search/server.py`` as a Ray Serve application over a datastore.

The deployments, each a Ray actor (replica) that Serve restarts when it dies:

- ``QueryEncoder``: the index's query encoder (``query_side`` of ``search/dense.py``, encoding with
  ``encode_queries`` and the same batch size, precision and token budget, on the backend ``Retriever.load``
  would pick on the replica's CPU, so the vectors are the single-process server's). Concurrent ``/search``
  queries are gathered by ``@serve.batch`` (``--micro_batch`` queries at most, waiting at most
  ``--micro_batch_wait_ms``); a ``/batch_search`` is encoded in one call.
- ``ShardGroupN`` (``--shard_groups``, default ``min(shards, 2)``): the shards of the datastore split into
  contiguous ranges (:func:`group_shards`); group N opens only its range (``ShardedIndex.open(select=...)``,
  global shard numbers kept in its hits) and returns its exact top-k with text and metadata from its own
  doc stores. It holds the generation it serves and the one before (for requests in flight during a reload).
- ``Ingress``: the FastAPI app of ``create_app`` (``@serve.ingress``, built on the replica around a
  :class:`RayBackend`): it fans the query vectors out to every group and merges their top-k exactly as
  ``ShardedIndex`` merges shards (score, then shard order, then in-shard order: ranges are contiguous and
  concatenated in order, so a stable sort gives the single-process order). Exact indexes (Flat) give the
  single-process answers; with approximate ones each group plans its own search (re-ranking its own top-R, the
  exact filtered scan when *its* matching rows are few), so a group is at least as thorough as one process.

A group that is down (its actor died, or it gives no answer within ``group_timeout_s``) makes the request a 503
naming it ("shard group 1 (shards 2-3) unavailable; retry"); a partial top-k is never returned. A replacement
replica opens the datastore's current generation; if that is newer than the one being served, the ingress
moves every group to it (a reload) and answers from it: every answer names one generation.

With a BM25 index (``bm25/``, ``datastore build --bm25 true``) a ``Lexical`` deployment holds Pyserini's Lucene
searcher (per generation, like the groups), and the ingress serves ``bm25`` (text of each hit: the live row in
the first shard holding it, asked of every group) and ``hybrid`` (the dense and BM25 runs to ``fusion_depth``,
fused by ``search/fusion.py`` as the Retriever does); without one those modes get the Retriever's 400.

With ``--rerank MODEL`` a ``CrossEncoderScorer`` deployment (``ray/rerank.py``) reranks: the groups return the
first stage's top ``rerank_depth`` and the scorer's logits reorder them, as the single-process server does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import numpy as np
from ray import serve

from ..errors import DretrieverError, Unavailable
from ..index import manifest as mf
from ..index.datastore import BM25_DIR
from ..index.filters import parse_filter
from ..index.sharded import ShardedIndex
from ..search.backend import rss_bytes
from ..search.batcher import DEFAULT_MAX_WAIT_MS
from ..search.bm25 import BM25Searcher
from ..search.dense import query_side
from ..search.fusion import fuse
from ..search.rerank import Reranker
from ..search.retriever import (DEFAULT_RERANK_DEPTH, FUSIONS, MODES, Hit, check_queries, check_rerank_depth,
                                make_hits, search_rerank_depth)
from .rerank import CrossEncoderScorer, pair_texts, rerank_rows

log = logging.getLogger(__name__)
APP_NAME = "dretriever"
DEFAULT_GROUPS = 2


def group_shards(num_shards: int, groups: int, group: int) -> list[int]:
    """The shard numbers of ``group``: ``num_shards`` split into ``groups`` contiguous, near-equal ranges
    (recomputed for each generation, whose shard count may differ)."""
    base, extra = divmod(num_shards, groups)
    start = group * base + min(group, extra)
    return list(range(start, start + base + (group < extra)))


def describe(group: int, shards: list[int]) -> str:
    where = "no shards" if not shards else (f"shard {shards[0]}" if len(shards) == 1 else
                                            f"shards {shards[0]}-{shards[-1]}")
    return f"shard group {group} ({where})"


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


@serve.deployment(max_ongoing_requests=64, health_check_period_s=2, health_check_timeout_s=10)
class ShardGroup:
    """One contiguous range of the datastore's shards, opened alone; exact top-k with text over them."""

    def __init__(self, root: str, group: int, groups: int, search_params: dict):
        self.root, self.group, self.groups, self.search_params = Path(root), group, groups, dict(search_params)
        self.held: dict[int, ShardedIndex] = {}  # generation -> index: the one served and the one before
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> ShardedIndex:
        with self._lock:
            index = ShardedIndex.open(self.root, select=lambda n: group_shards(n, self.groups, self.group))
            if index.generation in self.held:
                index.close()
                return self.held[index.generation]
            params = dict(self.search_params)
            rerank = params.pop("rerank", None)
            if params or rerank:
                index.set_search_params(rerank=rerank, **params)
            self.held[index.generation] = index
            for old in sorted(self.held)[:-2]:  # keep the newest two generations
                self.held.pop(old).close()
            return index

    def prepare(self) -> dict:
        """Open the datastore's current generation (keeping the one before); this group's :meth:`info` on it."""
        return self.info(self._open().generation)

    def info(self, generation: int | None = None) -> dict:
        index = self.held[max(self.held) if generation is None else generation]
        return {"group": self.group, "shards": index.numbers, "passages": len(index), "generation": index.generation,
                "generations": sorted(self.held), "pid": os.getpid(), "rss_bytes": rss_bytes(),
                "open_shards": open_shards(self.root)}

    def _search(self, vectors: np.ndarray, k: int, filter: dict | None, generation: int):
        index = self.held.get(generation)
        if index is None:
            return None  # not held (a replacement replica opened a newer generation): the ingress reloads
        out = []
        for row in index.rows(*index.search_arrays(vectors, k, filter=filter)):
            hits = [h.to_dict() for h in make_hits(index, row, True)]
            for h in hits:
                h["shard"] = index.numbers[h["shard"]]
            out.append(hits)
        return out

    async def search(self, vectors: np.ndarray, k: int, filter: dict | None, generation: int):
        """Per query, this group's top-``k`` hits (dicts, best first; global shard numbers), or ``None`` when
        ``generation`` is not held here."""
        return await asyncio.get_running_loop().run_in_executor(None, self._search, vectors, k, filter, generation)

    def _live_texts(self, pids: list[str], generation: int):
        index = self.held.get(generation)
        if index is None:
            return None
        return {pid: (index.numbers[s], rec) for pid, (s, rec) in index.live_texts(pids).items()}

    async def live_texts(self, pids: list[str], generation: int):
        """``pid -> (global shard, record)`` for the live row of each id in this group's shards (first shard
        first), or ``None`` when ``generation`` is not held here."""
        return await asyncio.get_running_loop().run_in_executor(None, self._live_texts, pids, generation)


@serve.deployment(max_ongoing_requests=64, health_check_period_s=2, health_check_timeout_s=10)
class Lexical:
    """The datastore's Lucene BM25 index (Pyserini), for the generation served and the one before."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.held: dict[int, BM25Searcher] = {}
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> int:
        with self._lock:
            manifest = mf.read_manifest(self.root)
            generation = int(manifest.get("generation", 0))
            if generation not in self.held:
                self.held[generation] = BM25Searcher(self.root / (manifest.get("bm25") or BM25_DIR))
                for old in sorted(self.held)[:-2]:
                    self.held.pop(old)
            return generation

    def prepare(self) -> dict:
        return {"generation": self._open(), "pid": os.getpid(), "rss_bytes": rss_bytes()}

    def _search(self, queries: list[str], k: int, generation: int):
        searcher = self.held.get(generation)
        if searcher is None:
            return None
        with self._lock:  # one Lucene search at a time, like the Retriever's lock
            run = searcher.search({str(i): q for i, q in enumerate(queries)}, k)
        return [run[str(i)] for i in range(len(queries))]

    async def search(self, queries: list[str], k: int, generation: int):
        """Per query, BM25's ``(passage id, score)`` top-``k``, or ``None`` when ``generation`` is not held."""
        return await asyncio.get_running_loop().run_in_executor(None, self._search, queries, k, generation)


def open_shards(root: Path) -> list[str]:
    """The shard folders of ``root`` whose files this process has open or mapped (``/proc/self``; Linux)."""
    root = str(Path(root).resolve())
    paths = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                paths.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        with open("/proc/self/maps") as f:
            paths.update(line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6)
    except OSError:
        return []
    found = set()
    for p in paths:
        if p.startswith(root + os.sep):
            first = p[len(root) + 1:].split(os.sep, 1)
            if len(first) == 2:  # a file inside a folder of the datastore: a shard folder
                found.add(first[0])
    return sorted(found)


class RayBackend:
    """The ``search/backend.py`` operations over the deployments' handles (inside the ingress replica)."""

    def __init__(self, config: dict, encoder, groups: list, lexical=None, scorer=None):
        self.root, self.encoder, self.groups, self.lexical = config["root"], encoder, groups, lexical
        self.scorer = scorer  # the CrossEncoderScorer handle (ray/rerank.py), or None
        self.reranker = config.get("reranker") if scorer is not None else None  # read by create_app
        self.rerank_depth = config.get("rerank_depth") if scorer is not None else None
        self.filter_keys, self.model = config["filter_keys"], config["model"]
        self.mode, self.fusion, self.alpha = config["mode"], config["fusion"], config["alpha"]
        self.fusion_depth, self.timeout_s = config["fusion_depth"], config["group_timeout_s"]
        self.modes = list(MODES) if lexical is not None else ["dense"]
        self.generation: int | None = None
        self.layout = [group_shards(len(mf.read_manifest(self.root)["shards"]), len(groups), g)
                       for g in range(len(groups))]
        self._syncing: asyncio.Lock | None = None

    # ------------------------------------------------------------------ calls to the deployments
    async def _call(self, what: str, response):
        """Await a handle call; a replica that is down or silent becomes :class:`Unavailable` naming ``what``."""
        import ray.exceptions as rex
        from ray.serve import exceptions as sex

        try:
            return await asyncio.wait_for(_awaited(response), self.timeout_s)
        except rex.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, DretrieverError):  # a 400 (or 503) raised in the replica: the same answer here
                raise (Unavailable if isinstance(cause, Unavailable) else DretrieverError)(str(cause)) from None
            if isinstance(cause, (rex.RayActorError, sex.RayServeException)):
                raise Unavailable(f"{what} unavailable ({type(cause).__name__}); retry") from None
            raise
        except (rex.RayActorError, sex.BackPressureError, sex.DeploymentUnavailableError,
                sex.ReplicaUnavailableError, sex.RequestCancelledError) as e:
            raise Unavailable(f"{what} unavailable ({type(e).__name__}); retry") from None
        except asyncio.TimeoutError:
            response.cancel()
            raise Unavailable(f"{what} unavailable (no answer within {self.timeout_s:g} s); retry") from None

    async def _all(self, method: str, *args, lexical: tuple | None = None):
        """``method(*args)`` on every group (and, given its arguments, ``lexical``'s); results in that order."""
        calls = [self._call(describe(g, self.layout[g]), getattr(h, method).remote(*args))
                 for g, h in enumerate(self.groups)]
        if lexical is not None:
            calls.append(self._call("BM25 index", getattr(self.lexical, lexical[0]).remote(*lexical[1:])))
        results = await asyncio.gather(*calls, return_exceptions=True)
        for r in results:  # the first failure, in group order (every call has finished)
            if isinstance(r, BaseException):
                raise r
        return results

    async def _sync(self, force: bool = False) -> tuple[int | None, list[dict]]:
        """Move every group (and the BM25 index) to the datastore's current generation; ``(previous, infos)``."""
        if self._syncing is None:
            self._syncing = asyncio.Lock()
        async with self._syncing:
            previous = self.generation
            if previous is not None and not force:
                return previous, []
            for _ in range(3):  # a change published between two groups' opening: open again
                infos = await self._all("prepare", lexical=("prepare",) if self.lexical is not None else None)
                generations = {i["generation"] for i in infos}
                if len(generations) == 1:
                    infos = infos[:len(self.groups)]
                    self.layout = [i["shards"] for i in infos]
                    self.generation = generations.pop()
                    return previous, infos
            raise Unavailable(f"reload: the shard groups opened different generations ({sorted(generations)}) "
                              "while changes were being published; retry")

    # ------------------------------------------------------------------ the backend operations
    def _check(self, queries: list[str], k: int, mode: str | None, filter: dict | None) -> str:
        """The Retriever's checks, in its order, with its messages (a 400 names the field)."""
        check_queries(queries, k)
        mode = mode or self.mode
        if mode not in MODES:
            raise DretrieverError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode != "dense" and self.lexical is None:
            raise DretrieverError(f"mode: {mode!r} needs a BM25 index ({BM25_DIR}/; build the datastore with --bm25)")
        flt = parse_filter(filter, self.filter_keys)
        if flt is not None and mode != "dense":
            raise DretrieverError(f"filter: supported in dense mode only (Lucene holds no metadata columns), "
                                  f"not {mode!r}")
        return mode

    async def _rows(self, queries: list[str], vectors, k: int, mode: str, filter: dict | None, generation: int):
        """Per query, the hits (dicts) of ``mode`` on ``generation``; ``None`` when a part does not hold it."""
        if mode == "dense":
            parts = await self._all("search", vectors, k, filter, generation)
            return None if any(p is None for p in parts) else merge(parts, k)
        depth = k if mode == "bm25" else max(k, self.fusion_depth)
        if mode == "bm25":
            sparse = await self._call("BM25 index", self.lexical.search.remote(queries, depth, generation))
            dense = [[] for _ in queries]
        else:
            *parts, sparse = await self._all("search", vectors, depth, None, generation,
                                             lexical=("search", queries, depth, generation))
            if any(p is None for p in parts):
                return None
            dense = merge(parts, depth)
        if sparse is None:
            return None
        rows = []
        for d, s in zip(dense, sparse):
            if mode == "bm25":
                rows.append([(pid, score) for pid, score in s])
            else:
                rows.append(fuse({"q": [(h["id"], h["score"]) for h in d]}, {"q": s}, self.fusion, self.alpha,
                                 k)["q"])
        by_id = [{h["id"]: h for h in d} for d in dense]
        missing = sorted({pid for row, known in zip(rows, by_id) for pid, _ in row if pid not in known})
        found: dict = {}
        if missing:  # BM25-only hits: the live row in the first shard holding it (groups in shard order)
            answers = await self._all("live_texts", missing, generation)
            if any(a is None for a in answers):
                return None
            for answer in reversed(answers):
                found.update(answer)
        out = []
        for row, known in zip(rows, by_id):
            hits = []
            for pid, score in row:
                if pid in known:
                    hits.append({**known[pid], "score": score})
                else:
                    sh, rec = found.get(pid, (None, {"title": "", "text": "", "metadata": {}}))
                    hits.append(Hit(pid, str(rec["metadata"].get("doc_id", pid)), score, rec["title"], rec["text"],
                                    rec["metadata"], sh).to_dict())
            out.append(hits)
        return out

    async def _answer(self, queries: list[str], vectors, k: int, mode: str, filter: dict | None):
        await self._sync()
        for _ in range(2):
            generation = self.generation
            rows = await self._rows(queries, vectors, k, mode, filter, generation)
            if rows is not None:
                return rows, generation
            await self._sync(force=generation == self.generation)  # a replacement opened a newer generation
        raise Unavailable("the shard groups are changing generation; retry")

    async def _reranked(self, queries: list[str], rows: list[list[dict]], k: int) -> list[list[dict]]:
        """The first stage's ``rows`` reordered by the cross-encoder (one scorer call per query, gathered into
        the scorer's batches), the best ``k`` kept."""
        scores = await asyncio.gather(*[self._call("reranker", self.scorer.score_one.remote((q, pair_texts(row))))
                                        for q, row in zip(queries, rows)])
        return rerank_rows(rows, scores, k)

    async def search(self, query: str, k: int, mode: str | None, filter: dict | None, rerank: bool = False,
                     rerank_depth: int | None = None):
        mode = self._check([query], k, mode, filter)
        depth = search_rerank_depth(rerank, rerank_depth, k, self.scorer is not None, self.rerank_depth)
        vectors = None
        if mode != "bm25":
            vector = await self._call("query encoder", self.encoder.encode_one.remote(query))
            vectors = np.asarray(vector, dtype=np.float32)[None, :]
        rows, generation = await self._answer([query], vectors, depth or k, mode, filter)
        if depth:
            rows = await self._reranked([query], rows, k)
        return rows[0], generation

    async def batch_search(self, queries: list[str], k: int, mode: str | None, filter: dict | None,
                           rerank: bool = False, rerank_depth: int | None = None):
        mode = self._check(queries, k, mode, filter)
        depth = search_rerank_depth(rerank, rerank_depth, k, self.scorer is not None, self.rerank_depth)
        vectors = None
        if mode != "bm25":
            vectors = np.asarray(await self._call("query encoder", self.encoder.encode_many.remote(queries)),
                                 dtype=np.float32)
        rows, generation = await self._answer(queries, vectors, depth or k, mode, filter)
        if depth:
            rows = await self._reranked(queries, rows, k)
        return rows, generation

    async def rerank(self, query: str, texts: list[str]) -> list[float]:
        return await self._call("reranker", self.scorer.score_one.remote((query, texts)))

    async def health(self) -> dict:
        """The groups' state, answered only once every deployment a search needs answers: the proxy routes to the
        ingress as soon as it is up, while the query encoder (which measures its fastest backend on a CPU it has
        not seen, about a minute: ``autotune.py``) or the reranker may still be starting. Until then a 503, so
        that a client waiting for ``/health`` does not send its searches to a half-started application."""
        await self._sync()
        generation = self.generation
        starting = [self._call("query encoder", self.encoder.stats.remote())]
        if self.scorer is not None:
            starting.append(self._call("reranker", self.scorer.stats.remote()))
        await asyncio.gather(*starting)
        infos = await self._all("info", generation)
        return {"passages": sum(i["passages"] for i in infos), "shards": sum(len(i["shards"]) for i in infos),
                "modes": self.modes, "model": self.model, "generation": generation, "details": infos}

    async def reload(self) -> tuple[int, int, int]:
        await self._sync()
        previous, infos = await self._sync(force=True)
        return self.generation, previous, sum(i["passages"] for i in infos)


async def _awaited(response):
    return await response


def merge(parts: list[list[list[dict]]], k: int) -> list[list[dict]]:
    """Per query, the exact top-``k`` of the groups' hits: by score, ties in group order then in each group's
    order (= shard order, then in-shard order: ``index/sharded.py``'s ``_merge``)."""
    rows = []
    for q in range(len(parts[0])):
        hits = [h for part in parts for h in part[q]]
        rows.append(sorted(hits, key=lambda h: -h["score"])[:k])  # stable; scores are float32 values
    return rows


@serve.ingress()
class Ingress:
    """The HTTP API (``create_app``) over the encoder and shard-group handles."""

    def __init__(self, config: dict, encoder, lexical, scorer, *groups):
        self.config = config
        self.backend = RayBackend(config, encoder, list(groups), lexical, scorer)

    def __serve_build_asgi_app__(self):
        from ..search.server import create_app

        c = self.config
        return create_app(self.backend, name=c["name"], api_key=c["api_key"], max_k=c["max_k"],
                          max_batch=c["max_batch"], max_query_chars=c["max_query_chars"],
                          max_body_bytes=c["max_body_bytes"])


def application(root: str | Path, *, name: str | None = None, api_key: str | None = None, max_k: int = 1000,
                max_batch: int = 64, max_query_chars: int = 2000, max_body_bytes: int = 1 << 20,
                shard_groups: int = 0, mode: str = "dense", fusion: str = "rrf", alpha: float = 0.5,
                fusion_depth: int = 100, model: str | None = None, precision: str = "auto", batch_size: int = 128,
                max_tokens: int | str | None = "auto", backend: str | None = None, micro_batch: int = 32,
                micro_batch_wait_ms: float = DEFAULT_MAX_WAIT_MS, search_params: dict | None = None,
                group_timeout_s: float = 30.0, num_cpus: dict | None = None, rerank: str | None = None,
                rerank_depth: int = DEFAULT_RERANK_DEPTH, rerank_max_tokens: int | str | None = "auto",
                rerank_max_length: int | None = None, rerank_backend: str = "torch"):
    """The Serve application for the datastore at ``root`` (bind it with :func:`run`). ``shard_groups`` 0: the
    default, ``min(shards, 2)``; ``mode``: the default mode, ``fusion``/``alpha``/``fusion_depth``: hybrid's, as
    in :class:`Retriever`; ``rerank``: a cross-encoder for a ``CrossEncoderScorer`` deployment (loaded here
    first, so a bad model fails before anything deploys), with ``Retriever.load``'s rerank settings;
    ``num_cpus``: logical CPUs per replica of ``encoder``, ``group``, ``lexical``, ``reranker``, ``ingress``."""
    root = Path(root).resolve()
    manifest = mf.read_manifest(root)
    num_shards = len(manifest["shards"])
    if shard_groups < 0:
        raise DretrieverError(f"shard_groups: expected a positive number (0: default), got {shard_groups}")
    groups = max(1, min(shard_groups or DEFAULT_GROUPS, num_shards))
    has_bm25 = (root / (manifest.get("bm25") or BM25_DIR)).is_dir()
    if mode not in MODES or (mode != "dense" and not has_bm25):
        raise DretrieverError(f"mode: {mode!r} is not one of {MODES} or needs a BM25 index ({BM25_DIR}/)")
    if fusion not in FUSIONS or not 0.0 <= alpha <= 1.0:
        raise DretrieverError(f"fusion: expected one of {FUSIONS} with alpha in [0, 1], got {fusion!r}, {alpha}")
    cpus = {"encoder": 0.5, "group": 0.25, "lexical": 0.25, "reranker": 0.5, "ingress": 0.25, **(num_cpus or {})}
    scorer, reranker = None, None
    if rerank is not None:
        check_rerank_depth(rerank_depth)
        settings = {"max_length": rerank_max_length, "max_tokens": rerank_max_tokens, "precision": precision,
                    "backend": rerank_backend}
        reranker = Reranker.load(rerank, **settings).name  # a bad model: an error here, not at a request
        scorer = CrossEncoderScorer.options(ray_actor_options={"num_cpus": cpus["reranker"]}).bind(
            str(rerank), settings, micro_batch, micro_batch_wait_ms)
    encoder = QueryEncoder.options(ray_actor_options={"num_cpus": cpus["encoder"]}).bind(
        str(root), model, {"batch_size": batch_size, "precision": precision, "max_tokens": max_tokens,
                           "backend": backend}, micro_batch, micro_batch_wait_ms)
    group_apps = [ShardGroup.options(name=f"ShardGroup{g}", ray_actor_options={"num_cpus": cpus["group"]}).bind(
        str(root), g, groups, search_params or {}) for g in range(groups)]
    config = {"root": str(root), "name": name or root.name, "api_key": api_key, "max_k": max_k,
              "max_batch": max_batch, "max_query_chars": max_query_chars, "max_body_bytes": max_body_bytes,
              "filter_keys": manifest.get("filter_keys") or {}, "mode": mode, "fusion": fusion, "alpha": alpha,
              "fusion_depth": fusion_depth, "model": str((manifest.get("encoder") or {}).get("model")),
              "group_timeout_s": group_timeout_s, "reranker": reranker, "rerank_depth": rerank_depth}
    lexical = Lexical.options(ray_actor_options={"num_cpus": cpus["lexical"]}).bind(str(root)) if has_bm25 else None
    return serve.deployment(Ingress, max_ongoing_requests=512, ray_actor_options={"num_cpus": cpus["ingress"]}).bind(
        config, encoder, lexical, scorer, *group_apps)


def run(app, host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME, log_level: str = "info"):
    """Start Serve's HTTP proxy on ``host:port`` (in the connected cluster) and deploy ``app`` at ``/``; returns
    once it is running. In a cluster where Serve already runs, its proxy keeps the address it was started with.
    ``log_level`` below info also turns off the replicas' per-request access log."""
    import httpx

    serve.start(http_options={"host": host, "port": port})
    quiet = log_level.upper() not in ("DEBUG", "INFO")
    handle = serve.run(app, name=name, route_prefix="/", blocking=False,
                       logging_config={"log_level": log_level.upper(), "enable_access_log": not quiet})
    probe = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/-/healthz"
    try:
        httpx.get(probe, timeout=10)
    except httpx.HTTPError:
        log.warning("nothing answers %s: Serve in this cluster may have been started with another HTTP address "
                    "(its proxy keeps the first one; `serve shutdown` to change it)", probe)
    return handle
