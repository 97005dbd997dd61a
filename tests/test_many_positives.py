"""Many graded positives per query (some queries with hundreds, as on NFCorpus): every method's loss stays finite
and at the scale of the one-positive case, positives are sampled per epoch, ADORE's appended positives are
bounded and its dev evaluation never re-encodes documents, and a dataset's own dev qrels can judge checkpoints."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dretriever.cli import main
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.train.adore import Adore, AdoreArgs
from dretriever.train.config import TrainArgs
from dretriever.train.data import load_corpus_cached, load_train_data
from dretriever.train.losses.contrastive import contrastive_loss
from dretriever.train.losses.kl import kl_distill
from dretriever.train.losses.margin_mse import inbatch_margin_mse, margin_mse
from dretriever.train.losses.pairwise import pairwise_softmax_loss
from dretriever.train.losses.ranknet import lambda_weights, ranknet_loss
from dretriever.train.samplers import BalancedMarginSampler, QueryPairs
from dretriever.train.star import Star, StarArgs
from dretriever.train.tas_balanced import TasBalanced, TasBalancedArgs
from tests.train_helpers import (SingleProcess, build_flat_index, make_many_positives_beir, make_method,
                                 write_random_negatives, write_random_teacher, write_recipe)

MANY = ["q0", "q1", "q8", "q9"]   # 300, 120, 300, 120 graded positives
ONE = ["q4", "q5", "q6", "q12"]   # one positive each


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    return make_many_positives_beir(tmp_path_factory.mktemp("many"))


@pytest.fixture(scope="module")
def many_index(many, tiny_model, tmp_path_factory):
    return build_flat_index(many, tiny_model, tmp_path_factory.mktemp("many_index") / "index")


# ------------------------------------------------------------------ the losses on synthetic scores
def _ranknet_batch(counts, n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(counts), n, generator=g) * 5
    labels = torch.zeros(len(counts), n, dtype=torch.long)
    for b, c in enumerate(counts):
        labels[b, torch.randperm(n, generator=g)[:c]] = torch.randint(1, 3, (c,), generator=g)
    return scores, labels, torch.arange(1, n + 1).expand(len(counts), n)


def test_ranknet_keeps_the_one_positive_scale_with_hundreds_of_positives():
    # 32 queries of 240 candidates at random ranks, scores ~ N(0, 25); grades 1 or 2 at random
    s1, l1, r1 = _ranknet_batch([1] * 32)
    one = ranknet_loss(s1, l1, lambda_weights(r1, 10, relevance=l1)).item()
    for counts in ([200, 120, 40, 1] * 8, [200] * 32, [5] * 32):
        s, l, r = _ranknet_batch(counts)
        new = ranknet_loss(s, l, lambda_weights(r, 10, relevance=l)).item()
        # the earlier loss: binary |g_i - g_j| weights, summed over every pair, divided by the number of queries
        pairs = (l.unsqueeze(2) > 0) & (l.unsqueeze(1) == 0)
        old = (F.softplus(s.unsqueeze(1) - s.unsqueeze(2)) * lambda_weights(r, 10) * pairs).sum().item() / len(counts)
        assert math.isfinite(new) and one / 20 < new < one, (counts, new, one)
        if counts[0] >= 200:
            assert old > 20 * one, (counts, old, one)  # what the earlier normalisation did (grew with the positives)
    # the bound holds whatever the grades: one positive of grade 2 gives the grade-1 loss
    assert ranknet_loss(s1, 2 * l1, lambda_weights(r1, 10, relevance=2 * l1)).item() == pytest.approx(one, rel=1e-6)


def test_every_in_batch_loss_is_a_mean_over_queries_whatever_is_masked():
    """STAR (pairwise, softmax) and TAS-Balanced (margin-MSE, KL) with one query whose relevant documents fill
    most of the batch: finite, the same scale as with nothing masked, and that query weighs 1/B."""
    g = torch.Generator().manual_seed(1)
    B, M = 8, 200
    q = F.normalize(torch.randn(B, 16, generator=g), dim=-1)
    d = F.normalize(torch.randn(M, 16, generator=g), dim=-1)
    labels = torch.arange(B)
    valid = ~F.one_hot(labels, M).bool()
    crowded = valid.clone()
    crowded[0, B:B + 150] = False  # 150 of query 0's positives are in the batch
    teacher = torch.randn(B, M, generator=g)
    student = q @ d.T
    losses = {
        "pairwise": lambda m: pairwise_softmax_loss(q, d, labels, m, temperature=0.05),
        "softmax": lambda m: contrastive_loss(q, d, labels, 0.05, mask=~m),  # the labelled entry is always kept
        "margin_mse": lambda m: inbatch_margin_mse(student, teacher, labels, m | F.one_hot(labels, M).bool()),
        "kl": lambda m: kl_distill(student, teacher, mask=m | F.one_hot(labels, M).bool()),
    }
    for name, f in losses.items():
        full, masked = f(valid).item(), f(crowded).item()
        assert math.isfinite(masked) and 0.5 * full < masked < 2 * full, (name, full, masked)
    # pairwise: query 0's term is its own mean, so the batch loss is the mean of the per-query means
    s = q @ d.T / 0.05
    per_q = [(F.softplus(s[i] - s[i, i])[crowded[i]]).mean() for i in range(B)]
    assert losses["pairwise"](crowded).item() == pytest.approx(torch.stack(per_q).mean().item(), rel=1e-5)
    # the pairwise Margin-MSE takes one pair per query: no positive count to scale with
    assert margin_mse(torch.ones(3), torch.zeros(3), torch.ones(3), torch.zeros(3)).item() == 0.0


# ------------------------------------------------------------------ ADORE
def _adore(many, index, model, out, **over):
    return make_method(Adore, AdoreArgs, "adore", model, many, out,
                       dict(index=str(index), top_k=40, metric_cut=10, temperature=0.05, append_positives="always"),
                       **over)[1]


def _grad_norm(enc) -> float:
    return float(torch.sqrt(sum((p.grad ** 2).sum() for p in enc.query_model.parameters() if p.grad is not None)))


def test_adore_loss_and_gradients_keep_the_one_positive_scale(many, many_index, tiny_model, tmp_path):
    adore = _adore(many, many_index, tiny_model, tmp_path / "o")
    enc = BiEncoder.from_pretrained(tiny_model)
    adore.setup(enc, SingleProcess())
    out = {}
    for name, qids in (("one", ONE), ("many", MANY)):
        enc.zero_grad(set_to_none=True)
        loss, logs = adore.loss(enc, {"qids": qids, "epoch": 0})
        loss.backward()
        out[name] = (loss.item(), _grad_norm(enc), logs)
    (l1, g1, logs1), (lm, gm, logsm) = out["one"], out["many"]
    assert logs1["positives"] == 1 and logsm["positives"] > 40
    assert logsm["appended"] <= 32  # max_appended_positives
    assert math.isfinite(lm) and math.isfinite(gm)
    assert l1 / 20 < lm < 2 * l1, (l1, lm)
    assert g1 / 20 < gm < 2 * g1, (g1, gm)


def test_adore_appends_a_bounded_seeded_sample_of_missed_positives(many, many_index, tiny_model, tmp_path):
    adore = _adore(many, many_index, tiny_model, tmp_path / "o", top_k=20, max_appended_positives=8)
    enc = BiEncoder.from_pretrained(tiny_model)
    adore.setup(enc, SingleProcess())
    qv = enc.encode_queries([adore.data.queries["q0"]], precision="fp32")
    picks = []
    for epoch in (0, 0, 1, 2):
        (row, ranks, labels), = adore.candidates(qv, ["q0"], epoch)
        assert len(row) == 20 + 8 and ranks[20:] == [21] * 8 and all(g > 0 for g in labels[20:])
        assert labels == [adore.data.qrels["q0"].get(adore.index.docid(s, i), 0) for s, i in row]  # the grades
        picks.append({adore.index.docid(s, i) for s, i in row[20:]})
    assert picks[0] == picks[1] and picks[0] != picks[2] != picks[3]  # seeded by epoch
    with pytest.raises(DretrieverError, match="max_appended_positives"):
        AdoreArgs(index=str(many_index), max_appended_positives=-1)
    # a query with few positives gets all its missed positives, as before
    qv = enc.encode_queries([adore.data.queries["q3"]], precision="fp32")
    (row, _, labels), = adore.candidates(qv, ["q3"])
    assert sum(g > 0 for g in labels) == 5


def test_adore_dev_evaluation_uses_the_index_vectors(many, many_index, tiny_model, tmp_path):
    from dretriever.train.data import DevEvaluator
    from dretriever.train.loop import _dev_evaluator

    ta, adore = make_method(Adore, AdoreArgs, "adore", tiny_model, many, tmp_path / "o",
                            dict(index=str(many_index), top_k=20), dev_split="dev", dev_corpus=0)
    enc = BiEncoder.from_pretrained(tiny_model)
    adore.setup(enc, SingleProcess())
    ev = _dev_evaluator(ta, adore)
    assert ev.doc_vectors is not None and len(ev.doc_ids) == 360 and set(ev.queries) == {f"q{i}" for i in range(16, 22)}
    fixed = ev(enc)
    assert fixed["dev_docs_encoded"] == 0 and fixed["eval_docs_s"] < 0.5
    encoded = DevEvaluator(load_corpus_cached(many), ev.queries, ev.qrels, corpus_size=0, precision="fp32")(enc)
    assert encoded["dev_docs_encoded"] == 360
    for k in ("dev_ndcg@10", "dev_recall@100", "dev_mrr@10"):
        assert fixed[k] == pytest.approx(encoded[k], abs=1e-6)


def test_adore_train_command_with_dev_split_logs_the_eval_cost(many, many_index, tiny_model, tmp_path):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "adore.yaml", method="adore", model=str(tiny_model), output_dir=str(out),
                          data=str(many), index=str(many_index), top_k=40, metric_cut=10, temperature=0.05,
                          batch_size=4, epochs=1, lr=1e-3, warmup=0.0, precision="fp32", dev_split="dev",
                          dev_corpus=0, progress=False)
    assert main(["train", str(recipe)]) == 0
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    dev = [r for r in rows if "dev_ndcg@10" in r]
    assert len(train) == 16 // 4 and all(math.isfinite(r["loss"]) and r["loss"] < 100 for r in train)
    assert len(dev) == 2 and all(r["dev_docs_encoded"] == 0 and "eval_s" in r and "eval_docs_s" in r for r in dev)


# ------------------------------------------------------------------ STAR and TAS-Balanced
def test_star_samples_positives_per_epoch(many, tiny_model, tmp_path):
    neg = write_random_negatives(many, tmp_path / "neg.jsonl")
    _, star = make_method(Star, StarArgs, "star", tiny_model, many, tmp_path / "o",
                          dict(negatives=str(neg), temperature=0.05, hard_negatives=2))
    enc = BiEncoder.from_pretrained(tiny_model)
    star.setup(enc, SingleProcess())

    def positive_of(epoch, qid="q0"):
        return next(p for b in star.batches(epoch) for q, p, _ in b["global"] if q == qid)

    assert positive_of(3) == positive_of(3)
    drawn = {positive_of(e) for e in range(8)}
    assert len(drawn) >= 5 and drawn <= set(star.data.qrels["q0"])
    loss, _ = star.loss(enc, star.batches(0)[0])
    assert math.isfinite(loss.item()) and 0 < loss.item() < 100


def test_tas_samples_positives_per_epoch_and_loss_is_finite(many, tiny_model, tmp_path):
    teacher = write_random_teacher(many, tmp_path / "teacher.jsonl")
    _, tas = make_method(TasBalanced, TasBalancedArgs, "tas-balanced", tiny_model, many, tmp_path / "o",
                         dict(teacher=str(teacher), n_clusters=2, negative_depth=20, inbatch_teacher=str(tiny_model)))
    enc = BiEncoder.from_pretrained(tiny_model)
    tas.setup(enc, SingleProcess())
    drawn = {tas.margins.sample("q0", e).positive for e in range(10)}
    assert len(drawn) >= 8 and drawn <= set(tas.data.qrels["q0"])
    assert tas.margins.sample("q0", 4) == tas.margins.sample("q0", 4)
    for batch in tas.batches(0):
        loss, logs = tas.loss(enc, batch)
        assert math.isfinite(loss.item()) and logs["pair_loss"] < 100 and logs["inbatch_loss"] < 100


def test_balanced_margin_draws_with_one_positive_are_those_of_binning_every_pair():
    rng = random.Random(0)
    negatives = [(f"n{i}", rng.random()) for i in range(50)]
    qp = QueryPairs([("p", 1.5)], negatives)
    sampler = BalancedMarginSampler({"q": qp}, bins=10, seed=7)
    pairs = list(qp)
    bins = BalancedMarginSampler.bin_pairs(pairs, 10)
    for epoch in range(20):  # the earlier sampler: bin every pair, draw a bin, then a pair
        r = random.Random(f"7:{epoch}:q:0")
        assert sampler.sample("q", epoch) == pairs[r.choice(r.choice(bins))]
    # many positives: each positive is drawn about equally often, whatever its margins
    many = QueryPairs([(f"p{i}", 10.0 * i) for i in range(4)], negatives)
    counts = np.bincount([int(BalancedMarginSampler({"q": many}, 10, seed=1).sample("q", e).positive[1:])
                          for e in range(2000)], minlength=4)
    assert all(400 <= c <= 600 for c in counts), counts


# ------------------------------------------------------------------ a dataset's own dev split
def test_dev_split_reads_the_datasets_dev_qrels(many, tmp_path):
    data = load_train_data(many, "train", dev_split="dev")
    assert len(data.queries) == 16 and set(data.dev_queries) == {f"q{i}" for i in range(16, 22)}
    assert data.dev_qrels["q16"] == {"d112": 2, "d123": 1, "d134": 1}  # grades kept
    assert max(data.qrels["q0"].values()) == 2 and len(data.qrels["q0"]) == 300
    four = load_train_data(many, "train", dev_queries=4, dev_split="dev")
    assert len(four.dev_queries) == 4 and four.dev_queries == load_train_data(many, "train", 4, dev_split="dev").dev_queries
    assert len(four.queries) == 16  # nothing carved from train
    # the default is unchanged: dev_queries carved from the training split
    carved = load_train_data(many, "train", dev_queries=4)
    assert len(carved.queries) == 12 and set(carved.dev_queries) <= {f"q{i}" for i in range(16)}
    common = dict(method="star", output_dir=str(tmp_path / "o"), data=str(many))
    assert TrainArgs(**common, dev_split="dev").has_dev and not TrainArgs(**common).has_dev
    with pytest.raises(DretrieverError, match="dev_split"):
        TrainArgs(**common, dev_split="test")  # no qrels/test.tsv
    with pytest.raises(DretrieverError, match="dev_split"):
        TrainArgs(**common, dev_split="train")
