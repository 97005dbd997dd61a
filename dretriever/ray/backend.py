"""The Ray app's search backend: ``search/backend.py``'s operations over the deployments' handles.

It runs inside the ingress replica: the query vectors go out to every shard group and their top-k are merged
(``ray/shards.py``); ``bm25`` and ``hybrid`` add the ``Lexical`` deployment and fuse as the Retriever does
(``search/fusion.py``); with a reranker the ``CrossEncoderScorer`` (``ray/rerank.py``) reorders the first stage.

A deployment that is down (its actor died, or it gives no answer within ``group_timeout_s``) makes the request a
503 naming it ("shard group 1 (shards 2-3) unavailable; retry"); a partial top-k is never returned. A replacement
replica opens the datastore's current generation; if that is newer than the one being served, every group is
moved to it (a reload) and the answer comes from it: every answer names one generation.
"""

from __future__ import annotations

import asyncio

import numpy as np

from ..errors import DretrieverError, Unavailable
from ..index import manifest as mf
from ..index.datastore import BM25_DIR
from ..index.filters import parse_filter
from ..search.fusion import fuse
from ..search.retriever import MODES, Hit, check_queries, search_rerank_depth
from .rerank import pair_texts, rerank_rows
from .shards import describe, group_shards, merge


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
