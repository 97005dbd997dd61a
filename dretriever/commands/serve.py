"""Serve one index over HTTP: ``dretriever serve indexes/NAME [--port 8000] [--engine local|ray]``.

``--engine local`` (default): FastAPI under uvicorn in this process. ``--engine ray``: the same API as a Ray Serve
application (``ray/serve.py``: a batching query encoder, ``--shard_groups`` deployments each holding a range of the
shards, an ingress merging their top-k) in the cluster at ``--address`` (default: a local one), until interrupted.
Binds to 127.0.0.1 unless ``--host`` says otherwise. With ``DRETRIEVER_API_KEY`` set in the environment
every request must carry that key. ``--rerank MODEL`` loads a cross-encoder (a sentence-transformers CrossEncoder
folder) for ``"rerank": true`` searches and ``POST /rerank`` (on Ray: a reranker deployment); ``--rescore R`` is the index's own
exact re-scoring of approximate candidates (named ``--rerank R`` before reranking by a model existed).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import parse
from ..engine import ENGINES
from ..errors import DretrieverError
from ..runtime import check_backend
from ..search.batcher import DEFAULT_MAX_WAIT_MS
from ..search.retriever import DEFAULT_RERANK_DEPTH, FUSIONS, MODES, Retriever
from ..search.server import API_KEY_ENV, create_app
from ..token_batches import parse_max_tokens

log = logging.getLogger(__name__)


@dataclass
class ServeArgs:
    index: str = field(default="", metadata={"help": "index or datastore folder (also accepted as the first "
                                                     "argument; required)"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to bind; 0.0.0.0 exposes the server"})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on"})
    mode: str = field(default="dense", metadata={"help": f"default mode: {' | '.join(MODES)}"})
    fusion: str = field(default="rrf", metadata={"help": f"hybrid fusion: {' | '.join(FUSIONS)}"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the dense run for interpolation, in [0, 1]"})
    model: str | None = field(default=None, metadata={"help": "query encoder (default: the manifest's)"})
    precision: str = field(default="auto", metadata={"help": "query encoding: auto | fp32 | bf16 | fp16 (onnx and "
                                                             "openvino: auto | fp32)"})
    backend: str | None = field(default=None, metadata={
        "help": "query inference backend: torch | onnx | onnx-int8 | openvino (default: the fastest for this CPU at "
                "--precision, measured once and cached: dretriever.autotune)"})
    max_k: int = field(default=1000, metadata={"help": "largest k a request may ask for, in hits (larger: 422)"})
    max_batch: int = field(default=64, metadata={"help": "most queries in one /batch_search request (more: 422)"})
    max_query_chars: int = field(default=2000, metadata={"help": "longest query, in characters (longer: 422)"})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body, in bytes (larger: 413)"})
    nprobe: int | None = field(default=None, metadata={"help": "IVF lists probed per shard (default: faiss's, 1)"})
    rescore: int = field(default=0, metadata={"help": "re-score the top-R approximate candidates exactly from the "
                                                      "vectors kept on disk, in candidates (0: off)"})
    rerank: str | None = field(default=None, metadata={"help": "cross-encoder (a sentence-transformers CrossEncoder "
                                                               "folder or hub id) for requests with \"rerank\": true "
                                                               "and POST /rerank (default: none)"})
    rerank_depth: int = field(default=DEFAULT_RERANK_DEPTH, metadata={
        "help": "first-stage hits a reranked search rescores (a request may ask for fewer), and the most texts "
                "one /rerank request may send"})
    rerank_max_tokens: str = field(default="auto", metadata={"help": "padded tokens per reranking batch: auto | "
                                                                     "none | N"})
    rerank_max_length: int | None = field(default=None, metadata={"help": "tokens of a (query, passage) pair "
                                                                          "kept (default: the model's)"})
    rerank_backend: str = field(default="torch", metadata={
        "help": "the cross-encoder's inference backend: torch | onnx (fp32 ONNX Runtime) | openvino "
                "(fp32, or bf16 at precision auto where the CPU has it); the export is cached beside the model"})
    ef_search: int | None = field(default=None, metadata={"help": "HNSW efSearch, candidates kept while searching "
                                                                   "(default: faiss's, 16)"})
    micro_batch: int = field(default=32, metadata={"help": "concurrent /search requests gathered into one encoder "
                                                          "forward and one search (0 or 1: off)"})
    micro_batch_wait_ms: float = field(default=DEFAULT_MAX_WAIT_MS,
                                       metadata={"help": "longest wait for a micro-batch to fill, in "
                                                         "milliseconds"})
    log_level: str = field(default="info", metadata={"help": "uvicorn's log level: critical | error | warning | "
                                                             "info | debug | trace"})
    engine: str = field(default="local", metadata={"help": "local (this process, uvicorn) | ray (Ray Serve)"})
    address: str | None = field(default=None, metadata={"help": "engine ray: the cluster to join (auto: the one "
                                                              "on this node; default: RAY_ADDRESS, else a new "
                                                              "local cluster)"})
    shard_groups: int = field(default=0, metadata={"help": "engine ray: deployments the shards are split "
                                                          "between, a count (0: min(shards, 2))"})
    group_timeout_s: float = field(default=30.0, metadata={"help": "engine ray: a shard group silent this long "
                                                                   "answers 503, in seconds"})

    def __post_init__(self):
        if not self.index:
            raise DretrieverError("index: name the index folder to serve")
        if not (Path(self.index) / "manifest.json").is_file():
            raise DretrieverError(f"index: {self.index} holds no manifest.json")
        if not 0 <= self.port <= 65535:
            raise DretrieverError(f"port: expected 0-65535, got {self.port}")
        if self.max_k < 1 or self.max_batch < 1 or self.max_body_bytes < 1 or self.max_query_chars < 1:
            raise DretrieverError("max_k, max_batch, max_query_chars and max_body_bytes must be positive")
        if self.micro_batch < 0 or self.micro_batch_wait_ms < 0:
            raise DretrieverError("micro_batch and micro_batch_wait_ms must not be negative")
        if self.backend is not None:
            check_backend(self.backend)
        if self.engine not in ENGINES:
            raise DretrieverError(f"engine: expected one of {ENGINES}, got {self.engine!r}")
        if self.address and self.engine != "ray":
            raise DretrieverError("address: only used with --engine ray")
        if self.shard_groups < 0 or self.group_timeout_s <= 0:
            raise DretrieverError("shard_groups must not be negative and group_timeout_s must be positive")
        if self.rerank is not None and self.rerank.isdigit() and not Path(self.rerank).exists():
            raise DretrieverError(f"rerank: names a cross-encoder now, got {self.rerank!r}; re-scoring the top "
                                  f"approximate candidates from the kept vectors is --rescore {self.rerank}")
        if self.rerank_depth < 1:
            raise DretrieverError(f"rerank_depth: must be positive, got {self.rerank_depth}")
        parse_max_tokens(self.rerank_max_tokens)
        check_backend(self.rerank_backend)


def main(argv) -> int:
    argv = list(argv)
    if argv and not argv[0].startswith("-") and not argv[0].endswith((".yaml", ".yml")):
        argv = ["--index", *argv]  # `dretriever serve indexes/NAME`
    args = parse(ServeArgs, argv)
    if args.engine == "ray":
        return serve_on_ray(args)
    import uvicorn

    retriever = Retriever.load(args.index, mode=args.mode, model=args.model, fusion=args.fusion, alpha=args.alpha,
                               precision=args.precision, backend=args.backend,
                               rerank=args.rerank, rerank_depth=args.rerank_depth,
                               rerank_max_tokens=parse_max_tokens(args.rerank_max_tokens),
                               rerank_max_length=args.rerank_max_length, rerank_backend=args.rerank_backend)
    params = {k: v for k, v in (("nprobe", args.nprobe), ("efSearch", args.ef_search)) if v is not None}
    if params or args.rescore:
        retriever.index.set_search_params(rerank=args.rescore or None, **params)
    api_key = os.environ.get(API_KEY_ENV) or None
    app = create_app(retriever, name=Path(args.index).name, api_key=api_key, max_k=args.max_k,
                     max_batch=args.max_batch, max_query_chars=args.max_query_chars,
                     max_body_bytes=args.max_body_bytes, micro_batch=args.micro_batch,
                     micro_batch_wait_ms=args.micro_batch_wait_ms)
    log.info("serving %s (%d passages) on http://%s:%d%s%s", args.index, len(retriever.index), args.host, args.port,
             f", reranking with {args.rerank}" if args.rerank else "", " with an API key" if api_key else "")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


def serve_on_ray(args: ServeArgs) -> int:
    """Deploy the Ray Serve application and block until interrupted (SIGINT or SIGTERM; then delete it)."""
    import signal
    import time

    from ..ray import connect

    ray = connect(args.address)
    from ..ray import serve as ray_serve

    params = {k: v for k, v in (("nprobe", args.nprobe), ("efSearch", args.ef_search), ("rerank", args.rescore or None))
              if v is not None}
    api_key = os.environ.get(API_KEY_ENV) or None
    app = ray_serve.application(args.index, name=Path(args.index).name, api_key=api_key, max_k=args.max_k,
                                max_batch=args.max_batch, max_query_chars=args.max_query_chars,
                                max_body_bytes=args.max_body_bytes, shard_groups=args.shard_groups,
                                mode=args.mode, fusion=args.fusion, alpha=args.alpha, model=args.model,
                                precision=args.precision, backend=args.backend, micro_batch=args.micro_batch,
                                micro_batch_wait_ms=args.micro_batch_wait_ms, search_params=params,
                                group_timeout_s=args.group_timeout_s, rerank=args.rerank,
                                rerank_depth=args.rerank_depth,
                                rerank_max_tokens=parse_max_tokens(args.rerank_max_tokens),
                                rerank_max_length=args.rerank_max_length, rerank_backend=args.rerank_backend)
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # a local cluster started here is shut down, not left behind
    try:
        ray_serve.run(app, host=args.host, port=args.port, log_level=args.log_level)
        log.info("serving %s with Ray Serve on http://%s:%d%s", args.index, args.host, args.port,
                 " with an API key" if api_key else "")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            ray_serve.serve.delete(ray_serve.APP_NAME)
        finally:
            ray.shutdown()
    return 0
