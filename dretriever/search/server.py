"""HTTP API over one Retriever: ``/search``, ``/batch_search``, ``/health`` (+ ``/openapi.json``, ``/docs``).

The index and model are loaded once, before the app is built; requests can only choose the query, ``k``
and the mode (there is no field naming a path or another index; unknown fields are refused). Bad
requests get a 4xx whose message names the field: 422 for wrong types or values, 413 for a body over
``max_body_bytes``, and 401 for any request without the API key when one is configured
(``Authorization: Bearer KEY`` or ``X-API-Key: KEY``).
"""


import hmac
import json
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DretrieverError
from .batcher import MicroBatcher
from .retriever import Retriever

API_KEY_ENV = "DRETRIEVER_API_KEY"


class HitOut(BaseModel):
    id: str
    doc_id: str
    score: float
    title: str
    text: str
    metadata: dict
    shard: int | None


class SearchOut(BaseModel):
    hits: list[HitOut]


class BatchSearchOut(BaseModel):
    results: list[list[HitOut]]


class Health(BaseModel):
    status: str
    passages: int
    shards: int
    modes: list[str]
    model: str
    max_k: int
    max_batch: int


class ErrorOut(BaseModel):
    error: str
    field: str | None
    detail: list[dict] | None = None


# Every status a route can answer besides 200, documented in /openapi.json (clients and schemathesis read it).
ERRORS = {400: {"model": ErrorOut, "description": "a request the index cannot serve (the message says why)"},
          401: {"model": ErrorOut, "description": "missing or wrong API key (when the server has one)"},
          413: {"model": ErrorOut, "description": "request body over the server's limit"},
          422: {"model": ErrorOut, "description": "a field of the wrong type or value (named in `field`)"}}


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


def request_models(max_k: int, max_batch: int, max_query_chars: int):
    """Request bodies with the server's limits built into their schema (they show in /openapi.json)."""

    class SearchIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        query: str = Field(min_length=1, max_length=max_query_chars)
        k: int = Field(default=10, ge=1, le=max_k)
        mode: Literal["dense", "bm25", "hybrid"] | None = None

        _check_query = field_validator("query")(_nonblank)

    class BatchSearchIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        queries: list[str] = Field(min_length=1, max_length=max_batch)
        k: int = Field(default=10, ge=1, le=max_k)
        mode: Literal["dense", "bm25", "hybrid"] | None = None

        @field_validator("queries")
        @classmethod
        def _check_queries(cls, value: list[str]) -> list[str]:
            for i, q in enumerate(value):
                if not q.strip():
                    raise ValueError(f"queries[{i}] must not be empty or blank")
                if len(q) > max_query_chars:
                    raise ValueError(f"queries[{i}] is longer than {max_query_chars} characters")
            return value

    return SearchIn, BatchSearchIn


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error echoing a request's lone surrogate (``"\\ud800"``) still encodes
    (JSONResponse writes UTF-8 and raised UnicodeEncodeError: a 500 for a client's mistake)."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":"), default=str).encode("ascii")


def _error(status: int, message: str, field: str | None = None, **extra) -> JSONResponse:
    return AsciiJSONResponse({"error": message, "field": field, **extra}, status_code=status)


class Guard:
    """ASGI middleware: API key check (401) and request body limit (413) before the app sees a request."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None:
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


def create_app(retriever: Retriever, name: str = "index", api_key: str | None = None, max_k: int = 1000,
               max_batch: int = 64, max_query_chars: int = 2000, max_body_bytes: int = 1 << 20,
               micro_batch: int = 32, micro_batch_wait_ms: float = 2.0):
    """The ASGI app (FastAPI wrapped in :class:`Guard`) serving ``retriever``; concurrent ``/search`` requests
    are gathered into batches of up to ``micro_batch`` (waiting at most ``micro_batch_wait_ms``; 0 or 1: off)."""
    SearchIn, BatchSearchIn = request_models(max_k, max_batch, max_query_chars)
    batcher = MicroBatcher(retriever.batch_search, micro_batch, micro_batch_wait_ms) if micro_batch > 1 else None
    app = FastAPI(title="dretriever", version="1", description=f"Dense/BM25/hybrid retrieval over `{name}`.")
    app.state.batcher = batcher

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

    @app.get("/health", response_model=Health, responses={401: ERRORS[401]})
    def health() -> Health:
        index = retriever.index
        return Health(status="ok", passages=len(index), shards=len(index.shards), modes=retriever.modes,
                      model=str(index.manifest["encoder"]["model"]), max_k=max_k, max_batch=max_batch)

    @app.post("/search", response_model=SearchOut, responses=ERRORS)
    async def search(body: SearchIn) -> SearchOut:
        if batcher is not None:
            hits = await batcher(body.query, k=body.k, mode=body.mode)
        else:
            hits = await run_in_threadpool(retriever.search, body.query, body.k, body.mode)
        return SearchOut(hits=[HitOut(**h.to_dict()) for h in hits])

    @app.post("/batch_search", response_model=BatchSearchOut, responses=ERRORS)
    async def batch_search(body: BatchSearchIn) -> BatchSearchOut:
        rows = await run_in_threadpool(retriever.batch_search, body.queries, body.k, body.mode)
        return BatchSearchOut(results=[[HitOut(**h.to_dict()) for h in row] for row in rows])

    return Guard(app, api_key, max_body_bytes)
