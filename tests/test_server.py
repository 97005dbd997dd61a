"""The HTTP server, run for real under uvicorn on 127.0.0.1: results, concurrency, 4xx, 413 and 401."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import assert_same_ranking, query_texts, small_datastore
from tests.uvicorn_thread import serving as uvicorn_serving

from dretriever.search.retriever import Retriever
from dretriever.search.server import API_KEY_ENV, create_app

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def datastore(scifact_small, tiny_model, tmp_path_factory) -> Path:
    return small_datastore(scifact_small, tiny_model, tmp_path_factory.mktemp("server"), docs=60, shards=2)


@pytest.fixture(scope="module")
def queries(scifact_small) -> list[str]:
    return query_texts(scifact_small, 16)


@pytest.fixture(scope="module")
def retriever(datastore) -> Retriever:
    return Retriever.load(datastore, precision="fp32")  # the same vectors on every CPU (auto may pick bf16)


def same_answers(got: list[dict], expected: list[dict]) -> None:
    """Responses agree: the same hits (ids, text, metadata) in the same order up to ties, scores within 1e-5.
    A query encoded in a batch of many and alone differs in the last bits of fp32 (the GEMM's blocking)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        ha, hb = a["hits"], b["hits"]
        assert_same_ranking([h["id"] for h in ha], [h["score"] for h in ha], [h["id"] for h in hb],
                            [h["score"] for h in hb], atol=1e-5)
        by_id = {h["id"]: h for h in hb}
        for h in ha:
            if h["id"] in by_id:
                assert {k: v for k, v in h.items() if k != "score"} == \
                       {k: v for k, v in by_id[h["id"]].items() if k != "score"}


@contextmanager
def serving(app):
    """The app served on 127.0.0.1 (tests/uvicorn_thread.py); yields a client with the API key."""
    with uvicorn_serving(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        yield client

@pytest.fixture(scope="module")
def server(retriever):
    """The app with an API key and its default micro-batching."""
    app = create_app(retriever, api_key=KEY, max_k=50, max_batch=4, max_query_chars=300, max_body_bytes=2000)
    with serving(app) as client:
        yield client


def test_search_and_batch_search_return_the_retrievers_hits(server, retriever, queries):
    r = server.post("/search", json={"query": queries[0], "k": 7})
    assert r.status_code == 200
    expected = [h.to_dict() for h in retriever.search(queries[0], 7)]
    assert r.json()["hits"] == expected  # floats survive JSON exactly
    assert r.json()["hits"][0]["text"] and r.json()["hits"][0]["shard"] in (0, 1)
    r = server.post("/batch_search", json={"queries": queries[:3], "k": 5})
    assert r.status_code == 200
    assert [[h["id"] for h in row] for row in r.json()["results"]] == \
           [[h.id for h in row] for row in retriever.batch_search(queries[:3], 5)]
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["passages"] == len(retriever.index) and health["shards"] == 2
    schema = server.get("/openapi.json").json()
    assert {"/search", "/batch_search", "/health"} <= set(schema["paths"])


def test_concurrent_requests_get_the_same_answers_as_sequential_ones(server, queries):
    sequential = [server.post("/search", json={"query": q, "k": 10}).json() for q in queries]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda q: server.post("/search", json={"query": q, "k": 10}).json(), queries))
    same_answers(concurrent, sequential)


def test_micro_batched_requests_get_the_unbatched_answers(retriever, queries):
    """16 concurrent clients, two values of k: gathered into few batches, never mixing k, answers unchanged."""
    requests = [{"query": q, "k": 10 if i % 2 else 3} for i, q in enumerate(queries * 2)]
    off = create_app(retriever, api_key=KEY, max_k=50, micro_batch=0)
    assert off.app.state.batcher is None  # the off-switch
    with serving(off) as client:
        unbatched = [client.post("/search", json=body).json() for body in requests]
    on = create_app(retriever, api_key=KEY, max_k=50, micro_batch=16, micro_batch_wait_ms=200)
    with serving(on) as client, ThreadPoolExecutor(16) as pool:
        batched = list(pool.map(lambda body: client.post("/search", json=body).json(), requests))
    same_answers(batched, unbatched)
    assert [len(r["hits"]) for r in batched] == [b["k"] for b in requests]
    batches = on.app.state.batcher.batches
    assert 4 <= batches < len(requests) // 2  # >= 2 per k (32 requests, at most 16 in a batch), far fewer than 32


