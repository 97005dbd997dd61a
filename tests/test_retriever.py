"""Retriever API: exact merge across shards (against one flat index), hits with text, BM25 and hybrid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dretriever.errors import DretrieverError
from dretriever.index.chunking import ChunkConfig, Chunker
from dretriever.index.datastore import BM25_DIR, DatastoreArgs, build_datastore, shard_of
from dretriever.search.bm25 import BM25Searcher
from dretriever.search.retriever import Retriever

from .conftest import assert_same_ranking, corpus_head, query_texts

CHUNKS = dict(chunking="words", chunk_size=32, chunk_overlap=8)


@pytest.fixture(scope="module")
def corpus(scifact_small, tmp_path_factory) -> Path:
    return corpus_head(scifact_small, 150, tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def queries(scifact_small) -> list[str]:
    return query_texts(scifact_small, 25)


@pytest.fixture(scope="module")
def datastores(corpus, tiny_model, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("datastores")
    out = {}
    for shards in (1, 4):
        out[shards] = root / f"s{shards}"
        build_datastore(DatastoreArgs(sources=[str(corpus)], output=str(out[shards]), model=str(tiny_model),
                                      shards=shards, bm25=shards == 4, progress=False, precision="fp32", **CHUNKS))
    return out


@pytest.fixture(scope="module")
def r4(datastores) -> Retriever:
    # fp32: exact-order comparisons across shardings (bf16 autocast makes vectors depend on batch padding)
    return Retriever.load(datastores[4], precision="fp32")


def test_many_shards_merge_exactly_as_one_flat_index(datastores, r4, queries):
    r1 = Retriever.load(datastores[1], precision="fp32")
    assert len(r4.index.shards) == 4 and len(r1.index.shards) == 1 and len(r4.index) == len(r1.index)
    for k in (1, 10, 200):
        many, one = r4.batch_search(queries, k), r1.batch_search(queries, k)
        for a, b in zip(many, one):
            assert_same_ranking([h.id for h in a], [h.score for h in a], [h.id for h in b], [h.score for h in b],
                                atol=1e-6)
    # and both equal brute force over the single index's vectors
    flat = r1.index.shards[0]
    vectors = flat.index.reconstruct_n(0, flat.index.ntotal)
    qv = r1.dense.encode(queries)
    best = np.argsort(-(qv @ vectors.T), axis=1, kind="stable")[:, :10]
    assert [[h.id for h in row] for row in r1.batch_search(queries, 10)] == \
           [[flat.docids[i] for i in row] for row in best]


def test_search_pauses_the_garbage_collector_only_while_it_runs(r4, queries):
    import gc

    from dretriever.heap import gc_paused

    seen, encode = [], r4.dense.encode

    def spy(texts):  # the collector's state while the search encodes its queries
        seen.append(gc.isenabled())
        return encode(texts)

    r4.dense.encode = spy
    try:
        hits = r4.batch_search(queries, 5, with_text=False)
    finally:
        del r4.dense.encode
    assert seen == [False] and gc.isenabled() and len(hits) == len(queries)
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a collector that was off stays off
    finally:
        gc.enable()


def test_hits_carry_passage_text_metadata_and_shard(r4, corpus, queries):
    docs = {d["_id"]: d for d in map(json.loads, corpus.open())}
    chunker = Chunker(ChunkConfig(**CHUNKS))
    hits = r4.search(queries[0], k=20)
    assert len(hits) == 20 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    for h in hits:
        doc_id, chunk = h.id.rsplit("#", 1)
        assert h.doc_id == doc_id == h.metadata["doc_id"] and h.metadata["chunk"] == int(chunk)
        assert h.text == chunker.split(docs[doc_id]["text"])[int(chunk)]
        assert h.title == docs[doc_id]["title"]
        assert h.shard == shard_of(doc_id, 4)
    assert r4.search(queries[0], k=5) == hits[:5]
    bare = r4.batch_search(queries[:2], k=5, with_text=False)
    assert [[h.id for h in row] for row in bare] == [[h.id for h in row] for row in r4.batch_search(queries[:2], 5)]
    assert all(h.text == "" for row in bare for h in row)


def test_bm25_mode_matches_lucene_and_fetches_text(r4, datastores, queries):
    direct = BM25Searcher(datastores[4] / BM25_DIR).search({"q": queries[1]}, k=10)["q"]
    hits = r4.search(queries[1], k=10, mode="bm25")
    assert [(h.id, round(h.score, 4)) for h in hits] == [(d, round(s, 4)) for d, s in direct]
    assert all(h.text and h.shard == shard_of(h.doc_id, 4) for h in hits)


def brute_force_dense(datastore: Path, model, query: str, depth: int) -> list[tuple[str, float]]:
    """The dense run computed without the retriever: every shard's vectors, the query encoded by the model
    loaded afresh, exhaustive inner products."""
    from dretriever.encoder import BiEncoder
    from dretriever.index.sharded import ShardedIndex

    index = ShardedIndex.open(datastore)
    ids = [d for sh in index.shards for d in sh.docids]
    vectors = np.concatenate([sh.index.reconstruct_n(0, sh.index.ntotal) for sh in index.shards])
    qv = BiEncoder.from_pretrained(model).encode_queries([query], precision="fp32")[0]
    scores = vectors @ qv
    order = np.argsort(-scores, kind="stable")[:depth]
    return [(ids[i], float(scores[i])) for i in order]


def test_hybrid_modes_fuse_dense_and_bm25(datastores, r4, queries, tiny_model):
    """Both fusions computed by hand from runs the retriever does not produce: exhaustive dense scores and
    Lucene BM25 through Pyserini, each to the retriever's fusion depth (100)."""
    q = queries[2]
    dense = brute_force_dense(datastores[4], tiny_model, q, 100)
    sparse = BM25Searcher(datastores[4] / BM25_DIR).search({"q": q}, k=100)["q"]
    assert len(dense) == len(sparse) == 100
    rrf_scores: dict[str, float] = {}
    for run in (dense, sparse):
        for rank, (pid, _) in enumerate(run, start=1):
            rrf_scores[pid] = rrf_scores.get(pid, 0.0) + 1.0 / (60 + rank)
    want = sorted(rrf_scores.items(), key=lambda x: (-x[1], x[0]))[:10]
    hybrid = r4.search(q, k=10, mode="hybrid")
    assert [h.id for h in hybrid] == [pid for pid, _ in want]
    assert [h.score for h in hybrid] == pytest.approx([sc for _, sc in want], abs=1e-12)
    assert all(h.text for h in hybrid)

    def minmax(run):
        lo, hi = min(s for _, s in run), max(s for _, s in run)
        return {pid: (s - lo) / (hi - lo) for pid, s in run}

    d, s = minmax(dense), minmax(sparse)
    mixed = {pid: 0.3 * d.get(pid, 0.0) + 0.7 * s.get(pid, 0.0) for pid in set(d) | set(s)}
    want = sorted(mixed.items(), key=lambda x: (-x[1], x[0]))[:10]
    interp = Retriever.load(datastores[4], mode="hybrid", fusion="interpolation", alpha=0.3, precision="fp32")
    got = interp.search(q, k=10)
    assert [h.id for h in got] == [pid for pid, _ in want]
    assert [h.score for h in got] == pytest.approx([sc for _, sc in want], abs=1e-5)
    dense_only = Retriever.load(datastores[4], mode="hybrid", fusion="interpolation", alpha=1.0, precision="fp32")
    assert [h.id for h in dense_only.search(q, k=10)] == [pid for pid, _ in dense[:10]]


