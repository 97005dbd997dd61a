"""Reranking with a cross-encoder: the Reranker's scores are sentence-transformers', the retrieval API's second
stage (hand-made reordering, depth beyond the first stage, a bad model refused at load), the HTTP server's
``"rerank": true`` and ``/rerank`` on a real uvicorn, and the two-stage BEIR evaluation."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from dretriever.errors import DretrieverError
from dretriever.search.rerank import Reranker, passage_text
from dretriever.search.retriever import Retriever
from dretriever.search.server import create_app
from tests.conftest import small_datastore
from tests.rerank_helpers import KEYWORD, make_keyword_reranker, make_tiny_cross_encoder
from tests.train_helpers import WORDS, make_toy_beir
from tests.uvicorn_thread import serving

DEPTH = 20  # the server's --rerank_depth in these tests


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny-ce")


@pytest.fixture(scope="module")
def keyword_ce(tmp_path_factory) -> Path:
    return make_keyword_reranker(tmp_path_factory.mktemp("ce") / "keyword-ce", list(WORDS), steps=60)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A BEIR-format toy set (48 documents of 12 random words, 32 queries, ``train`` qrels)."""
    return make_toy_beir(tmp_path_factory.mktemp("toy") / "toy")


@pytest.fixture(scope="module")
def datastore(toy, tiny_model, tmp_path_factory) -> Path:
    """The toy corpus as a 2-shard datastore (one passage per document) with its BM25 index."""
    return small_datastore(toy, tiny_model, tmp_path_factory.mktemp("rerank"), docs=48, shards=2, bm25=True)


@pytest.fixture(scope="module")
def retriever(datastore, keyword_ce) -> Retriever:
    return Retriever.load(datastore, precision="fp32", rerank=keyword_ce, rerank_depth=DEPTH)


def test_scores_are_the_cross_encoders_raw_logits(tiny_ce):
    from sentence_transformers import CrossEncoder

    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 150))) for _ in range(40)]  # some cut at 128 tokens
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(1, 8))) for _ in texts]
    reranker = Reranker.load(tiny_ce, precision="fp32", max_tokens=300)  # token budget: many small batches
    assert reranker.max_length == 128  # the folder's (tokenizer model_max_length, written by CrossEncoder)
    ours = reranker.score_pairs(queries, texts)
    theirs = CrossEncoder(str(tiny_ce)).predict(list(zip(queries, texts)), batch_size=16)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert np.ptp(ours) > 1e-4  # the pairs get different scores: the comparison means something
    lists = reranker.score_lists(queries[:3], [texts[:2], [], texts[2:7]])  # every pair in one pass
    assert [len(x) for x in lists] == [2, 0, 5]
    np.testing.assert_allclose(lists[0], reranker.score(queries[0], texts[:2]), atol=1e-6)
    np.testing.assert_allclose(lists[2], reranker.score(queries[2], texts[2:7]), atol=1e-6)
    assert reranker.pairs == 40 + 7 + 7 and reranker.pairs_per_second > 0
    auto = Reranker.load(tiny_ce).score_pairs(queries, texts)  # bf16 where the CPU has it: close, not equal
    np.testing.assert_allclose(auto, ours, atol=0.05)


def test_onnx_and_openvino_score_as_torch_from_one_cached_export(tiny_ce, tmp_path):
    import shutil

    model = Path(shutil.copytree(tiny_ce, tmp_path / "ce"))  # its onnx/ cache is this test's own
    rng = random.Random(2)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 150))) for _ in range(30)]  # some cut at 128 tokens
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(1, 8))) for _ in texts]
    ref = Reranker.load(model, precision="fp32").score_pairs(queries, texts)
    assert np.ptp(ref) > 1e-4
    for backend in ("onnx", "openvino"):
        reranker = Reranker.load(model, precision="fp32", backend=backend, max_tokens=300)
        got = reranker.score_pairs(queries, texts)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
        assert reranker.backend == backend and reranker.pairs == len(texts)
    fingerprint = Reranker.load(model, precision="fp32").fingerprint()
    assert [p.name for p in (model / "onnx").glob("*.onnx")] == [f"cross-encoder-{fingerprint[:16]}.onnx"]
    auto = Reranker.load(model, backend="openvino").score_pairs(queries, texts)  # bf16 where the CPU has it
    np.testing.assert_allclose(auto, ref, atol=0.05)
    for bad, match in (("onnx-int8", "no int8 cross-encoder"), ("tensorrt", "backend: expected one of")):
        with pytest.raises(DretrieverError, match=match):
            Reranker.load(model, backend=bad)
    with pytest.raises(DretrieverError, match="auto or fp32"):
        Reranker.load(model, backend="onnx", precision="bf16")