@pytest.mark.parametrize("body, field", [
    ({"query": "", "k": 5}, "query"),
    ({"query": "   ", "k": 5}, "query"),
    ({"query": "cells", "k": 0}, "k"),
    ({"query": "cells", "k": -3}, "k"),
    ({"query": "cells", "k": 51}, "k"),
    ({"query": "cells", "k": "5"}, "k"),
    ({"query": "cells", "k": 2.5}, "k"),
    ({"query": "cells", "k": True}, "k"),
    ({"query": 17, "k": 5}, "query"),
    ({"query": ["cells"], "k": 5}, "query"),
    ({"k": 5}, "query"),
    ({"query": "x" * 301}, "query"),
    ({"query": "cells", "mode": "sparse"}, "mode"),
    ({"query": "cells", "index": "/etc/passwd"}, "index"),
    ({"query": "cells", "model": "../other-model"}, "model"),
])
def test_bad_search_requests_get_422_naming_the_field(server, body, field):
    r = server.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["error"].startswith(f"{field}:")


@pytest.mark.parametrize("body, field", [
    ({"queries": [], "k": 5}, "queries"),
    ({"queries": ["a", "b", "c", "d", "e"]}, "queries"),
    ({"queries": ["cells", " "]}, "queries"),
    ({"queries": "cells"}, "queries"),
    ({"queries": ["cells", 3]}, "queries.1"),
    ({"queries": ["cells"], "k": 1000}, "k"),
])
def test_bad_batch_requests_get_422_naming_the_field(server, body, field):
    r = server.post("/batch_search", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_malformed_oversize_and_impossible_requests(server):
    r = server.post("/search", content=b'{"query": "cells", ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"
    r = server.post("/search", json={"query": "cells " * 400})
    assert r.status_code == 413 and "request body" in r.json()["error"]

    def chunked():  # no Content-Length: the limit still holds
        yield b'{"query": "'
        for _ in range(50):
            yield b"cells " * 20
        yield b'"}'

    r = server.post("/search", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = server.post("/search", json={"query": "cells", "mode": "bm25"})  # this index has no BM25
    assert r.status_code == 400 and r.json()["field"] == "mode"
    assert server.get("/search").status_code == 405


def test_every_request_without_the_api_key_gets_401(server):
    base = str(server.base_url)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": KEY}):
        with httpx.Client(base_url=base, headers=headers, timeout=30) as anon:
            for method, path, body in (("GET", "/health", None), ("GET", "/openapi.json", None),
                                       ("GET", "/docs", None), ("POST", "/search", {"query": "cells"}),
                                       ("POST", "/batch_search", {"queries": ["cells"]}), ("GET", "/nowhere", None)):
                r = anon.request(method, path, json=body)
                assert r.status_code == 401, (headers, path)
                assert r.json()["field"] == "authorization"
    with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as ok:
        assert ok.post("/search", json={"query": "cells", "k": 2}).status_code == 200


def test_cli_serves_on_localhost_and_reads_the_key_from_the_environment(datastore, queries, retriever):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, API_KEY_ENV: KEY}
    proc = subprocess.Popen([sys.executable, "-m", "dretriever", "serve", str(datastore), "--port", str(port),
                             "--log_level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", headers=AUTH, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 401
        r = httpx.post(f"{url}/search", json={"query": queries[1], "k": 4}, headers=AUTH, timeout=30)
        assert [h["id"] for h in r.json()["hits"]] == [h.id for h in retriever.search(queries[1], 4)]
        listening = [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"]
        assert listening and all(line.split()[1].startswith("0100007F:") for line in listening)  # 127.0.0.1 only
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stderr.close()


def test_cli_refuses_a_folder_without_an_index(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dretriever", "serve", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "holds no manifest.json" in done.stderr
