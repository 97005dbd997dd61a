"""``serve --engine ray`` for real: the Ray Serve application (``ray/serve.py``) in the session's local Ray cluster,
over HTTP on 127.0.0.1, against the single-process server on the same 4-shard datastore: the same OpenAPI
document, the same answers (ids, texts, scores within 1e-5) and the same 401/413/422; each of the two shard
groups holds only its own shards; a killed shard-group replica gives a 503 naming it (or, once replaced, a
correct answer), never a partial top-k, and the service answers correctly again within 60 s."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import assert_same_ranking, query_texts, small_datastore
from tests.rerank_helpers import make_keyword_reranker
from tests.test_server import same_answers, serving

from dretriever.search.retriever import Retriever
from dretriever.search.server import create_app

KEY = "ray-key-789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = dict(max_k=50, max_batch=4, max_query_chars=300, max_body_bytes=2000)
RERANK_DEPTH = 20  # both servers' --rerank_depth


@pytest.fixture(scope="module")
def datastore(scifact_small, tiny_model, tmp_path_factory) -> Path:
    return small_datastore(scifact_small, tiny_model, tmp_path_factory.mktemp("ray_serve"), docs=80, shards=4,
                           bm25=True)


@pytest.fixture(scope="module")
def queries(scifact_small) -> list[str]:
    return query_texts(scifact_small, 8)


@pytest.fixture(scope="module")
def retriever(datastore) -> Retriever:
    return Retriever.load(datastore, precision="fp32")


@pytest.fixture(scope="module")
def keyword_ce(tmp_path_factory, scifact_small) -> Path:
    """A tiny cross-encoder trained to score passages holding a keyword high (both servers' --rerank)."""
    words = sorted({w for q in query_texts(scifact_small, 40) for w in q.lower().split() if w.isalpha()})
    return make_keyword_reranker(tmp_path_factory.mktemp("ce") / "keyword-ce", words, steps=20)


@pytest.fixture(scope="module")
def local(datastore, keyword_ce):
    """The single-process server, with the same reranker as the Ray app (first-stage requests ignore it)."""
    reranking = Retriever.load(datastore, precision="fp32", rerank=keyword_ce, rerank_depth=RERANK_DEPTH)
    with serving(create_app(reranking, name=datastore.name, api_key=KEY, **LIMITS)) as client:
        client.headers.update(AUTH)
        yield client


@pytest.fixture(scope="module")
def on_ray(ray_cluster, datastore, keyword_ce):
    """The Ray Serve app (2 shard groups of 2 shards) on a free port of 127.0.0.1; yields an HTTP client."""
    from ray import serve

    from dretriever.ray.serve import application, run

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    app = application(datastore, api_key=KEY, shard_groups=2, precision="fp32", group_timeout_s=10,
                      micro_batch=8, micro_batch_wait_ms=50, rerank=str(keyword_ce), rerank_depth=RERANK_DEPTH,
                      **LIMITS)
    run(app, host="127.0.0.1", port=port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60) as client:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            yield client
    finally:
        serve.delete("dretriever")


def test_the_openapi_documents_are_identical(on_ray, local):
    ray_doc, local_doc = on_ray.get("/openapi.json"), local.get("/openapi.json")
    assert ray_doc.status_code == local_doc.status_code == 200
    assert ray_doc.json() == local_doc.json()
    assert "503" in ray_doc.json()["paths"]["/search"]["post"]["responses"]


def test_search_and_batch_search_answer_as_the_single_process_server(on_ray, local, retriever, queries):
    for q in queries[:4]:
        got = on_ray.post("/search", json={"query": q, "k": 7})
        assert got.status_code == 200, got.text
        same_answers([got.json()], [local.post("/search", json={"query": q, "k": 7}).json()])
        same_answers([got.json()], [{"hits": [h.to_dict() for h in retriever.search(q, 7)]}])
        assert got.headers["X-Dretriever-Generation"] == "0" and got.json()["generation"] == 0
    got = on_ray.post("/batch_search", json={"queries": queries[:4], "k": 50})
    assert got.status_code == 200, got.text
    expected = local.post("/batch_search", json={"queries": queries[:4], "k": 50}).json()
    same_answers([{"hits": row} for row in got.json()["results"]], [{"hits": row} for row in expected["results"]])
    assert {h["shard"] for row in got.json()["results"] for h in row} == {0, 1, 2, 3}  # global shard numbers
    body = {"query": queries[0], "k": 5, "filter": {"doc_id": {"prefix": "1"}}}  # a filter, run in each group
    got, expected = on_ray.post("/search", json=body), local.post("/search", json=body)
    assert got.status_code == 200 and all(h["doc_id"].startswith("1") for h in got.json()["hits"])
    same_answers([got.json()], [expected.json()])


def test_reranked_searches_and_rerank_answer_as_the_single_process_server(on_ray, local, queries):
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    def same_reranked(got: list[dict], expected: list[dict]) -> None:
        for a, b in zip(got, expected):
            assert_same_ranking([h["id"] for h in a], [h["score"] for h in a], [h["id"] for h in b],
                                [h["score"] for h in b], atol=1e-5)
            assert all(h["first_stage_score"] is not None for h in a)
            by_id = {h["id"]: h for h in b}
            for h in a:
                if h["id"] in by_id:
                    assert h["first_stage_score"] == pytest.approx(by_id[h["id"]]["first_stage_score"], abs=1e-5)
                    assert h["text"] == by_id[h["id"]]["text"]

    for mode in ("dense", "hybrid"):
        body = {"query": queries[0], "k": 6, "mode": mode, "rerank": True}
        got, expected = on_ray.post("/search", json=body), local.post("/search", json=body)
        assert got.status_code == expected.status_code == 200, got.text
        same_reranked([got.json()["hits"]], [expected.json()["hits"]])
        first = on_ray.post("/search", json={**body, "rerank": False, "k": RERANK_DEPTH}).json()["hits"]
        assert {h["id"] for h in got.json()["hits"]} <= {h["id"] for h in first}  # reordered first-stage hits
    body = {"queries": queries[:4], "k": 5, "rerank": True, "rerank_depth": 10}
    got, expected = on_ray.post("/batch_search", json=body), local.post("/batch_search", json=body)
    assert got.status_code == 200, got.text
    same_reranked(got.json()["results"], expected.json()["results"])
    texts = ["a passage about cells and mitochondria", queries[1], "nothing at all"]
    got = on_ray.post("/rerank", json={"query": queries[1], "texts": texts})
    expected = local.post("/rerank", json={"query": queries[1], "texts": texts}).json()
    assert got.status_code == 200 and got.json()["model"] == expected["model"]
    assert got.json()["scores"] == pytest.approx(expected["scores"], abs=1e-5)
    body = {"query": queries[0], "k": RERANK_DEPTH + 1, "rerank": True}  # k above the depth
    bad, bad_local = on_ray.post("/search", json=body), local.post("/search", json=body)
    assert bad.status_code == bad_local.status_code and 400 <= bad.status_code < 500
    assert bad.json() == bad_local.json() and "rerank_depth" in bad.text
    scorer = serve.get_deployment_handle("CrossEncoderScorer", app_name="dretriever")
    before = scorer.stats.remote().result()["batches"]
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda q: on_ray.post("/search", json={"query": q, "k": 3, "rerank": True}).json(),
                              queries))
    assert all(len(f["hits"]) == 3 for f in found)
    assert 1 <= scorer.stats.remote().result()["batches"] - before < len(queries)  # gathered by @serve.batch


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_bm25_and_hybrid_answer_as_the_single_process_server(on_ray, local, queries, mode):
    for q in queries[:3]:
        got = on_ray.post("/search", json={"query": q, "k": 8, "mode": mode})
        assert got.status_code == 200, got.text
        same_answers([got.json()], [local.post("/search", json={"query": q, "k": 8, "mode": mode}).json()])
    got = on_ray.post("/batch_search", json={"queries": queries[:4], "k": 20, "mode": mode})
    expected = local.post("/batch_search", json={"queries": queries[:4], "k": 20, "mode": mode}).json()
    assert got.status_code == 200, got.text
    assert got.json()["results"] == expected["results"]  # BM25 scores, fused scores and texts: identical