def test_a_memo_of_scored_pairs_is_reused_across_runs_of_the_same_queries(tiny_ce):
    rng = random.Random(1)
    docs = {f"d{i}": " ".join(rng.choices(WORDS, k=20)) for i in range(12)}
    queries = {f"q{i}": " ".join(rng.choices(WORDS, k=4)) for i in range(3)}
    first = {q: [(f"d{(i + j) % 12}", 1.0 - j / 10) for j in range(6)] for i, q in enumerate(queries)}
    second = {q: [(f"d{(i + j) % 12}", 1.0 - j / 10) for j in range(3, 9)] for i, q in enumerate(queries)}
    reranker = Reranker.load(tiny_ce, precision="fp32")
    alone = reranker.rerank_run(second, queries, docs.get, depth=6)
    memo: dict = {}
    reranker.rerank_run(first, queries, docs.get, depth=6, memo=memo)
    assert len(memo) == 18
    before = reranker.pairs
    shared = reranker.rerank_run(second, queries, docs.get, depth=6, memo=memo)
    assert reranker.pairs - before == 9  # ranks 6-8 of each query: the 3 pairs per query the first run lacked
    assert len(memo) == 27
    for q in queries:
        assert [d for d, _ in shared[q]] == [d for d, _ in alone[q]]
        np.testing.assert_allclose([s for _, s in shared[q]], [s for _, s in alone[q]], atol=1e-5)


def test_a_bad_model_fails_at_load_naming_it(datastore, tiny_model, tmp_path):
    missing = tmp_path / "no-such-reranker"
    with pytest.raises(DretrieverError, match=str(missing)):
        Retriever.load(datastore, rerank=missing)
    with pytest.raises(DretrieverError, match="not a cross-encoder"):  # a bi-encoder folder
        Retriever.load(datastore, rerank=tiny_model)
    with pytest.raises(DretrieverError, match="rerank_depth"):
        Retriever.load(datastore, rerank=missing, rerank_depth=0)

    from dretriever.cli import parse
    from dretriever.commands.serve import ServeArgs

    with pytest.raises(DretrieverError, match="--rescore 400"):  # the former meaning of serve --rerank N
        parse(ServeArgs, ["--index", str(datastore), "--rerank", "400"])
    assert parse(ServeArgs, ["--index", str(datastore), "--rescore", "400"]).rescore == 400


def keyword_first(hits) -> bool:
    flags = [KEYWORD in h.text for h in hits]
    return flags == sorted(flags, reverse=True)


def test_reranking_reorders_the_first_stages_hits(retriever):
    """The keyword reranker puts every passage holding the keyword above every other one; the random tiny
    bi-encoder's first stage does not."""
    query = "protein cell gene"
    for mode in ("dense", "bm25", "hybrid"):
        first = retriever.search(query, DEPTH, mode, rerank=False)
        assert all(h.first_stage_score is None for h in first)
        reranked = retriever.search(query, 10, mode)  # a reranker is loaded: reranking is the default
        holding = [h.id for h in first if KEYWORD in h.text]
        assert len(holding) >= 3 and not keyword_first(first), mode  # a case where reranking must reorder
        assert keyword_first(reranked) and {h.id for h in reranked[:min(len(holding), 10)]} <= set(holding)
        by_id = {h.id: h for h in first}
        expected = retriever.reranker.score(query, [passage_text(by_id[h.id].title, by_id[h.id].text) for h in reranked])
        np.testing.assert_allclose([h.score for h in reranked], expected, atol=1e-5)
        assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
        assert [h.first_stage_score for h in reranked] == [by_id[h.id].score for h in reranked]
        assert all(h.text == by_id[h.id].text and h.doc_id == by_id[h.id].doc_id for h in reranked)


