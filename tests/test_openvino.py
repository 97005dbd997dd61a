"""The ``openvino`` backend (dretriever/openvino_runtime.py): the cached ONNX export compiled by OpenVINO holds the
fp32 bar (cosine >= 0.999 per row to torch fp32) on batches of every shape, is recorded in the manifest of the
index and datastore it builds, is what the query side of that index runs, and unknown backends are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dretriever.cli import main
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.index import manifest as mf
from dretriever.index.changes import load_encoder
from dretriever.index.datastore import DatastoreArgs
from tests.conftest import assert_same_ranking, corpus_head, query_texts, small_datastore

QUERIES = ["what is dense retrieval", "faiss", "how do transformers encode a long query about many things"]
DOCS = ["Dense retrieval encodes queries and passages into vectors.", "FAISS searches vectors.",
        "A passage about sharded indexes, exact merging and ids " * 6]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory):
    """A copy of the tiny BERT for this module: its ONNX export is made once, into this copy only."""
    return Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("openvino") / "model"))


def test_openvino_fp32_matches_torch_on_batches_of_every_shape_and_reuses_the_onnx_export(model):
    torch_enc = BiEncoder.from_pretrained(model)
    ov = BiEncoder.from_pretrained(model, backend="openvino")
    texts = (QUERIES + DOCS) * 3
    for side in ("query", "doc"):
        ref = torch_enc.encode(texts, side, precision="fp32")
        for budget in (16, 200, None):  # one row per batch, a few rows of differing lengths, all in one batch
            got = ov.encode(texts, side, precision="fp32", max_tokens=budget)
            assert cosine(ref, got).min() >= 0.999
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    session = ov.runtime("doc", "fp32")
    assert session.precision == "f32"
    assert session.compiled.get_property("INFERENCE_NUM_THREADS") == torch.get_num_threads()
    assert sorted(p.name for p in (model / "onnx").glob("*.onnx")) == [f"query-{torch_enc.fingerprint()[:16]}.onnx"]
    assert session.path == model / "onnx" / f"query-{torch_enc.fingerprint()[:16]}.onnx"  # the onnx backend's file
    with pytest.raises(DretrieverError, match="auto or fp32"):
        ov.encode_docs(texts, precision="bf16")


def test_an_openvino_index_records_it_and_its_retriever_searches_as_torch_does(scifact_small, model, tmp_path):
    from dretriever.search.retriever import Retriever

    corpus = corpus_head(scifact_small, 120, tmp_path / "corpus.jsonl")
    queries = query_texts(scifact_small, 20)
    built = {}
    for backend in ("torch", "openvino"):
        built[backend] = tmp_path / backend
        assert main(["index", "build", "--corpus", str(corpus), "--output", str(built[backend]), "--model",
                     str(model), "--shards", "2", "--backend", backend, "--precision", "fp32"]) == 0
    assert json.loads((built["openvino"] / "manifest.json").read_text())["encoder"]["backend"] == "openvino"
    ov, ref = Retriever.load(built["openvino"], precision="fp32"), Retriever.load(built["torch"], precision="fp32")
    assert ov.dense.encoder.backend == "openvino" and ref.dense.encoder.backend == "torch"
    for got, want in zip(ov.batch_search(queries, 10), ref.batch_search(queries, 10)):
        assert_same_ranking([h.id for h in got], [h.score for h in got], [h.id for h in want],
                            [h.score for h in want], atol=1e-4, last_run_may_be_cut=True)
    assert ov.dense.encoder.runtime("query", "fp32").precision == "f32"  # the query side ran OpenVINO


def test_a_datastore_built_with_openvino_adds_with_it(scifact_small, model, tmp_path):
    root = small_datastore(scifact_small, model, tmp_path, docs=10, shards=1, backend="openvino",
                           precision="fp32")
    manifest = mf.read_manifest(root)
    assert manifest["encoder"]["backend"] == "openvino"
    assert load_encoder(manifest, None).backend == "openvino"  # `datastore add` encodes new text with it
    with pytest.raises(DretrieverError, match="onnx-int8"):
        DatastoreArgs(sources=["x.jsonl"], output=str(tmp_path / "no"), backend="onnx-int8")


def test_an_unknown_backend_is_refused_by_name(tiny_model, tmp_path, capsys):
    assert main(["index", "build", "--corpus", str(tmp_path), "--output", str(tmp_path / "out"), "--model",
                 str(tiny_model), "--backend", "openvin0"]) == 2
    err = capsys.readouterr().err
    assert "backend: expected one of" in err and "'openvino'" in err and "'openvin0'" in err
    for command in (["serve", str(tmp_path), "--backend", "tensorrt"],
                    ["datastore", "build", "--sources", "x.jsonl", "--output", str(tmp_path / "d"), "--backend", "x"],
                    ["eval", "beir", "--data", str(tmp_path), "--backend", "x"]):
        (tmp_path / "manifest.json").write_text("{}")  # serve checks the folder before the backend
        assert main(command) == 2
        assert "backend: expected one of" in capsys.readouterr().err
    with pytest.raises(DretrieverError, match="backend"):
        BiEncoder.from_pretrained(tiny_model, backend="openvino-int8")


def test_minilm_on_scifact_passages_holds_the_fp32_bar_in_fp32_and_auto(scifact_dir):
    lines = (scifact_dir / "corpus.jsonl").open().readlines()[:20]
    texts = [(d.get("title", "") + " " + d["text"]).strip() for d in map(json.loads, lines)]
    ref = BiEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2").encode_docs(texts, precision="fp32")
    ov = BiEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", backend="openvino")
    for precision in ("fp32", "auto"):
        assert cosine(ref, ov.encode_docs(texts, precision=precision)).min() >= 0.999