def test_concurrent_searches_are_batched_by_the_encoder_and_answer_the_same(on_ray, local, queries):
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    encoder = serve.get_deployment_handle("QueryEncoder", app_name="dretriever")
    before = encoder.stats.remote().result()["batches"]
    requests = queries * 2
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: on_ray.post("/search", json={"query": q, "k": 5}).json(), requests))
    batches = encoder.stats.remote().result()["batches"] - before
    same_answers(got, [local.post("/search", json={"query": q, "k": 5}).json() for q in requests])
    assert 1 <= batches < len(requests)  # @serve.batch gathered concurrent queries into shared forwards


@pytest.mark.parametrize("path, body, headers", [
    ("/search", {"query": "cells", "k": 5}, {"Authorization": "Bearer wrong"}),       # 401
    ("/search", {"query": "cells", "k": 5}, {"Authorization": ""}),                    # 401
    ("/search", {"query": "x" * 3000, "k": 5}, None),                                   # 413 (body > 2000 bytes)
    ("/search", {"query": "cells", "k": 0}, None),                                      # 422
    ("/search", {"query": "cells", "k": 51}, None),                                     # 422
    ("/search", {"query": "  ", "k": 5}, None),                                         # 422
    ("/search", {"query": "cells", "bogus": 1}, None),                                  # 422
    ("/batch_search", {"queries": ["a"] * 5}, None),                                    # 422
    ("/search", {"query": "cells", "filter": {"colour": "red"}}, None),                 # 422 (no such key)
    ("/search", {"query": "cells", "mode": "bm25", "filter": {"doc_id": "1"}}, None),   # 400 (dense only)
    ("/search", {"query": "cells", "mode": "sparse"}, None),                            # 422
])
def test_errors_are_the_single_process_servers(on_ray, local, path, body, headers):
    a = on_ray.post(path, json=body, headers=headers)
    b = local.post(path, json=body, headers=headers)
    assert a.status_code == b.status_code and a.status_code in (400, 401, 413, 422), (a.text, b.text)
    assert a.json() == b.json()