def test_rerank_depth_beyond_the_first_stage_and_k_within_it(retriever):
    passages = len(retriever.index)
    hits = retriever.search("heart blood", 40, rerank_depth=1000)  # more than the index holds
    assert len(hits) == 40 and keyword_first(hits)
    everything = retriever.search("heart blood", passages, "bm25", rerank_depth=5000)
    assert 0 < len(everything) <= passages and keyword_first(everything)
    with pytest.raises(DretrieverError, match="^k: 21 is more than rerank_depth 20"):
        retriever.search("heart blood", 21)
    run = retriever.run({"q1": "heart blood"}, k=5, by_document=False)
    assert [d for d, _ in run["q1"]] == [h.id for h in retriever.search("heart blood", 5)]
    plain = Retriever(retriever.dense, retriever.bm25)  # no reranker: a first stage only, and asking is an error
    assert all(h.first_stage_score is None for h in plain.search("heart blood", 3))
    with pytest.raises(DretrieverError, match="^rerank: no reranker"):
        plain.search("heart blood", 3, rerank=True)


@pytest.mark.parametrize("body, field", [
    ({"texts": ["a"]}, "query"),
    ({"query": "cells", "texts": "a passage"}, "texts"),
    ({"query": "cells", "texts": ["a"] * (DEPTH + 1)}, "texts"),
    ({"query": "cells", "texts": []}, "texts"),
    ({"query": "cells", "texts": ["a", 3]}, "texts.1"),
    ({"query": "   ", "texts": ["a"]}, "query"),
    ({"query": "cells", "texts": ["a"], "model": "/elsewhere"}, "model"),
])
def test_malformed_rerank_requests_get_422_naming_the_field(server, body, field):
    client, _ = server
    r = client.post("/rerank", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["error"].startswith(f"{field}:")


@pytest.fixture(scope="module")
def server(retriever):
    app = create_app(retriever, max_k=50, micro_batch=8, micro_batch_wait_ms=100)
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, app


def test_server_reranks_searches_and_scores_texts(server, retriever):
    client, app = server
    health = client.get("/health").json()
    assert health["reranker"] == str(retriever.reranker.name) and health["max_rerank_depth"] == DEPTH
    schema = client.get("/openapi.json").json()
    assert "/rerank" in schema["paths"] and "rerank" in json.dumps(schema["components"]["schemas"]["SearchIn"])

    rng = random.Random(1)
    texts = [" ".join(rng.sample(WORDS, 10)) for _ in range(DEPTH)]
    requests = [("brain heart", texts), ("insulin", texts[:5]), ("lung", texts[3:9])] * 4
    with ThreadPoolExecutor(12) as pool:  # concurrent /rerank requests: micro-batched, the same scores
        answers = list(pool.map(lambda r: client.post("/rerank", json={"query": r[0], "texts": r[1]}), requests))
    assert all(a.status_code == 200 for a in answers)
    for (query, sent), answer in zip(requests, answers):
        np.testing.assert_allclose(answer.json()["scores"], retriever.reranker.score(query, sent), atol=1e-5)
    assert app.state.backend.rerank_batcher.batches < len(requests)

    r = client.post("/search", json={"query": "protein cell gene", "k": 5, "rerank": True, "mode": "hybrid"})
    assert r.status_code == 200, r.text
    expected = retriever.search("protein cell gene", 5, "hybrid")
    got = r.json()["hits"]
    assert [h["id"] for h in got] == [h.id for h in expected]
    assert [h["first_stage_score"] for h in got] == [h.first_stage_score for h in expected]
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in expected], atol=1e-5)
    r = client.post("/search", json={"query": "protein cell gene", "k": 5, "rerank": True, "rerank_depth": 5})
    assert [h["id"] for h in r.json()["hits"]] == [h.id for h in retriever.search("protein cell gene", 5,
                                                                                     rerank_depth=5)]
    r = client.post("/batch_search", json={"queries": ["brain", "lung"], "k": 3, "rerank": True})
    assert all(h["first_stage_score"] is not None for row in r.json()["results"] for h in row)
    r = client.post("/search", json={"query": "protein cell gene", "k": 5})  # the default: the first stage
    assert all(h["first_stage_score"] is None for h in r.json()["hits"])

    r = client.post("/search", json={"query": "cells", "k": DEPTH + 1, "rerank": True})
    assert r.status_code == 400 and r.json()["field"] == "k"
    r = client.post("/search", json={"query": "cells", "rerank": True, "rerank_depth": DEPTH + 1})
    assert r.status_code == 422 and r.json()["field"] == "rerank_depth"
    r = client.post("/search", json={"query": "cells", "rerank": "yes"})
    assert r.status_code == 422 and r.json()["field"] == "rerank"


