"""ADORE: candidates from the fixed index (+ missed positives), query-tower-only training, the train command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dretriever.cli import main
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.index.sharded import ShardedIndex
from dretriever.train.adore import Adore, AdoreArgs
from tests.conftest import make_tiny_bert
from tests.train_helpers import SingleProcess, build_flat_index, make_method, make_toy_beir, write_recipe


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_beir(tmp_path_factory.mktemp("adore_toy"))


@pytest.fixture(scope="module")
def toy_index(toy, tiny_model, tmp_path_factory):
    return build_flat_index(toy, tiny_model, tmp_path_factory.mktemp("adore_index") / "index")


def _adore(toy, index, model, out, **over):
    return make_method(Adore, AdoreArgs, "adore", model, toy, out, dict(index=str(index), top_k=5, metric_cut=3),
                       **over)[1]


def test_candidates_are_the_top_k_plus_missed_positives(toy, toy_index, tiny_model, tmp_path):
    adore = _adore(toy, toy_index, tiny_model, tmp_path / "o")
    enc = BiEncoder.from_pretrained(tiny_model)
    adore.setup(enc, SingleProcess())
    qids = ["q0", "q3", "q5"]
    qvecs = enc.encode_queries([adore.data.queries[q] for q in qids], precision="fp32")
    index = ShardedIndex.open(toy_index)
    docvecs = {index.docid(s, i): index.shards[s].index.reconstruct(i) for s in range(2)
               for i in range(index.shards[s].index.ntotal)}
    for qid, qv, (row, ranks, labels) in zip(qids, qvecs, adore.candidates(qvecs, qids)):
        ids = [index.docid(s, i) for s, i in row]
        exact = sorted(docvecs, key=lambda d: -float(docvecs[d] @ qv))[:5]
        assert set(ids[:5]) == set(exact)  # the search over the fixed vectors
        assert ranks[:5] == [1, 2, 3, 4, 5]
        positives = set(adore.data.positives(qid))
        assert positives <= set(ids)
        assert all(r == 6 for d, r in zip(ids[5:], ranks[5:])) and set(ids[5:]) <= positives
        assert labels == [d in positives for d in ids]


def test_only_the_query_tower_learns_and_the_doc_tower_is_the_indexed_model(toy, toy_index, tiny_model, tmp_path):
    adore = _adore(toy, toy_index, tiny_model, tmp_path / "o", temperature=0.05)
    enc = BiEncoder.from_pretrained(tiny_model)
    adore.setup(enc, SingleProcess())
    assert not enc.tied and all(not p.requires_grad for p in enc.doc_model.parameters())
    batch = adore.batches(0)[0]
    loss, logs = adore.loss(enc, batch)
    # first_positive_rank by hand: the rank of each query's first judged positive in an exhaustive top-5 over
    # the index's vectors, 6 when none is there (a missed positive is appended at rank top_k + 1)
    index = ShardedIndex.open(toy_index)
    docvecs = {index.docid(s, i): index.shards[s].index.reconstruct(i) for s in range(len(index.shards))
               for i in range(index.shards[s].index.ntotal)}
    ranks = []
    for qid, qv in zip(batch["qids"], enc.encode_queries([adore.data.queries[q] for q in batch["qids"]],
                                                         precision="fp32")):
        top5 = sorted(docvecs, key=lambda d: -float(docvecs[d] @ qv))[:5]
        positives = set(adore.data.positives(qid))
        ranks.append(next((r for r, d in enumerate(top5, start=1) if d in positives), 6))
    assert logs["first_positive_rank"] == pytest.approx(np.mean(ranks)), ranks
    assert logs["mrr@10"] == pytest.approx(np.mean([1 / r if r <= 5 else 1 / 6 for r in ranks]))
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in enc.doc_model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.query_model.parameters())
    assert {id(p) for p in adore.trainable_parameters(enc)} == {id(p) for p in enc.query_model.parameters()}


def test_index_of_another_model_is_refused(toy, toy_index, tmp_path):
    other = make_tiny_bert(tmp_path / "other", seed=1)
    adore = _adore(toy, toy_index, other, tmp_path / "o")
    with pytest.raises(DretrieverError, match="other weights"):
        adore.setup(BiEncoder.from_pretrained(other), SingleProcess())
    with pytest.raises(DretrieverError, match="metric_cut"):
        AdoreArgs(index=str(toy_index), top_k=5, metric_cut=6)


def test_train_command_improves_training_ranking_and_keeps_documents(toy, toy_index, tiny_model, tmp_path):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "adore.yaml", method="adore", model=str(tiny_model), output_dir=str(out),
                          data=str(toy), index=str(toy_index), top_k=10, metric_cut=10, temperature=0.05,
                          batch_size=8, epochs=8, lr=3e-3, warmup=0.0, precision="fp32", dev_queries=0,
                          progress=False)
    assert main(["train", str(recipe)]) == 0
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if "loss" in l]
    assert len(rows) == 8 * (32 // 8)
    first, last = np.mean([r["mrr@10"] for r in rows[:4]]), np.mean([r["mrr@10"] for r in rows[-4:]])
    assert last > first + 0.05, (first, last)  # the query encoder learned to rank the positives up
    trained = BiEncoder.from_pretrained(out / "final")
    start = BiEncoder.from_pretrained(tiny_model)
    # the saved document tower is the starting model: re-indexing reproduces the fixed vectors
    manifest = json.loads((toy_index / "manifest.json").read_text())
    assert BiEncoder(trained.doc_model, trained.tokenizer, trained.config).fingerprint() == \
        manifest["encoder"]["fingerprint"]
    text = ["protein cell gene"]
    np.testing.assert_allclose(trained.encode_docs(text, precision="fp32"), start.encode_docs(text, precision="fp32"),
                               atol=1e-6)
    assert not np.allclose(trained.encode_queries(text, precision="fp32"),
                           start.encode_queries(text, precision="fp32"), atol=1e-4)
    assert (out / "training_curve.png").is_file()

    # `dretriever adore index` reuses the starting index; it equals an index built by encoding with the model
    reused, built = tmp_path / "reused", tmp_path / "built"
    assert main(["adore", "index", "--index", str(toy_index), "--model", str(out / "final"),
                 "--output", str(reused)]) == 0
    assert main(["index", "build", "--corpus", str(toy), "--output", str(built), "--model", str(out / "final"),
                 "--shards", "2", "--precision", "fp32"]) == 0
    a, b = ShardedIndex.open(reused), ShardedIndex.open(built)
    assert a.manifest["encoder"] == b.manifest["encoder"]
    for sa, sb in zip(a.shards, b.shards):
        assert sa.docids == sb.docids
        np.testing.assert_allclose(sa.index.reconstruct_n(0, sa.index.ntotal), sb.index.reconstruct_n(0, sb.index.ntotal),
                                   atol=1e-6)
    from dretriever.search.dense import DenseSearcher

    run = DenseSearcher.load(reused, model=str(out / "final"), precision="fp32").search({"q": "protein cell"}, k=3)
    assert len(run["q"]) == 3
    assert main(["adore", "index", "--index", str(toy_index), "--model", str(out / "final"),
                 "--output", str(reused)]) == 2  # never overwrites
    assert main(["adore", "index", "--index", str(toy_index), "--model", str(make_tiny_bert(tmp_path / "o2", seed=2)),
                 "--output", str(tmp_path / "x")]) == 2  # a model whose document tower is not the indexed one
