"""``serve --engine ray``: the HTTP API of ``search/server.py`` as a Ray Serve application over a datastore.

Three kinds of deployment, each a Ray actor (replica) that Serve restarts when it dies:

- ``QueryEncoder``: the index's query encoder (``encoder_for_index``, encoding with ``encode_queries`` and the
  same batch size, precision and token budget as ``search/dense.py``, so the vectors are the single-process
  server's). Concurrent ``/search`` queries are gathered by ``@serve.batch`` (``--micro_batch`` queries at most,
  waiting at most ``--micro_batch_wait_ms``); a ``/batch_search`` is encoded in one call.
- ``ShardGroupN`` (``--shard_groups``, default ``min(shards, 2)``): the shards of the datastore split into
  contiguous ranges (:func:`group_shards`); group N opens only its range (``ShardedIndex.open(select=...)``,
  global shard numbers kept in its hits) and returns its exact top-k with text and metadata from its own
  doc stores. It holds the generation it serves and the one before (for requests in flight during a reload).
- ``Ingress``: the FastAPI app of ``create_app`` (``@serve.ingress``, built on the replica around a
  :class:`RayBackend`): it fans the query vectors out to every group and merges their top-k exactly as
  ``ShardedIndex`` merges shards (score, then shard order, then in-shard order: ranges are contiguous and
  concatenated in order, so a stable sort gives the single-process order).

A group that is down (its actor died, or it gives no answer within ``group_timeout_s``) makes the request a 503
naming it ("shard group 1 (shards 2-3) unavailable; retry"); a partial top-k is never returned. A replacement
replica opens the datastore's current generation; if that is newer than the one being served, the ingress
moves every group to it (a reload) and answers from it: every answer names one generation.

Dense mode only (filters included): BM25 and hybrid are refused with a 400 (serve with ``--engine local``).
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
from ..search.dense import encoder_for_index
from ..search.retriever import MODES, check_queries, make_hits

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
        manifest = mf.read_manifest(root)
        self.encoder = encoder_for_index(manifest, root, model, settings.get("backend"))
        self.settings = {k: v for k, v in settings.items() if k != "backend"}  # batch_size, precision, max_tokens
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
        scores, shard_of, pos = index.search_arrays(vectors, k, filter=filter)
        out = []
        for srow, shrow, prow in zip(scores, shard_of, pos):
            row = [(index.docid(int(sh), int(p)), float(s), int(sh)) for s, sh, p in zip(srow, shrow, prow) if p >= 0]
            hits = [h.to_dict() for h in make_hits(index, row, True)]
            for h in hits:
                h["shard"] = index.numbers[h["shard"]]
            out.append(hits)
        return out

    async def search(self, vectors: np.ndarray, k: int, filter: dict | None, generation: int):
        """Per query, this group's top-``k`` hits (dicts, best first; global shard numbers), or ``None`` when
        ``generation`` is not held here."""
        return await asyncio.get_running_loop().run_in_executor(None, self._search, vectors, k, filter, generation)


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

    def __init__(self, root: str, encoder, groups: list, filter_keys: dict, modes: list[str], model: str,
                 has_bm25: bool, timeout_s: float):
        self.root, self.encoder, self.groups = root, encoder, groups
        self.filter_keys, self.modes, self.model, self.has_bm25 = filter_keys, modes, model, has_bm25
        self.timeout_s = timeout_s
        self.generation: int | None = None
        self.layout = [group_shards(len(mf.read_manifest(root)["shards"]), len(groups), g)
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
            if isinstance(cause, DretrieverError):
                raise type(cause)(str(cause)) from None
            if isinstance(cause, (rex.RayActorError, sex.RayServeException)):
                raise Unavailable(f"{what} unavailable ({type(cause).__name__}); retry") from None
            raise
        except (rex.RayActorError, sex.BackPressureError, sex.DeploymentUnavailableError,
                sex.ReplicaUnavailableError, sex.RequestCancelledError) as e:
            raise Unavailable(f"{what} unavailable ({type(e).__name__}); retry") from None
        except asyncio.TimeoutError:
            response.cancel()
            raise Unavailable(f"{what} unavailable (no answer within {self.timeout_s:g} s); retry") from None

    async def _all_groups(self, method: str, *args):
        calls = [self._call(describe(g, self.layout[g]), getattr(h, method).remote(*args))
                 for g, h in enumerate(self.groups)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for r in results:  # the first failure, in group order (every call has finished)
            if isinstance(r, BaseException):
                raise r
        return results

    async def _sync(self, force: bool = False) -> tuple[int | None, list[dict]]:
        """Move every group to the datastore's current generation; ``(previous, infos)``."""
        if self._syncing is None:
            self._syncing = asyncio.Lock()
        async with self._syncing:
            previous = self.generation
            if previous is not None and not force:
                return previous, []
            for _ in range(3):  # a change published between two groups' opening: open again
                infos = await self._all_groups("prepare")
                generations = {i["generation"] for i in infos}
                if len(generations) == 1:
                    self.layout = [i["shards"] for i in infos]
                    self.generation = generations.pop()
                    return previous, infos
            raise Unavailable(f"reload: the shard groups opened different generations ({sorted(generations)}) "
                              "while changes were being published; retry")

    # ------------------------------------------------------------------ the backend operations
    def _check(self, queries: list[str], k: int, mode: str | None, filter: dict | None) -> None:
        check_queries(queries, k)
        mode = mode or "dense"
        if mode not in MODES:
            raise DretrieverError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode != "dense":
            if not self.has_bm25:
                raise DretrieverError(f"mode: {mode!r} needs a BM25 index ({BM25_DIR}/; build the datastore "
                                      "with --bm25)")
            raise DretrieverError(f"mode: {mode!r} is not served by --engine ray (serve with --engine local "
                                  "for BM25 and hybrid)")
        parse_filter(filter, self.filter_keys)

    async def _fan_out(self, vectors: np.ndarray, k: int, filter: dict | None):
        await self._sync()
        for _ in range(2):
            generation = self.generation
            parts = await self._all_groups("search", vectors, k, filter, generation)
            if all(p is not None for p in parts):
                return merge(parts, k), generation
            await self._sync(force=generation == self.generation)  # a replacement opened a newer generation
        raise Unavailable("the shard groups are changing generation; retry")

    async def search(self, query: str, k: int, mode: str | None, filter: dict | None):
        self._check([query], k, mode, filter)
        vector = await self._call("query encoder", self.encoder.encode_one.remote(query))
        rows, generation = await self._fan_out(np.asarray(vector, dtype=np.float32)[None, :], k, filter)
        return rows[0], generation

    async def batch_search(self, queries: list[str], k: int, mode: str | None, filter: dict | None):
        self._check(queries, k, mode, filter)
        vectors = await self._call("query encoder", self.encoder.encode_many.remote(queries))
        return await self._fan_out(np.asarray(vectors, dtype=np.float32), k, filter)

    async def health(self) -> dict:
        await self._sync()
        generation = self.generation
        infos = await self._all_groups("info", generation)
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

    def __init__(self, config: dict, encoder, *groups):
        self.config = config
        self.backend = RayBackend(config["root"], encoder, list(groups), config["filter_keys"], config["modes"],
                                  config["model"], config["has_bm25"], config["group_timeout_s"])

    def __serve_build_asgi_app__(self):
        from ..search.server import create_app

        c = self.config
        return create_app(self.backend, name=c["name"], api_key=c["api_key"], max_k=c["max_k"],
                          max_batch=c["max_batch"], max_query_chars=c["max_query_chars"],
                          max_body_bytes=c["max_body_bytes"])