def test_a_server_without_a_reranker_refuses_rerank_requests_naming_the_field(retriever):
    plain = Retriever(retriever.dense, retriever.bm25)
    with serving(create_app(plain)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json()["reranker"] is None
        for path, body in (("/search", {"query": "cells", "rerank": True}),
                           ("/batch_search", {"queries": ["cells"], "rerank": True}),
                           ("/rerank", {"query": "cells", "texts": ["a"]})):
            r = client.post(path, json=body)
            assert r.status_code == 400 and r.json()["field"] == "rerank", (path, r.text)
        assert client.post("/search", json={"query": "cells", "k": 2}).status_code == 200


def test_eval_beir_reports_each_system_and_its_reranked_run(toy, tiny_model, keyword_ce, tmp_path):
    from dretriever.cli import main
    from dretriever.evaluation.perquery import read_per_query

    out = tmp_path / "report"
    assert main(["eval", "beir", "--data", str(toy), "--split", "train", "--model", str(tiny_model), "--shards", "1",
                 "--index_root", str(tmp_path / "indexes"), "--output_dir", str(out), "--rerank", str(keyword_ce),
                 "--rerank_depth", "10", "--k", "30", "--resamples", "200"]) == 0
    report = json.loads((out / "report.json").read_text())
    first = ["bm25", "tiny_bert0", "hybrid(tiny_bert0+bm25,interpolation)"]
    assert [r["system"] for r in report["rows"]] == [s for f in first for s in (f, f + "+rerank")]
    rows = {r["system"]: r for r in report["rows"]}
    seen: set = set()  # pairs scored for a system above: reused, not scored again
    for f in first:
        row = rows[f + "+rerank"]
        run = [line.split() for line in Path(row["run"]).read_text().splitlines()]
        per_query = {}
        for qid, _, doc, *_ in run:
            per_query.setdefault(qid, []).append(doc)
        assert max(map(len, per_query.values())) == 10  # the reranked top-10 only
        pairs = {(q, d) for q, docs in per_query.items() for d in docs}
        assert row["rerank_pairs"] == len(pairs - seen)
        assert (row["pairs_per_second"] or 0) > 0 if pairs - seen else row["pairs_per_second"] is None
        seen |= pairs
        assert read_per_query(row["perquery"])["ndcg_cut_10"]  # per-query scores kept as for every system
    assert rows["bm25+rerank"]["rerank_pairs"] == 32 * 10  # the first system scores all its pairs
    tests = report["rerank"]["systems"]
    assert [(s["system"], s["first_stage"]) for s in tests] == [(f + "+rerank", f) for f in first]
    for s in tests:
        c = next(c for c in s["comparisons"] if c["metric"] == "ndcg_cut_10")
        assert c["baseline"] == s["first_stage"] and c["queries"] == 32 and c["p_holm"] >= c["p_value"]
        assert c["system_mean"] == pytest.approx(rows[s["system"]]["ndcg_cut_10"], abs=1e-4)
    md = (out / "report.md").read_text()
    assert "## toy: each reranked system against its first stage" in md and "| bm25+rerank | " in md
    assert (out / "perquery-toy.bm25-rerank.png").is_file()
