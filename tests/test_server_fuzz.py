"""The server under generated and hostile requests, on a real uvicorn on 127.0.0.1: schemathesis generates
requests from the server's own /openapi.json (valid and invalid ones); every response must carry a status the
schema documents and match its documented body, never a 5xx, with and without an API key (401 without it).
The open server has a tiny cross-encoder (``/rerank`` and ``"rerank": true`` fuzzed for real), the keyed one has
none (the same requests answer 400). Then by hand: malformed JSON, a body declared larger than sent, very long
headers, 64 concurrent clients.
``DRETRIEVER_SERVER_FUZZ_REPORT=FILE`` writes the request counts (eval/reliability.py)."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import given
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from dretriever.search.rerank import Reranker
from dretriever.search.retriever import Retriever
from dretriever.search.server import create_app

from .test_server import datastore, retriever  # noqa: F401 (module fixtures: a 60-document datastore)
from tests.rerank_helpers import make_tiny_cross_encoder
from tests.uvicorn_thread import start

KEY = "fuzz-key-456"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
STATUSES: Counter = Counter()  # (server, status) -> requests


def serve(app):
    """Start uvicorn on a free port of 127.0.0.1 in a thread; returns (url, stop)."""
    return start(app, timeout_keep_alive=2)

@pytest.fixture(scope="module")
def open_server(retriever, tmp_path_factory):  # noqa: F811
    reranker = Reranker.load(make_tiny_cross_encoder(tmp_path_factory.mktemp("fuzz") / "ce"))
    reranking = Retriever(retriever.dense, retriever.bm25, reranker=reranker, rerank_depth=8)
    url, stop = serve(create_app(reranking, max_k=50, max_batch=4, max_query_chars=300, max_body_bytes=2000))
    yield url
    stop()


@pytest.fixture(scope="module")
def keyed_server(retriever):  # noqa: F811
    url, stop = serve(create_app(retriever, api_key=KEY, max_k=50, max_batch=4, max_query_chars=300,
                                 max_body_bytes=2000))
    yield url
    stop()


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    out = os.environ.get("DRETRIEVER_SERVER_FUZZ_REPORT")
    if out:
        total = sum(STATUSES.values())
        fivexx = sum(n for (_, status), n in STATUSES.items() if status >= 500)
        Path(out).write_text(json.dumps({"requests": total, "5xx": fivexx, "by_status": {
            f"{server} {status}": n for (server, status), n in sorted(STATUSES.items())}}, indent=1) + "\n")


def operations(url: str):
    # invalid input must get one of the statuses the server documents for it (413: the body limit)
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": ["400", "413", "422"]}}})
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_documented_statuses_and_no_5xx(open_server, keyed_server, mode):
    """Each operation of /openapi.json, through hypothesis directly (schemathesis' pytest plugin does not run
    under pytest 9: its from_fixture reads a private node attribute that pytest 9 dropped)."""
    ops = operations(open_server)
    assert sorted(op.label for op in ops) == ["GET /health", "POST /admin/reload", "POST /batch_search",
                                              "POST /rerank", "POST /search"]
    for op in ops:
        if mode == GenerationMode.NEGATIVE and op.label in ("GET /health", "POST /admin/reload"):
            continue  # they take no input: nothing to make invalid

        @given(case=op.as_strategy(generation_mode=mode))
        def run(case):
            response = case.call(base_url=open_server)
            STATUSES["open", response.status_code] += 1
            case.validate_response(response, checks=CHECKS)
            response = case.call(base_url=keyed_server, headers=AUTH)
            STATUSES["keyed", response.status_code] += 1
            case.validate_response(response, checks=CHECKS)
            response = case.call(base_url=keyed_server)
            STATUSES["keyed, no key", response.status_code] += 1
            assert response.status_code == 401, response.text
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                      response_schema_conformance])

        run()


def raw_request(url: str, data: bytes, shut_write: bool = False, timeout: float = 10) -> int | None:
    """Send ``data`` on a fresh connection; the status of the answer, or None when the server closed it (or sent
    nothing within ``timeout``). ``shut_write``: close the sending side after ``data`` (uvicorn then drops the
    request as a disconnect)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    if not reply:
        return None
    status = int(reply.split(b" ", 2)[1])
    STATUSES["raw", status] += 1
    return status


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_malformed_bodies_get_4xx(open_server):
    for body in [b'{"query": ', b"not json", b"\xff\xfe\x00", b"[]", b"null", b'{"query": "a"}' * 3, b"",
                 b'{"query": "\\ud800"}', b'{"query": "a", "k": 1e400}', b'{"query": "a", "k": ' + b"9" * 5000 + b"}",
                 b'{"queries": [' + b"[" * 5000 + b"]" * 5000 + b"]}", b'{"query": "a", "k": 10000000000000000000000}']:
        for path in ("/search", "/batch_search", "/rerank"):
            status = raw_request(open_server, post(path, body))
            assert status is not None and 400 <= status < 500, (path, body[:60], status)