def test_run_keeps_the_best_passage_per_document(r4, queries):
    run = r4.run({"a": queries[3]}, k=50)
    ids = [d for d, _ in run["a"]]
    hits = r4.search(queries[3], k=50)
    assert len(ids) == len(set(ids)) < len(hits)
    assert ids == list(dict.fromkeys(h.doc_id for h in hits))


def test_bad_calls_name_the_field(datastores, r4):
    with pytest.raises(DretrieverError, match=r"queries\[0\]"):
        r4.search("  ", k=3)
    with pytest.raises(DretrieverError, match="k: expected a positive integer"):
        r4.search("cells", k=0)
    with pytest.raises(DretrieverError, match="mode"):
        r4.search("cells", k=3, mode="sparse")
    with pytest.raises(DretrieverError, match="mode: 'bm25' needs a BM25 index"):
        Retriever.load(datastores[1]).search("cells", k=3, mode="bm25")


def test_langchain_adapter_returns_documents_with_text_and_metadata(r4, queries):
    from dretriever.search.langchain import DretrieverRetriever

    docs = DretrieverRetriever(retriever=r4, k=3).invoke(queries[4])
    hits = r4.search(queries[4], 3)
    assert [d.page_content for d in docs] == [h.text for h in hits]
    assert [(d.metadata["id"], d.metadata["score"], d.metadata["shard"]) for d in docs] == \
           [(h.id, h.score, h.shard) for h in hits]


def test_onnx_backend_is_recorded_and_used_by_the_query_side(corpus, tiny_model, queries, tmp_path):
    import shutil

    from dretriever.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)  # the export is cached beside the model
    built = {}
    for backend in ("torch", "onnx"):
        built[backend] = tmp_path / backend
        assert main(["index", "build", "--corpus", str(corpus), "--output", str(built[backend]), "--model",
                     str(model), "--shards", "2", "--precision", "fp32", "--backend", backend]) == 0
    manifest = json.loads((built["onnx"] / "manifest.json").read_text())
    assert manifest["encoder"]["backend"] == "onnx"
    assert "backend" not in json.loads((built["torch"] / "manifest.json").read_text())["encoder"]
    on = Retriever.load(built["onnx"])
    assert on.dense.encoder.backend == "onnx" and list((model / "onnx").glob("query-*.onnx"))
    ref = Retriever.load(built["torch"], precision="fp32")
    for a, b in zip(on.batch_search(queries, 10), ref.batch_search(queries, 10)):
        assert_same_ranking([h.id for h in a], [h.score for h in a], [h.id for h in b], [h.score for h in b],
                            atol=1e-4)
    assert Retriever.load(built["onnx"], backend="torch").dense.encoder.backend == "torch"  # an override