def application(root: str | Path, *, name: str | None = None, api_key: str | None = None, max_k: int = 1000,
                max_batch: int = 64, max_query_chars: int = 2000, max_body_bytes: int = 1 << 20,
                shard_groups: int = 0, model: str | None = None, precision: str = "auto", batch_size: int = 128,
                max_tokens: int | str | None = "auto", backend: str | None = None, micro_batch: int = 32,
                micro_batch_wait_ms: float = 2.0, search_params: dict | None = None, group_timeout_s: float = 30.0,
                num_cpus: dict | None = None):
    """The Serve application for the datastore at ``root`` (bind it with :func:`run`). ``shard_groups`` 0: the
    default, ``min(shards, 2)``; ``num_cpus``: logical CPUs per replica of ``encoder``, ``group``, ``ingress``."""
    root = Path(root).resolve()
    manifest = mf.read_manifest(root)
    num_shards = len(manifest["shards"])
    if shard_groups < 0:
        raise DretrieverError(f"shard_groups: expected a positive number (0: default), got {shard_groups}")
    groups = max(1, min(shard_groups or DEFAULT_GROUPS, num_shards))
    has_bm25 = (root / (manifest.get("bm25") or BM25_DIR)).is_dir()
    cpus = {"encoder": 0.5, "group": 0.25, "ingress": 0.25, **(num_cpus or {})}
    encoder = QueryEncoder.options(ray_actor_options={"num_cpus": cpus["encoder"]}).bind(
        str(root), model, {"batch_size": batch_size, "precision": precision, "max_tokens": max_tokens,
                           "backend": backend}, micro_batch, micro_batch_wait_ms)
    group_apps = [ShardGroup.options(name=f"ShardGroup{g}", ray_actor_options={"num_cpus": cpus["group"]}).bind(
        str(root), g, groups, search_params or {}) for g in range(groups)]
    config = {"root": str(root), "name": name or root.name, "api_key": api_key, "max_k": max_k,
              "max_batch": max_batch, "max_query_chars": max_query_chars, "max_body_bytes": max_body_bytes,
              "filter_keys": manifest.get("filter_keys") or {}, "modes": ["dense"],
              "model": str((manifest.get("encoder") or {}).get("model")), "has_bm25": has_bm25,
              "group_timeout_s": group_timeout_s}
    return serve.deployment(Ingress, max_ongoing_requests=512,
                            ray_actor_options={"num_cpus": cpus["ingress"]}).bind(config, encoder, *group_apps)


def run(app, host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME, log_level: str = "info"):
    """Start Serve's HTTP proxy on ``host:port`` (in the connected cluster) and deploy ``app`` at ``/``; returns
    once it is running. In a cluster where Serve already runs, its proxy keeps the address it was started with.
    ``log_level`` below info also turns off the replicas' per-request access log."""
    serve.start(http_options={"host": host, "port": port})
    quiet = log_level.upper() not in ("DEBUG", "INFO")
    return serve.run(app, name=name, route_prefix="/", blocking=False,
                     logging_config={"log_level": log_level.upper(), "enable_access_log": not quiet})