def test_a_body_declared_larger_than_sent_gets_no_5xx(open_server):
    body = b'{"query": "cells"}'
    head = (f"POST /search HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) + 100}\r\n\r\n").encode()
    status = raw_request(open_server, head + body, shut_write=True)  # the client closes its side: no more body
    assert status is None or 400 <= status < 500, status
    status = raw_request(open_server, head + body, shut_write=False, timeout=3)  # the client waits: so does the server
    assert status is None or 400 <= status < 500, status
    for length in ("-1", "abc", "1" * 30):  # impossible lengths
        status = raw_request(open_server, f"POST /search HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             f"Content-Length: {length}\r\n\r\n"
                             .encode() + body)
        assert status is None or 400 <= status < 500, (length, status)
    with httpx.Client(base_url=open_server, timeout=30) as client:  # the server still answers
        assert client.post("/search", json={"query": "cells", "k": 1}).status_code == 200


def test_very_long_headers_get_4xx_or_a_closed_connection(open_server, keyed_server):
    for url in (open_server, keyed_server):
        for size in (8_000, 100_000, 1_000_000):
            status = raw_request(url, post("/search", b'{"query": "cells"}', f"X-Long: {'a' * size}\r\n"))
            assert status is None or status < 500, (size, status)
            if size <= 8_000:
                assert status == (200 if url == open_server else 401), (size, status)
        status = raw_request(keyed_server, post("/search", b'{"query": "cells"}', f"X-API-Key: {'k' * 100_000}\r\n"))
        assert status is None or 400 <= status < 500, status
    with httpx.Client(base_url=keyed_server, headers=AUTH, timeout=30) as client:
        assert client.post("/search", json={"query": "cells", "k": 1}).status_code == 200


def test_64_concurrent_clients_get_200_or_4xx_never_5xx(keyed_server):
    good = {"query": "cells and proteins", "k": 3}
    cases = [(AUTH, good, 200), ({}, good, 401), (AUTH, {"query": ""}, 422), (AUTH, {"query": "a", "k": 0}, 422),
             (AUTH, {"queries": ["a", "b"], "k": 2}, 200), (AUTH, {"query": "x" * 3000}, 413)]

    def client(i: int) -> list[tuple[int, int]]:
        out = []
        with httpx.Client(base_url=keyed_server, timeout=60) as c:
            for j in range(4):
                headers, body, want = cases[(i + j) % len(cases)]
                path = "/batch_search" if "queries" in body else "/search"
                r = c.post(path, json=body, headers=headers)
                STATUSES["concurrent", r.status_code] += 1
                out.append((r.status_code, want))
        return out

    with ThreadPoolExecutor(64) as pool:
        results = [x for row in pool.map(client, range(64)) for x in row]
    assert len(results) == 256
    assert all(got == want for got, want in results), Counter(results)
