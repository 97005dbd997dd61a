"""HTTP API over one index: ``/search``, ``/batch_search``, ``/rerank``, ``/health`` (+ ``/openapi.json``,
``/docs``, and the search page at ``/``, ``search/page.py``).

Defined once for both engines: ``create_app`` takes a backend (``search/backend.py``): a :class:`Retriever` in
this process (``LocalBackend``), or the Ray Serve deployments (``ray/serve.py``), so both serve the same OpenAPI
document, limits and error shapes.

The index and model are loaded once, before the app is built; requests can only choose the query, ``k``
and the mode (there is no field naming a path or another index; unknown fields are refused). Bad
requests get a 4xx whose message names the field: 422 for wrong types or values, 413 for a body over
``max_body_bytes``, and 401 for any request without the API key when one is configured
(``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), except fetching the search page's own files.

Living datastores: ``filter`` (dense mode) restricts hits by metadata (``index/filters.py``; an unknown key or a
wrong value type is a 422 naming ``filter.KEY``). ``POST /admin/reload`` (only when an API key is configured)
opens the datastore's current generation and swaps it in atomically: a request keeps the generation it started
with (the local backend's Retriever; with Ray every group keeps the previous generation open), so requests in
flight finish on the old generation. Every answer names the generation it was served
from (``generation`` in the body, ``X-Dretriever-Generation`` header).

Micro-batching (``search/batcher.py``, on by default): concurrent ``/search`` requests with the same options
are answered by one ``batch_search`` call, one encoder forward and one search per shard, all on one generation
(with Ray, ``@serve.batch`` gathers the queries into shared encoder forwards).

Reranking (``serve --rerank MODEL``, a cross-encoder: ``search/rerank.py``): a search with ``"rerank": true``
reranks the first stage's top ``rerank_depth`` (default and most: the server's ``--rerank_depth``) and its hits
carry the cross-encoder's logit as ``score`` and the first stage's as ``first_stage_score``; ``POST /rerank``
scores a query against up to ``--rerank_depth`` texts. Concurrent reranked searches are micro-batched like the
others (one first stage, then every pair of the batch in one token-budget pass), and so are concurrent
``/rerank`` requests. Without a reranker both answer 400 naming ``rerank``. (Ray: ``ray/rerank.py``.)
"""


import hmac
import json
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DretrieverError, Unavailable
from .backend import LocalBackend
from .batcher import DEFAULT_MAX_WAIT_MS
from .page import add_search_page, is_public
from .retriever import DEFAULT_RERANK_DEPTH, Retriever

API_KEY_ENV = "DRETRIEVER_API_KEY"
GENERATION_HEADER = "X-Dretriever-Generation"


class HitOut(BaseModel):
    id: str
    doc_id: str
    score: float = Field(description="the score the hits are ranked by: the reranker's raw logit when reranked")
    title: str
    text: str
    metadata: dict
    shard: int | None
    first_stage_score: float | None = Field(default=None, description="when reranked: the first stage's score "
                                            "(dense, BM25 or fused); null otherwise")


class SearchOut(BaseModel):
    hits: list[HitOut]
    generation: int


class BatchSearchOut(BaseModel):
    results: list[list[HitOut]]
    generation: int


class RerankOut(BaseModel):
    scores: list[float] = Field(description="the cross-encoder's raw logit for (query, text), in the texts' order")
    model: str


class ReloadOut(BaseModel):
    generation: int
    previous: int
    passages: int


class Health(BaseModel):
    status: str
    passages: int
    shards: int
    modes: list[str]
    model: str
    max_k: int
    max_batch: int
    generation: int
    reranker: str | None = Field(default=None, description="the cross-encoder `\"rerank\": true` and /rerank use "
                                 "(null: none loaded)")
    max_rerank_depth: int | None = Field(default=None, description="most first-stage hits a search reranks and "
                                         "most texts a /rerank request scores (null: no reranker)")
    filter_keys: dict[str, str] = Field(default_factory=dict, description="metadata keys a `filter` may name, with "
                                        "their types (int | float | str); `doc_id` is always available")
    details: list[dict] | None = Field(default=None, description="per process holding shards (one; with the Ray "
                                       "engine one per shard group): group, shards, passages, generation, pid, "
                                       "rss_bytes")


class ErrorOut(BaseModel):
    error: str
    field: str | None
    detail: list[dict] | None = None


# Every status a route can answer besides 200, documented in /openapi.json (clients and schemathesis read it).
ERRORS = {400: {"model": ErrorOut, "description": "a request the index cannot serve (the message says why)"},
          401: {"model": ErrorOut, "description": "missing or wrong API key (when the server has one)"},
          413: {"model": ErrorOut, "description": "request body over the server's limit"},
          422: {"model": ErrorOut, "description": "a field of the wrong type or value (named in `field`)"},
          503: {"model": ErrorOut, "description": "a part of the service is down for now (a Ray shard group being "
                                                  "replaced; the message names it): retry"}}


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