def test_each_shard_group_holds_only_its_shards(on_ray, datastore):
    from dretriever.index.manifest import read_manifest

    health = on_ray.get("/health").json()
    assert health["shards"] == 4 and health["passages"] == len(Retriever.load(datastore).index)
    dirs = [entry["dir"] for entry in read_manifest(datastore)["shards"]]
    groups = sorted(health["details"], key=lambda d: d["group"])
    assert [g["shards"] for g in groups] == [[0, 1], [2, 3]]
    for g in groups:
        assert g["open_shards"] == sorted(dirs[s] for s in g["shards"])  # the other group's files: never opened
        assert g["rss_bytes"] > 0 and g["pid"] != os.getpid()
    assert groups[0]["pid"] != groups[1]["pid"]


def test_a_killed_shard_group_gives_a_503_naming_it_then_the_service_recovers(on_ray, local, queries):
    """SIGKILL group 1 while 4 clients keep searching: every answer is a 503 naming the group or the complete,
    correct top-k (Serve may hold a request until the replacement is up); correct again within 60 s."""
    import threading

    expected = {q: local.post("/search", json={"query": q, "k": 10}).json() for q in queries[:4]}
    group1 = next(d for d in on_ray.get("/health").json()["details"] if d["group"] == 1)
    seen, problems, stop = [], [], threading.Event()

    def client(q):
        with httpx.Client(base_url=on_ray.base_url, headers=AUTH, timeout=60) as http:
            while not stop.is_set():
                r = http.post("/search", json={"query": q, "k": 10})
                seen.append(r.status_code)
                if r.status_code == 503:
                    if "shard group 1 (shards 2-3) unavailable" not in r.json()["error"]:
                        problems.append(r.text)
                elif r.status_code != 200:
                    problems.append(r.text)
                else:
                    try:
                        same_answers([r.json()], [expected[q]])  # never a partial top-k
                    except AssertionError as e:
                        problems.append(f"{q}: {e}")

    threads = [threading.Thread(target=client, args=(q,)) for q in expected]
    for t in threads:
        t.start()
    time.sleep(1)
    os.kill(group1["pid"], signal.SIGKILL)
    killed = time.time()
    try:
        while True:
            assert time.time() - killed < 60, f"not recovered within 60 s: {seen[-5:]}"
            time.sleep(0.5)
            health = on_ray.get("/health")
            if health.status_code == 200:
                new = next(d for d in health.json()["details"] if d["group"] == 1)
                if new["pid"] != group1["pid"]:
                    break
        recovered = time.time() - killed
        r = on_ray.post("/search", json={"query": queries[0], "k": 10})
        assert r.status_code == 200
        same_answers([r.json()], [expected[queries[0]]])
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not problems, problems[:3]
    print(f"recovered in {recovered:.1f} s; statuses seen: {dict(sorted(Counter(seen).items()))}")


