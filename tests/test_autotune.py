"""The query backend chosen per CPU (dretriever/autotune.py): measured over every candidate backend and token budget,
cached under a key that changes with the CPU, precision and weights, read back without measuring, used by
``Retriever.load`` when no backend is asked for, and pinned by ``DRETRIEVER_QUERY_BACKEND``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dretriever import autotune
from dretriever.cli import main
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from tests.conftest import assert_same_ranking, corpus_head, make_tiny_bert, query_texts


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory):
    """A copy of the tiny BERT for this module: its ONNX export is made once, into this copy only."""
    return Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("autotune") / "model"))


@pytest.fixture
def unpinned(monkeypatch, tmp_path):
    """No pin (conftest pins the index's backend for every other test) and a cache of this test's own."""
    monkeypatch.delenv(autotune.PIN_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "dretriever" / autotune.CACHE_NAME


def test_sample_queries_are_seeded_whole_words_of_query_length(model):
    tokenizer = BiEncoder.from_pretrained(model).tokenizer
    queries = autotune.sample_queries(tokenizer)
    assert len(queries) == autotune.SAMPLE and queries == autotune.sample_queries(tokenizer)
    assert queries != autotune.sample_queries(tokenizer, seed=1)
    lengths = [len(q.split()) for q in queries]
    assert min(lengths) >= 4 and max(lengths) <= 24 and len(set(lengths)) > 10
    assert all(w.isalpha() and not w.startswith("##") for q in queries for w in q.split())


def test_the_fastest_setting_is_measured_once_over_every_candidate_then_read_from_the_cache(model, unpinned):
    encoder = BiEncoder.from_pretrained(model)
    choice = autotune.fastest(encoder, "fp32")
    assert not choice.cached
    want = {f"{b}@{t}" for b in ("torch", "onnx", "openvino") for t in autotune.BUDGETS}
    assert set(choice.qps) == want and all(v > 0 for v in choice.qps.values())
    assert f"{choice.backend}@{choice.max_tokens}" == max(choice.qps, key=choice.qps.get)
    entries = json.loads(unpinned.read_text())
    assert list(entries) == [autotune.cache_key(encoder, "fp32")]
    stamp = unpinned.stat().st_mtime_ns
    again = autotune.fastest(BiEncoder.from_pretrained(model), "fp32")
    assert again.cached and (again.backend, again.max_tokens, again.qps) == (choice.backend, choice.max_tokens,
                                                                             choice.qps)
    assert unpinned.stat().st_mtime_ns == stamp  # read, not measured and written again


def test_a_backend_that_cannot_run_the_model_is_left_out_with_a_warning(model, caplog):
    encoder = BiEncoder.from_pretrained(model)
    with caplog.at_level("WARNING", logger="dretriever.autotune"):  # onnx-int8 without calibration passages fails
        qps = autotune.measure(encoder, "fp32", backends=("onnx-int8", "torch"), budgets=(256,), rounds=1)
    assert list(qps) == ["torch@256"] and qps["torch@256"] > 0
    assert "backend onnx-int8 left out" in caplog.text and "calibration" in caplog.text
    with pytest.raises(DretrieverError, match="no backend of"):
        autotune.measure(encoder, "fp32", backends=("onnx-int8",), budgets=(256,), rounds=1)


def test_the_key_changes_with_precision_weights_and_threads(model, tmp_path, monkeypatch):
    encoder = BiEncoder.from_pretrained(model)
    other = BiEncoder.from_pretrained(make_tiny_bert(tmp_path / "other", seed=1))
    key = autotune.cache_key(encoder, "fp32")
    assert key == autotune.cache_key(BiEncoder.from_pretrained(model), "fp32")
    assert key != autotune.cache_key(encoder, "auto") and key != autotune.cache_key(other, "fp32")
    assert autotune.cpu_key() in key and "torch " in key and "onnxruntime " in key and "openvino " in key
    monkeypatch.setattr(autotune.torch, "get_num_threads", lambda: 97)
    assert "97 threads" in autotune.cache_key(encoder, "fp32")


def test_only_torch_runs_bf16_so_nothing_is_measured_or_cached(model, unpinned):
    assert autotune.fastest(BiEncoder.from_pretrained(model), "bf16") is None
    assert not unpinned.exists()


def _index(model: Path, scifact_small: Path, out: Path) -> Path:
    corpus = corpus_head(scifact_small, 60, out.parent / "corpus.jsonl")
    assert main(["index", "build", "--corpus", str(corpus), "--output", str(out), "--model", str(model),
                 "--shards", "2", "--precision", "fp32"]) == 0
    return out


def test_retriever_load_takes_the_cached_choice_and_its_budget_and_ranks_as_torch(model, scifact_small, tmp_path,
                                                                                  unpinned, monkeypatch):
    from dretriever.search.retriever import Retriever

    root = _index(model, scifact_small, tmp_path / "index")
    encoder = BiEncoder.from_pretrained(model)
    unpinned.parent.mkdir(parents=True)
    unpinned.write_text(json.dumps({autotune.cache_key(encoder, "fp32"): {"backend": "onnx", "max_tokens": 512,
                                                                          "qps": {"onnx@512": 1.0}}}))
    tuned = Retriever.load(root, precision="fp32")
    assert tuned.dense.encoder.backend == "onnx" and tuned.dense.max_tokens == 512
    assert Retriever.load(root, precision="fp32", max_tokens=64).dense.max_tokens == 64  # asked for: kept
    assert Retriever.load(root, precision="fp32", backend="torch").dense.encoder.backend == "torch"
    monkeypatch.setenv(autotune.PIN_ENV, "index")
    ref = Retriever.load(root, precision="fp32")
    assert ref.dense.encoder.backend == "torch" and ref.dense.max_tokens == "auto"
    queries = query_texts(scifact_small, 12)
    for got, want in zip(tuned.batch_search(queries, 10), ref.batch_search(queries, 10)):
        assert_same_ranking([h.id for h in got], [h.score for h in got], [h.id for h in want],
                            [h.score for h in want], atol=1e-4, last_run_may_be_cut=True)


def test_the_pin_chooses_without_measuring_and_a_bad_pin_is_refused_by_name(model, unpinned, monkeypatch):
    encoder = BiEncoder.from_pretrained(model)
    monkeypatch.setenv(autotune.PIN_ENV, "openvino")
    pinned, budget = autotune.query_encoder(encoder, "fp32", "torch")
    assert pinned.backend == "openvino" and budget == "auto" and pinned.query_model is encoder.query_model
    assert not unpinned.exists()
    for bad in ("onnx-int8", "tensorrt"):
        monkeypatch.setenv(autotune.PIN_ENV, bad)
        with pytest.raises(DretrieverError, match=f"{autotune.PIN_ENV}: expected index or one of .*'{bad}'"):
            autotune.query_encoder(encoder, "fp32", "torch")
    monkeypatch.delenv(autotune.PIN_ENV)
    int8 = encoder.with_backend("onnx-int8")
    assert autotune.query_encoder(int8, "fp32", "onnx-int8") == (int8, "auto")  # an int8 index keeps int8
    assert not unpinned.exists()
