"""ADORE: candidates from the fixed index (+ missed positives), query-tower-only training, the train command."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch
from dretriever.cli import main
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.index.sharded import ShardedIndex
from dretriever.train.adore import Adore, AdoreArgs
from dretriever.train.losses.ranknet import lambda_weights, ranknet_loss
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
    adore = _adore(toy, toy_index, tiny_model, tmp_path / "o", append_positives="always")
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
        AdoreArgs(index=str(toy_index), top_k=5, metric_cut=-1)


def test_defaults_are_drhards_and_each_option_is_checked(toy_index):
    args = AdoreArgs(index=str(toy_index))
    assert (args.top_k, args.metric_cut, args.cut, args.normalize, args.append_positives, args.temperature) == \
        (200, 200, 200, "pairs", "if-none-retrieved", None)
    # a cut above top_k (or none) cuts at top_k: appended positives (rank top_k + 1) always lie beyond it
    assert AdoreArgs(index=str(toy_index), top_k=5, metric_cut=6).cut == 5
    assert AdoreArgs(index=str(toy_index), top_k=5, metric_cut=0).cut == 5
    assert AdoreArgs(index=str(toy_index), top_k=5, metric_cut=3).cut == 3
    for name, bad in (("normalize", "queries"), ("append_positives", "never"), ("temperature", 0.0)):
        with pytest.raises(DretrieverError, match=name):
            AdoreArgs(index=str(toy_index), **{name: bad})
    for f in dataclasses.fields(AdoreArgs):
        assert "default" in f.metadata["help"], f.name


# ------------------------------------------------------------------ DRhard's normalisation: a mean over pairs
def test_ranknet_pairs_normalisation_is_the_mean_over_valid_pairs():
    """Two queries; ranks 1..4, cut 3 (g = [1, 1/2, 1/3, 0]), binary |g_i - g_j| weights. Query 0: relevant at
    ranks 2 and 4, pairs (1,0) (1,2) (3,0) (3,2); query 1: relevant at rank 1, rank 4 padding, pairs (0,1) (0,2).
    The pair (3,2)'s weight 1/3 and (3,0)'s 1 count whatever they are: the divisor is the number of pairs."""
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.2, 0.7, -0.4, 9.0]])
    labels = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 0]])
    ranks = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    w = lambda_weights(ranks, cut=3)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus(s_j - s_i) = -log sigmoid(s_i - s_j)
    q0 = 0.5 * sp(2.0 - 1.0) + (1 / 6) * sp(0.5 - 1.0) + 1.0 * sp(2.0 + 1.0) + (1 / 3) * sp(0.5 + 1.0)
    q1 = 0.5 * sp(0.7 - 0.2) + (2 / 3) * sp(-0.4 - 0.2)
    assert ranknet_loss(scores, labels, w, mask).item() == pytest.approx((q0 / 4 + q1 / 2) / 2, rel=1e-6)
    assert ranknet_loss(scores, labels, w, mask, normalize="pairs").item() == \
        pytest.approx((q0 / 4 + q1 / 2) / 2, rel=1e-6)
    # positives: divided by the relevant candidates (2 and 1)
    assert ranknet_loss(scores, labels, w, mask, normalize="positives").item() == \
        pytest.approx((q0 / 2 + q1 / 1) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        ranknet_loss(scores, labels, w, mask, normalize="queries")


def test_ranknet_pairs_equals_drhards_two_sided_sum_over_num_pairs():
    """DRhard sums each (relevant, non-relevant) pair in both orientations and divides by 2 x their number; on
    random binary queries (one positive among 200, as ADORE's top 200, and several) that is our ``pairs`` loss,
    and ``positives`` is (candidates - positives) times larger for each query."""
    g = torch.Generator().manual_seed(0)
    n = 200
    for positives in (1, 7):
        scores = torch.randn(3, n, generator=g) * 3
        labels = torch.zeros(3, n, dtype=torch.long)
        for b in range(3):
            labels[b, torch.randperm(n, generator=g)[:positives]] = 1
        ranks = torch.arange(1, n + 1).expand(3, n)
        w = lambda_weights(ranks, cut=200)
        drhard = []
        for b in range(3):
            t = labels[b].float().view(-1, 1)
            diff = t - t.T
            pos_pairs, neg_pairs = (diff > 0).float(), (diff < 0).float()
            y = scores[b].view(-1, 1)
            c = pos_pairs * torch.log1p(torch.exp(-(y - y.T))) + neg_pairs * torch.log1p(torch.exp(y - y.T))
            drhard.append((c * w[b]).sum() / (2 * pos_pairs.sum()))
        expected = torch.stack(drhard).mean().item()
        assert ranknet_loss(scores, labels, w).item() == pytest.approx(expected, rel=1e-5)
        assert ranknet_loss(scores, labels, w, normalize="positives").item() == \
            pytest.approx(expected * (n - positives), rel=1e-5)


# ------------------------------------------------------------------ appended positives
def test_positives_are_appended_only_when_none_is_retrieved(toy, toy_index, tiny_model, tmp_path):
    """DRhard's default: q0 (positives d0, d1) gets both appended when its top_k holds neither, none when it
    holds one; ``always`` appends every missed one."""
    enc = BiEncoder.from_pretrained(tiny_model)
    drhard = _adore(toy, toy_index, tiny_model, tmp_path / "a")
    always = _adore(toy, toy_index, tiny_model, tmp_path / "b", append_positives="always")
    drhard.setup(enc, SingleProcess())
    always.setup(BiEncoder.from_pretrained(tiny_model), SingleProcess())
    assert sorted(drhard.data.positives("q0")) == ["d0", "d1"]
    assert drhard.appended("q0", {"d5", "d7"}) == always.appended("q0", {"d5", "d7"}) and \
        sorted(drhard.appended("q0", {"d5", "d7"})) == ["d0", "d1"]
    assert drhard.appended("q0", {"d1", "d7"}) == [] and always.appended("q0", {"d1", "d7"}) == ["d0"]
    # through a search of every training query: the rule holds, and both cases occur
    qids = sorted(drhard.data.queries)
    qvecs = enc.encode_queries([drhard.data.queries[q] for q in qids], precision="fp32")
    cases = set()
    for qid, (row, ranks, labels), (row_a, _, _) in zip(qids, drhard.candidates(qvecs, qids),
                                                        always.candidates(qvecs, qids)):
        found = sum(labels[:5])
        cases.add(found > 0)
        if found:
            assert len(row) == 5 and ranks == [1, 2, 3, 4, 5]
        else:
            assert len(row) == 5 + len(drhard.data.positives(qid)) and all(labels[5:])
            assert ranks[5:] == [6] * (len(row) - 5)
        assert row == row_a[:len(row)] and len(row_a) == 5 + len(drhard.data.positives(qid)) - found
    assert cases == {True, False}


# ------------------------------------------------------------------ the index must keep exact vectors
def _index(toy, model, out, factory, keep_vectors="none"):
    from dretriever.index.build import build_index, corpus_source
    from dretriever.train.data import load_corpus_cached

    build_index(corpus_source(load_corpus_cached(toy), 2, {"path": str(toy)}), BiEncoder.from_pretrained(model),
                out, model=str(model), factory=factory, precision="fp32", progress=False, keep_vectors=keep_vectors)
    return out


def test_an_index_without_exact_vectors_is_refused_and_an_approximate_search_warned(toy, tiny_model, tmp_path,
                                                                                     caplog):
    sq8 = _index(toy, tiny_model, tmp_path / "sq8", "SQ8")
    adore = _adore(toy, sq8, tiny_model, tmp_path / "o")
    with pytest.raises(DretrieverError, match=r"index: .*sq8 \(factory 'SQ8'\) keeps no exact document vectors"):
        adore.setup(BiEncoder.from_pretrained(tiny_model), SingleProcess())
    hnsw = _index(toy, tiny_model, tmp_path / "hnsw", "HNSW8", keep_vectors="float32")
    adore = _adore(toy, hnsw, tiny_model, tmp_path / "o2")
    with caplog.at_level(logging.WARNING, logger="dretriever.train.adore"):
        adore.setup(BiEncoder.from_pretrained(tiny_model), SingleProcess())
    assert "(factory 'HNSW8') searches approximately" in caplog.text
    # its candidates are scored against the kept vectors: the exact ones
    flat = ShardedIndex.open(_index(toy, tiny_model, tmp_path / "flat", "Flat"))
    hits = [adore.index.positions[d] for d in ("d0", "d9", "d40")]
    np.testing.assert_array_equal(adore.index.vectors_at(hits), flat.vectors_at([flat.positions[d]
                                                                                 for d in ("d0", "d9", "d40")]))


# ------------------------------------------------------------------ temperature: auto from the encoder
def test_temperature_auto_is_005_for_normalised_encoders_and_1_for_raw_inner_products(toy, toy_index, tiny_model,
                                                                                     tmp_path, caplog):
    adore = _adore(toy, toy_index, tiny_model, tmp_path / "o")
    assert adore.args.temperature is None
    with caplog.at_level(logging.INFO, logger="dretriever.train.temperature"):
        adore.setup(BiEncoder.from_pretrained(tiny_model), SingleProcess())
    assert adore.args.temperature == 0.05 and "adore: temperature 0.05 (auto" in caplog.text
    explicit = _adore(toy, toy_index, tiny_model, tmp_path / "o2", temperature=0.5)
    explicit.setup(BiEncoder.from_pretrained(tiny_model), SingleProcess())
    assert explicit.args.temperature == 0.5
    # an encoder that does not normalise (and its own index): raw inner products, temperature 1
    raw = BiEncoder.from_pretrained(tiny_model)
    raw.config.normalize = False
    raw.save_pretrained(tmp_path / "raw")
    raw_index = build_flat_index(toy, tmp_path / "raw", tmp_path / "raw_index")
    adore = _adore(toy, raw_index, tmp_path / "raw", tmp_path / "o3")
    enc = BiEncoder.from_pretrained(tmp_path / "raw")
    adore.setup(enc, SingleProcess())
    assert adore.args.temperature == 1.0
    # the loss divides the scores by it: the same loss as an explicit temperature of 1, not of 0.05
    batch = {"qids": ["q0", "q1", "q2", "q3"], "epoch": 0}
    one = _adore(toy, raw_index, tmp_path / "raw", tmp_path / "o4", temperature=1.0)
    one.setup(BiEncoder.from_pretrained(tmp_path / "raw"), SingleProcess())
    enc.eval()
    with torch.no_grad():
        assert adore.loss(enc, batch)[0].item() == pytest.approx(one.loss(enc, batch)[0].item(), rel=1e-6)


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
