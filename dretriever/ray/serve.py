"""``serve --engine ray``: the HTTP API of ``search/server.py`` as a Ray Serve application over a datastore.

The deployments, each a Ray actor (replica) that Serve restarts when it dies, one file each:

- ``QueryEncoder`` (``ray/encoder.py``): the index's query encoder, micro-batching concurrent queries.
- ``ShardGroupN`` (``ray/shards.py``): a contiguous range of the datastore's shards, opened alone, answering its
  exact top-k with text.
- ``Lexical`` (``ray/lexical.py``), with a BM25 index (``datastore build --bm25 true``): Pyserini's Lucene
  searcher, for ``bm25`` and ``hybrid``; without one those modes get the Retriever's 400.
- ``CrossEncoderScorer`` (``ray/rerank.py``), with ``--rerank MODEL``: the second stage.
- ``Ingress`` (here): the FastAPI app of ``create_app`` (``@serve.ingress``) around a ``RayBackend``
  (``ray/backend.py``), which fans each request out to the deployments and merges their answers as the
  single-process Retriever would; a deployment that is down is a 503 naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray import serve

from ..errors import DretrieverError
from ..index import manifest as mf
from ..index.datastore import BM25_DIR
from ..search.batcher import DEFAULT_MAX_WAIT_MS
from ..search.rerank import Reranker
from ..search.retriever import DEFAULT_RERANK_DEPTH, FUSIONS, MODES, check_rerank_depth
from .backend import RayBackend
from .encoder import QueryEncoder
from .lexical import Lexical
from .rerank import CrossEncoderScorer
from .shards import ShardGroup

log = logging.getLogger(__name__)
APP_NAME = "dretriever"
DEFAULT_GROUPS = 2


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