def test_health_is_a_503_naming_the_query_encoder_until_it_answers(on_ray, datastore):
    """Serve's proxy routes to an application's ingress as soon as the ingress is up, before its other
    deployments are: the query encoder measuring its backend on a new CPU took over 30 s in CI, while /health
    already answered 200 and searches got 503s. Here the encoder asks for more CPUs than the cluster has, so it
    never starts: /health must say so (503 naming it), as must a search, instead of 200."""
    from ray import serve
    from ray.serve.api import _run

    from dretriever.ray.serve import application

    app = application(datastore, api_key=KEY, shard_groups=1, precision="fp32", group_timeout_s=2,
                      num_cpus={"encoder": 64}, **LIMITS)
    _run(app, _blocking=False, name="encoder-pending", route_prefix="/pending")  # not waiting for RUNNING
    try:
        deadline = time.time() + 90
        # until the proxy routes to it (404 before) and its groups and BM25 index are up (503s naming them)
        while (health := on_ray.get("/pending/health")).status_code == 404 or (
                health.status_code == 503 and "query encoder" not in health.json()["error"]):
            assert time.time() < deadline, f"the pending application did not come up: {health.text}"
            time.sleep(0.5)
        assert health.status_code == 503, health.text
        assert "query encoder unavailable" in health.json()["error"]
        search = on_ray.post("/pending/search", json={"query": "cells", "k": 3})
        assert search.status_code == 503 and "query encoder unavailable" in search.json()["error"]
        assert on_ray.get("/health").status_code == 200  # the running application is untouched
    finally:
        serve.delete("encoder-pending")


def test_reload_moves_every_group_to_the_new_generation(on_ray, datastore, tmp_path, queries):
    """Last: it changes the datastore (a new generation with a fifth shard, so the groups' ranges move)."""
    from dretriever.index.changes import add_documents

    (tmp_path / "new.jsonl").write_text(json.dumps({"_id": "zz-new", "title": "", "text": queries[1]}) + "\n")
    add_documents(datastore, [str(tmp_path / "new.jsonl")], precision="fp32", progress=False)
    assert on_ray.post("/search", json={"query": queries[1], "k": 3}).json()["generation"] == 0  # until reloaded
    assert httpx.post(f"{on_ray.base_url}/admin/reload").status_code == 401
    done = on_ray.post("/admin/reload")
    new = Retriever.load(datastore, precision="fp32")
    assert done.status_code == 200 and done.json() == {"generation": 1, "previous": 0, "passages": len(new.index)}
    r = on_ray.post("/search", json={"query": queries[1], "k": 5})
    assert r.headers["X-Dretriever-Generation"] == "1" and r.json()["hits"][0]["doc_id"] == "zz-new"
    same_answers([r.json()], [{"hits": [h.to_dict() for h in new.search(queries[1], 5)]}])
    details = on_ray.get("/health").json()["details"]
    assert {d["generation"] for d in details} == {1}
    assert sorted(s for d in details for s in d["shards"]) == list(range(len(new.index.shards)))