FILTER_HELP = ('metadata filter (dense mode), keys AND-ed: {"source": "pubmed", "year": {"gte": 2015, "lt": 2020}, '
               '"lang": {"in": ["en", "de"]}, "doc_id": {"prefix": "PMC"}}')


RERANK_HELP = "rerank the first stage's hits with the server's cross-encoder (400 when it has none)"


def request_models(max_k: int, max_batch: int, max_query_chars: int, filter_keys: dict[str, str] | None = None,
                   max_rerank_depth: int = DEFAULT_RERANK_DEPTH):
    """Request bodies with the server's limits built into their schema (they show in /openapi.json)."""
    from ..index.filters import parse_filter

    keys = filter_keys or {}
    help_text = FILTER_HELP + f"; declared keys: {', '.join(['doc_id', *keys])}"
    depth_help = (f"first-stage hits reranked, at least k (default and most: {max_rerank_depth}, the server's "
                  "--rerank_depth)")

    def check_filter(cls, value):
        try:
            parse_filter(value, keys)
        except DretrieverError as e:
            raise ValueError(str(e)) from None
        return value

    class SearchIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        query: str = Field(min_length=1, max_length=max_query_chars)
        k: int = Field(default=10, ge=1, le=max_k)
        mode: Literal["dense", "bm25", "hybrid"] | None = None
        filter: dict[str, Any] | None = Field(default=None, description=help_text)
        rerank: bool = Field(default=False, description=RERANK_HELP)
        rerank_depth: int | None = Field(default=None, ge=1, le=max_rerank_depth, description=depth_help)

        _check_query = field_validator("query")(_nonblank)
        _check_filter = field_validator("filter")(classmethod(check_filter))

    class BatchSearchIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        queries: list[str] = Field(min_length=1, max_length=max_batch)
        k: int = Field(default=10, ge=1, le=max_k)
        mode: Literal["dense", "bm25", "hybrid"] | None = None
        filter: dict[str, Any] | None = Field(default=None, description=help_text)
        rerank: bool = Field(default=False, description=RERANK_HELP)
        rerank_depth: int | None = Field(default=None, ge=1, le=max_rerank_depth, description=depth_help)

        _check_filter = field_validator("filter")(classmethod(check_filter))

        @field_validator("queries")
        @classmethod
        def _check_queries(cls, value: list[str]) -> list[str]:
            for i, q in enumerate(value):
                if not q.strip():
                    raise ValueError(f"queries[{i}] must not be empty or blank")
                if len(q) > max_query_chars:
                    raise ValueError(f"queries[{i}] is longer than {max_query_chars} characters")
            return value

    class RerankIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        query: str = Field(min_length=1, max_length=max_query_chars)
        texts: list[str] = Field(min_length=1, max_length=max_rerank_depth,
                                 description=f"passages to score against the query (at most {max_rerank_depth})")

        _check_query = field_validator("query")(_nonblank)

    return SearchIn, BatchSearchIn, RerankIn


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error echoing a request's lone surrogate (``"\\ud800"``) still encodes
    (JSONResponse writes UTF-8 and raised UnicodeEncodeError: a 500 for a client's mistake)."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":"), default=str).encode("ascii")


def _error(status: int, message: str, field: str | None = None, **extra) -> JSONResponse:
    return AsciiJSONResponse({"error": message, "field": field, **extra}, status_code=status)


class Guard:
    """ASGI middleware: API key check (401) and request body limit (413) before the app sees a request.
    ``create_app`` installs it with ``app.add_middleware(Guard, api_key=..., max_body_bytes=...)``, so the FastAPI
    object itself carries it (Ray Serve's ingress runs that object)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and not is_public(scope["method"], scope["path"]):  # the page holds no data
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return await _error(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)",
                                    "authorization")(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _error(413, f"request body: larger than {self.max_body_bytes} bytes", "body")(
                scope, receive, send)
        body, more = b"", True
        while more:  # read the whole body (chunked uploads too) under the limit, then replay it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await _error(413, f"request body: larger than {self.max_body_bytes} bytes", "body")(
                    scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class API(FastAPI):
    """The FastAPI app (with :class:`Guard` installed); ``.app`` is itself, for callers of the former wrapper."""

    @property
    def app(self) -> "API":
        return self


def create_app(backend, name: str = "index", api_key: str | None = None, max_k: int = 1000,
               max_batch: int = 64, max_query_chars: int = 2000, max_body_bytes: int = 1 << 20,
               micro_batch: int = 32, micro_batch_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> API:
    """The FastAPI app serving ``backend`` (``search/backend.py``; a :class:`Retriever` is served by a
    ``LocalBackend`` micro-batching ``/search`` into batches of up to ``micro_batch``, waiting at most
    ``micro_batch_wait_ms``; 0 or 1: off), with :class:`Guard` installed for the key and body limit."""
    if isinstance(backend, Retriever):
        backend = LocalBackend(backend, micro_batch, micro_batch_wait_ms)
    reranker = getattr(backend, "reranker", None)  # the name of the backend's cross-encoder, or None
    max_depth = getattr(backend, "rerank_depth", None) or DEFAULT_RERANK_DEPTH
    SearchIn, BatchSearchIn, RerankIn = request_models(max_k, max_batch, max_query_chars, backend.filter_keys,
                                                       max_depth)
    app = API(title="dretriever", version="1", description=f"Dense/BM25/hybrid retrieval over `{name}`"
              + (f", reranked by `{reranker}`." if reranker else "."))
    app.state.backend = backend
    app.state.batcher = getattr(backend, "batcher", None)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        if first.get("type") == "json_invalid":
            field = "body"
        message = f"{field}: {first.get('msg', 'invalid')}"
        return _error(422, message, field, detail=json.loads(json.dumps(exc.errors(), default=str)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        # FastAPI's own 400 (a body it cannot parse), 404, 405: the same error shape as every other error
        field = "body" if exc.status_code == 400 else None
        return _error(exc.status_code, str(exc.detail), field)

    @app.exception_handler(DretrieverError)
    async def _bad(request: Request, exc: DretrieverError):
        field = str(exc).split(":", 1)[0]
        return _error(400, str(exc), field)

    @app.exception_handler(Unavailable)
    async def _down(request: Request, exc: Unavailable):
        return _error(503, str(exc), None)

    @app.get("/health", response_model=Health, responses={401: ERRORS[401], 503: ERRORS[503]})
    async def health(response: Response) -> Health:
        h = await backend.health()
        response.headers[GENERATION_HEADER] = str(h["generation"])
        return Health(status="ok", max_k=max_k, max_batch=max_batch, filter_keys=backend.filter_keys,
                      reranker=reranker, max_rerank_depth=max_depth if reranker else None, **h)

    def rerank_options(body) -> dict:
        """The keyword arguments a reranked search adds (none for a first-stage search: every backend takes
        that); a rerank asked of a server without a reranker is a 400 naming ``rerank``."""
        if not body.rerank:
            return {}
        if reranker is None:
            raise DretrieverError("rerank: this server has no reranker (start it with dretriever serve --rerank MODEL)")
        depth = body.rerank_depth or max_depth
        if body.k > depth:
            raise DretrieverError(f"k: {body.k} is more than rerank_depth {depth}; a reranked search returns at most "
                                  "the reranked hits")
        return {"rerank": True, "rerank_depth": depth}

    @app.post("/search", response_model=SearchOut, responses=ERRORS)
    async def search(body: SearchIn, response: Response) -> SearchOut:
        hits, generation = await backend.search(body.query, body.k, body.mode, body.filter, **rerank_options(body))
        response.headers[GENERATION_HEADER] = str(generation)
        return SearchOut(hits=[HitOut(**h) for h in hits], generation=generation)

    @app.post("/batch_search", response_model=BatchSearchOut, responses=ERRORS)
    async def batch_search(body: BatchSearchIn, response: Response) -> BatchSearchOut:
        rows, generation = await backend.batch_search(body.queries, body.k, body.mode, body.filter,
                                                      **rerank_options(body))
        response.headers[GENERATION_HEADER] = str(generation)
        return BatchSearchOut(results=[[HitOut(**h) for h in row] for row in rows], generation=generation)

    @app.post("/rerank", response_model=RerankOut, responses=ERRORS)
    async def rerank(body: RerankIn) -> RerankOut:
        """Score each text against the query with the server's cross-encoder (raw logits, the texts' order)."""
        if reranker is None:
            raise DretrieverError("rerank: this server has no reranker (start it with dretriever serve --rerank MODEL)")
        return RerankOut(scores=await backend.rerank(body.query, body.texts), model=reranker)

    @app.post("/admin/reload", response_model=ReloadOut,
              responses={401: ERRORS[401], 403: {"model": ErrorOut, "description": "the server has no API key, "
                                                 "so reloading is off"}, 503: ERRORS[503]})
    async def reload(response: Response) -> ReloadOut:
        """Open the datastore's current generation and swap it in; requests in flight finish on the old one."""
        if api_key is None:
            return _error(403, "admin/reload: only available when the server has an API key "
                               f"({API_KEY_ENV})", "authorization")
        generation, previous, passages = await backend.reload()
        response.headers[GENERATION_HEADER] = str(generation)
        return ReloadOut(generation=generation, previous=previous, passages=passages)

    add_search_page(app)  # GET /: the search page (search/page.py), outside the OpenAPI document
    return app
