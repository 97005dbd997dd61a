"""The onnx-int8 backend: calibration samples, the quantisation recipe, the cache key and the index round trip."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from dretriever.data.beir import Document
from dretriever.encoder import DEFAULT_MAX_TOKENS, INT8_DOC_MAX_TOKENS, BiEncoder
from dretriever.errors import DataError, DretrieverError
from dretriever.quantize import CALIBRATION_FILE, RECIPE, Calibration, weighted_matmuls

from .conftest import assert_same_ranking, query_texts
from .test_encoder import DOCS, QUERIES


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_calibration_is_a_seeded_sample_in_corpus_order_and_reads_back(tmp_path):
    texts = [f"passage {i}" for i in range(100)]
    a, b = Calibration.sample(texts, 10, seed=3), Calibration.sample(texts, 10, seed=3)
    assert a == b and a.sha256 == b.sha256 and len(a.texts) == 10
    assert list(a.texts) == sorted(a.texts, key=lambda t: int(t.split()[1]))  # corpus order
    assert Calibration.sample(texts, 10, seed=4).sha256 != a.sha256
    assert len(Calibration.sample(texts[:5], 256).texts) == 5  # a small corpus: all of it
    path = tmp_path / CALIBRATION_FILE
    path.write_text(Calibration(("naïve «text»", "line\nbreak")).lines(), encoding="utf-8")
    back = Calibration.read(path)
    assert back.texts == ("naïve «text»", "line\nbreak")
    assert back.describe() == {"file": CALIBRATION_FILE, "passages": 2, "sha256": back.sha256, "recipe": RECIPE}
    path.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(DataError, match=rf"{CALIBRATION_FILE}:2"):
        Calibration.read(path)
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=rf"{CALIBRATION_FILE}:2"):
        Calibration.read(path)
    assert back.check(back.describe(), "idx") is back
    with pytest.raises(DretrieverError, match="rebuild the index"):
        back.check({**back.describe(), "recipe": "int8-qdq-v0"}, "idx")
    with pytest.raises(DretrieverError, match="at least 1"):
        Calibration.sample(texts, 0)


def test_int8_graph_follows_the_recipe_and_is_cached_by_weights_and_calibration(tiny_model, tmp_path):
    import onnx

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    texts = (QUERIES + DOCS) * 3
    with pytest.raises(DretrieverError, match="calibration"):
        BiEncoder.from_pretrained(model, backend="onnx-int8").encode_docs(texts)
    calibration = Calibration.sample(DOCS * 4, 8)
    int8 = BiEncoder.from_pretrained(model, backend="onnx-int8", calibration=calibration)
    ref = BiEncoder.from_pretrained(model).encode_docs(texts, precision="fp32")
    got = int8.encode_docs(texts)
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert cosine(got, ref).min() > 0.98  # int8, so not the fp32 backends' 0.999
    assert not np.array_equal(got, ref)
    # "auto" batches: int8 documents in larger token budgets (measured), queries and torch as before
    assert (int8.auto_max_tokens("doc"), int8.auto_max_tokens("query")) == (INT8_DOC_MAX_TOKENS, DEFAULT_MAX_TOKENS)
    assert BiEncoder.from_pretrained(model).auto_max_tokens("doc") == DEFAULT_MAX_TOKENS
    np.testing.assert_allclose(int8.encode_docs(texts, max_tokens=DEFAULT_MAX_TOKENS), got, rtol=0, atol=1e-5)

    fingerprint = int8.fingerprint()[:16]
    graphs = sorted(p.name for p in (model / "onnx").glob("*.onnx"))
    assert graphs == [f"query-{fingerprint}-{RECIPE}-{calibration.sha256[:16]}.onnx", f"query-{fingerprint}.onnx"]
    graph = onnx.load(str(model / "onnx" / graphs[0])).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    fp32_graph = onnx.load(str(model / "onnx" / graphs[1])).graph
    quantised, kept = weighted_matmuls(fp32_graph)
    # per layer: q, k, v, attention output and FFN input are quantised; QK^T, AV and the FFN output stay fp32
    layers = BiEncoder.from_pretrained(model).query_model.config.num_hidden_layers
    assert (len(quantised), len(kept)) == (5 * layers, 3 * layers)

    stamp = (model / "onnx" / graphs[0]).stat().st_mtime_ns
    again = BiEncoder.from_pretrained(model, backend="onnx-int8", calibration=calibration)
    np.testing.assert_array_equal(again.encode_docs(texts), got)
    assert (model / "onnx" / graphs[0]).stat().st_mtime_ns == stamp  # the cached graph, not quantised again
    other = BiEncoder.from_pretrained(model, backend="onnx-int8", calibration=Calibration(tuple(QUERIES)))
    other.encode_queries(QUERIES)
    assert len(list((model / "onnx").glob(f"*-{RECIPE}-*.onnx"))) == 2  # another calibration, another graph


def test_int8_index_keeps_its_calibration_and_the_query_side_uses_it(scifact_small, tiny_model, tmp_path, capsys):
    from dretriever.cli import main
    from dretriever.search.retriever import Retriever

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    lines = (scifact_small / "corpus.jsonl").read_text().splitlines(keepends=True)[:120]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(lines))
    queries = query_texts(scifact_small, 20)
    built = {}
    for backend in ("onnx", "onnx-int8"):
        built[backend] = tmp_path / backend
        assert main(["index", "build", "--corpus", str(corpus), "--output", str(built[backend]), "--model",
                     str(model), "--shards", "2", "--backend", backend, "--calibration", "32"]) == 0
    root = built["onnx-int8"]
    encoder_record = json.loads((root / "manifest.json").read_text())["encoder"]
    stored = Calibration.read(root / CALIBRATION_FILE)
    assert encoder_record["backend"] == "onnx-int8" and len(stored.texts) == 32
    assert encoder_record["calibration"] == stored.describe()
    docs = [json.loads(line) for line in lines]
    assert set(stored.texts) <= {Document(d.get("title", ""), d["text"]).contents for d in docs}  # this corpus

    int8 = Retriever.load(root)
    assert int8.dense.encoder.backend == "onnx-int8" and int8.dense.encoder.calibration == stored
    fp32 = Retriever.load(built["onnx"])
    for got, ref in zip(int8.batch_search(queries, 10), fp32.batch_search(queries, 10)):
        assert len(got) == 10
        overlap = len({h.id for h in got} & {h.id for h in ref})
        assert overlap >= 7, overlap
    again = Retriever.load(root).batch_search(queries, 10)  # a second load: the same graph, the same hits
    for a, b in zip(again, int8.batch_search(queries, 10)):
        assert_same_ranking([h.id for h in a], [h.score for h in a], [h.id for h in b], [h.score for h in b], 0)

    assert main(["index", "verify", "--index", str(root)]) == 0
    assert f"{CALIBRATION_FILE}: ok" in capsys.readouterr().out
    (root / CALIBRATION_FILE).write_text(Calibration(("another",)).lines())
    with pytest.raises(DretrieverError, match="not the calibration"):
        Retriever.load(root)
    assert main(["index", "verify", "--index", str(root)]) == 1  # index verify checks the calibration too
    assert re.search(rf"{CALIBRATION_FILE}: .*is not the calibration.*\n.*1 problem", capsys.readouterr().out)
    (root / CALIBRATION_FILE).unlink()
    with pytest.raises(DretrieverError, match="calibration passages are missing"):
        Retriever.load(root)
    with pytest.raises(DretrieverError, match="built with onnx"):
        Retriever.load(built["onnx"], backend="onnx-int8")
