"""TAS-Balanced: cluster batches, balanced margin sampling, pairs, dual-teacher loss values, the train command."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import fields

import numpy as np
import pytest

from dretriever.cli import main
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.train.samplers import BalancedMarginSampler, ClusterBatchSampler, Pair, cluster_queries
from dretriever.train.config import parse_recipe
from dretriever.train.tas_balanced import (TasBalanced, TasBalancedArgs, build_pairs, inbatch_mask, looks_min_max,
                                         margin_calibration_factor)
from tests.conftest import make_tiny_bert
from tests.train_helpers import make_method, make_toy_beir, write_recipe


class _Acc:
    num_processes, process_index = 1, 0


# ------------------------------------------------------------------ samplers
def test_kmeans_recovers_separated_topics():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:4] * 5
    x = np.concatenate([c + 0.1 * rng.standard_normal((25, 8)).astype(np.float32) for c in centres])
    labels = cluster_queries(x, 4, seed=0)
    for blob in range(4):
        assert len(set(labels[blob * 25:(blob + 1) * 25])) == 1
    assert len(set(labels)) == 4
    with pytest.raises(DretrieverError, match="n_clusters"):
        cluster_queries(x, 101)


def _clusters_of(batch, clusters):
    return {int(clusters[i]) for i in batch}


def test_full_batches_every_query_once_per_epoch():
    clusters = np.array([0] * 10 + [1] * 7 + [2] * 3 + [3] * 12)  # 32 queries
    sampler = ClusterBatchSampler(clusters, batch_size=5, seed=3)
    b0 = sampler.batches(0)
    assert [len(b) for b in b0] == [5] * 7 and len(sampler) == 7  # ceil(32 / 5), all full
    before_last = [i for b in b0[:-1] for i in b]
    assert len(before_last) == len(set(before_last)) == 30  # each query once ...
    assert sorted(before_last + b0[-1][:2]) == list(range(32))  # ... and the last two fresh ones lead the last batch
    assert len(set(b0[-1])) == 5 and set(b0[-1][2:]) <= set(before_last)  # topped up with 3 used ones
    # topped up from the leftover's own clusters first
    mine = _clusters_of(b0[-1][:2], clusters)
    same = [i for i in before_last if int(clusters[i]) in mine]
    assert b0[-1][2:] == (same + [i for i in before_last if i not in same])[:3]
    # one cluster per batch: a batch mixes clusters only where one runs out (3 times in an epoch of 4 clusters)
    assert sum(len(_clusters_of(b, clusters)) - 1 for b in b0[:-1]) <= 3
    # deterministic given the seed and the epoch
    assert b0 == ClusterBatchSampler(clusters, batch_size=5, seed=3).batches(0)
    assert b0 != sampler.batches(1) and b0 != ClusterBatchSampler(clusters, batch_size=5, seed=4).batches(0)
    exact = ClusterBatchSampler(clusters, batch_size=8, seed=0).batches(2)
    assert sorted(i for b in exact for i in b) == list(range(32)) and [len(b) for b in exact] == [8] * 4


def test_clusters_per_batch_is_the_minimum_while_clusters_remain():
    clusters = np.array([0] * 10 + [1] * 7 + [2] * 3 + [3] * 12)
    two = ClusterBatchSampler(clusters, batch_size=4, clusters_per_batch=2, seed=3).batches(0)
    assert [len(b) for b in two] == [4] * 8 and sorted(i for b in two for i in b) == list(range(32))
    for t, batch in enumerate(two):
        used = {i for b in two[:t] for i in b}
        open_clusters = {int(clusters[i]) for i in range(32) if i not in used}
        assert len(_clusters_of(batch, clusters)) >= min(2, len(open_clusters))
    three = ClusterBatchSampler(clusters, batch_size=4, clusters_per_batch=3, seed=0).batches(0)  # not a divisor
    assert [len(b) for b in three] == [4] * 8
    with pytest.raises(DretrieverError, match="exceeds the number of training queries"):
        ClusterBatchSampler(clusters, batch_size=33)
    with pytest.raises(DretrieverError, match="clusters_per_batch"):
        ClusterBatchSampler(clusters, batch_size=4, clusters_per_batch=5)


def test_warns_when_clusters_are_too_small_for_the_batch(caplog):
    with caplog.at_level(logging.WARNING, logger="dretriever.train.samplers"):
        ClusterBatchSampler(np.arange(40) % 20, batch_size=8, seed=0)  # 20 clusters of 2
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "clusters too small" in msg and "40 queries in 20 clusters (mean 2.0 per cluster)" in msg
    assert "batch_size 8 / clusters_per_batch 1 = 8.0" in msg and "n_clusters <= 5" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dretriever.train.samplers"):
        ClusterBatchSampler(np.arange(40) % 5, batch_size=8, seed=0)  # 5 clusters of 8: large enough
        ClusterBatchSampler(np.arange(40) % 10, batch_size=8, clusters_per_batch=2, seed=0)  # 4 >= 8 / 2
    assert not caplog.records


def test_margin_bins_hand_computed():
    pairs = [Pair("p", f"n{i}", m, 0.0) for i, m in enumerate([0.0, 0.05, 0.15, 0.5, 0.95, 1.0])]
    # range [0, 1], 10 bins of width 0.1: 0.0/0.05 -> bin 0, 0.15 -> 1, 0.5 -> 5, 0.95/1.0 -> 9
    assert BalancedMarginSampler.bin_pairs(pairs, 10) == [[0, 1], [2], [3], [4, 5]]
    same = [Pair("p", "a", 1.0, 0.5), Pair("p", "b", 2.0, 1.5)]
    assert BalancedMarginSampler.bin_pairs(same, 10) == [[0, 1]]


def test_all_margin_bins_reachable_and_balanced():
    # 91 pairs with margins near 0 and one pair in each of the nine other bins
    margins = [0.001 * i for i in range(91)] + [b + 0.5 for b in range(1, 10)]
    pairs = {"q": [Pair("p", f"n{i}", m, 0.0) for i, m in enumerate(margins)]}
    sampler = BalancedMarginSampler(pairs, bins=10, seed=0)
    draws = [sampler.sample("q", epoch=0, draw=k).margin for k in range(3000)]
    bins = Counter(min(int(m), 9) for m in draws)
    assert set(bins) == set(range(10))  # every bin is reached
    assert all(200 <= bins[b] <= 400 for b in range(10)), bins  # about 300 each (uniform over bins, not pairs)
    assert sampler.sample("q", 1, 5) == sampler.sample("q", 1, 5)
    with pytest.raises(DretrieverError, match="no \\(positive, negative\\) pair"):
        BalancedMarginSampler({"q": []})


def test_build_pairs_uses_judged_positives_and_unjudged_negatives():
    teacher = {"q1": [("a", 5.0), ("b", 4.0), ("p", 3.0), ("c", 2.0), ("d", 1.0)], "q2": [("x", 1.0)]}
    qrels = {"q1": {"p": 1, "b": 1}, "q2": {"y": 1}, "q3": {"z": 1}}
    pairs = build_pairs(teacher, qrels, depth=2, scale=2.0)
    assert set(pairs) == {"q1"}  # q2's positive is unscored, q3 has no teacher line
    assert {(x.positive, x.negative) for x in pairs["q1"]} == {("p", "a"), ("p", "c"), ("b", "a"), ("b", "c")}
    assert {x.negative: x.margin for x in pairs["q1"] if x.positive == "p"} == {"a": -4.0, "c": 2.0}


def test_build_pairs_positive_depth_keeps_positives_the_teacher_ranks_high():
    teacher = {"q1": [("a", 5.0), ("p1", 4.5), ("b", 4.0), ("p2", 1.0), ("c", 0.5), ("p3", 3.0)],
               "q2": [("x", 9.0), ("y", 8.0), ("p5", 1.0), ("p4", 2.0)]}
    qrels = {"q1": {"p1": 1, "p2": 1, "p3": 2}, "q2": {"p4": 1, "p5": 1}}
    every = build_pairs(teacher, qrels, depth=3)
    assert {d for d, _ in every["q1"].positives} == {"p1", "p2", "p3"}
    # top 3 by score: a 5.0, p1 4.5, b 4.0 (p3 sits 4th although listed last); q2 has no positive in its top 3
    pairs = build_pairs(teacher, qrels, depth=3, positive_depth=3)
    assert [d for d, _ in pairs["q1"].positives] == ["p1"]
    assert [d for d, _ in pairs["q2"].positives] == ["p4"]  # its best-scored positive, not the first listed
    assert pairs["q1"].negatives == every["q1"].negatives  # negatives do not depend on positive_depth
    assert {d for d, _ in build_pairs(teacher, qrels, depth=3, positive_depth=4)["q1"].positives} == {"p1", "p3"}
    with pytest.raises(DretrieverError, match="positive_depth"):
        TasBalancedArgs(teacher=__file__, positive_depth=-1)


# ------------------------------------------------------------------ the method
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_beir(tmp_path_factory.mktemp("tas_toy"), n_docs=48, n_queries=32)


@pytest.fixture(scope="module")
def dense_teacher(toy, tiny_model, tmp_path_factory):
    """Teacher scores of the tiny model itself (dense teacher), and its index."""
    root = tmp_path_factory.mktemp("tas_teacher")
    out = root / "teacher.jsonl"
    assert main(["teacher", "--data", str(toy), "--split", "train", "--teacher", "dense", "--model", str(tiny_model),
                 "--depth", "20", "--output", str(out), "--index_root", str(root / "indexes"), "--shards", "1",
                 "--precision", "fp32", "--progress", "false"]) == 0
    index = next((root / "indexes").iterdir())
    return out, index


def _tas(toy, teacher, model, out, **over):
    return make_method(TasBalanced, TasBalancedArgs, "tas-balanced", model, toy, out,
                       dict(teacher=str(teacher), n_clusters=4, negative_depth=10), **over)[1]


def test_batches_are_full_and_hold_every_query(toy, dense_teacher, tiny_model, tmp_path):
    tas = _tas(toy, dense_teacher[0], tiny_model, tmp_path / "o")
    tas.setup(BiEncoder.from_pretrained(tiny_model), _Acc())
    batches = tas.batches(0)
    assert [len(b) for b in batches] == [4] * 8  # 32 queries, batch_size 4
    assert sorted(q for b in batches for q, _ in b) == tas.qids
    cluster_of = dict(zip(tas.qids, tas.clusters.tolist()))
    assert sum(len({cluster_of[q] for q, _ in b}) - 1 for b in batches) <= 3  # 4 clusters: 3 run out mid-epoch
    for batch in batches:
        for qid, pair in batch:
            assert pair.positive in tas.data.qrels[qid] and pair.negative not in tas.data.qrels[qid]
    auto = _tas(toy, dense_teacher[0], tiny_model, tmp_path / "a", n_clusters=0)  # auto: 32 // 32 = 1 cluster
    auto.setup(BiEncoder.from_pretrained(tiny_model), _Acc())
    assert set(auto.clusters.tolist()) == {0}


def test_positive_depth_at_setup_draws_the_teachers_best_positive(toy, dense_teacher, tiny_model, tmp_path, caplog):
    from dretriever.teacher import read_teacher_scores

    tas = _tas(toy, dense_teacher[0], tiny_model, tmp_path / "o", positive_depth=1, calibration_pairs=0,
               student_scale=1.0)
    with caplog.at_level(logging.INFO, logger="dretriever.train.tas_balanced"):
        tas.setup(BiEncoder.from_pretrained(tiny_model), _Acc())
    scores = {q: dict(h) for q, h in read_teacher_scores(dense_teacher[0]).items()}
    assert sum(len([d for d in tas.data.qrels[q] if d in scores[q]]) > 1 for q in tas.qids) >= 3  # not vacuous
    best = {q: max((d for d, r in tas.data.qrels[q].items() if r > 0 and d in scores[q]), key=scores[q].get)
            for q in tas.qids}
    assert all([g.positive for g in tas.margins.groups[q]] == [best[q]] for q in tas.qids)
    assert all(p.positive == best[q] for b in tas.batches(0) for q, p in b)
    assert any(f"positive_depth 1: {len(tas.qids)} positives over {len(tas.qids)} queries" in r.getMessage()
               for r in caplog.records)


def test_margin_calibration_factor_logged_and_used(toy, dense_teacher, tiny_model, tmp_path, caplog):
    assert margin_calibration_factor([1.0, 2.0], [2.0, 4.0]) == 2.0
    assert margin_calibration_factor([1.0, 0.0], [3.0, 5.0]) == 3.0  # least squares: sum(s t) / sum(s^2)
    assert margin_calibration_factor([1.0, -1.0], [1.0, 1.0]) == 0.0
    # the teacher is the starting model itself (dense teacher, x 3): the factor is teacher_scale
    tas = _tas(toy, dense_teacher[0], tiny_model, tmp_path / "o", teacher_scale=3.0)
    enc = BiEncoder.from_pretrained(tiny_model)
    with caplog.at_level(logging.INFO, logger="dretriever.train.tas_balanced"):
        tas.setup(enc, _Acc())
    assert tas.calibration_factor == pytest.approx(3.0, rel=1e-3)
    assert tas.student_scale == tas.calibration_factor  # student_scale: auto (the default)
    logged = [r.getMessage() for r in caplog.records if "margin calibration factor" in r.getMessage()]
    assert len(logged) == 1 and f"margin calibration factor {tas.calibration_factor:.4f}" in logged[0]
    assert "512 pairs" in logged[0]
    assert tas.loss(enc.eval(), tas.batches(0)[0])[1]["student_scale"] == tas.calibration_factor
    fixed = _tas(toy, dense_teacher[0], tiny_model, tmp_path / "f", student_scale="2.5", calibration_pairs=64)
    fixed.setup(enc, _Acc())
    assert fixed.student_scale == 2.5 and fixed.calibration_factor == pytest.approx(1.0, rel=1e-3)
    off = _tas(toy, dense_teacher[0], tiny_model, tmp_path / "n", student_scale=2.0, calibration_pairs=0)
    off.setup(enc, _Acc())
    assert off.student_scale == 2.0 and off.calibration_factor is None


def test_student_scale_field(dense_teacher):
    teacher = str(dense_teacher[0])
    assert TasBalancedArgs(teacher=teacher).student_scale == "auto"
    assert TasBalancedArgs(teacher=teacher, student_scale=" AUTO ").student_scale == "auto"
    assert TasBalancedArgs(teacher=teacher, student_scale="2.0").student_scale == 2.0
    for bad, why in [("two", "expected auto or a number"), ("0", "must be positive"), ("-1", "must be positive")]:
        with pytest.raises(DretrieverError, match=f"student_scale: {why}"):
            TasBalancedArgs(teacher=teacher, student_scale=bad)
    with pytest.raises(DretrieverError, match="student_scale: auto needs calibration_pairs"):
        TasBalancedArgs(teacher=teacher, calibration_pairs=0)
    with pytest.raises(DretrieverError, match="n_clusters: must be >= 0"):
        TasBalancedArgs(teacher=teacher, n_clusters=-1)
    assert all(f.metadata.get("help") for f in fields(TasBalancedArgs))


def test_recipe_keeps_its_student_scale(dense_teacher):
    _, args, _ = parse_recipe(["recipes/tas-balanced.yaml", "--teacher", str(dense_teacher[0]),
                               "--dev_negatives", ""])
    assert (args.student_scale, args.n_clusters, args.clusters_per_batch) == (2.0, 24, 1)


def test_warns_on_a_min_max_teacher(toy, dense_teacher, tiny_model, tmp_path, caplog):
    rows = [json.loads(l) for l in dense_teacher[0].read_text().splitlines()]
    for r in rows:
        lo, hi = min(r["scores"]), max(r["scores"])
        r["scores"] = [(x - lo) / (hi - lo) for x in r["scores"]]
    minmax = tmp_path / "minmax.jsonl"
    minmax.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert looks_min_max({q: list(zip(r["docids"], r["scores"])) for q, r in zip("ab", rows)})
    assert not looks_min_max({"a": [("x", 1.0), ("y", 0.5)], "b": [("x", 0.9), ("y", 0.5)]})  # b's max is 0.9
    assert not looks_min_max({"a": [("x", 2.0), ("y", 1.0)]})
    for teacher, warned in [(minmax, True), (dense_teacher[0], False)]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dretriever.train.tas_balanced"):
            _tas(toy, teacher, tiny_model, tmp_path / "o", student_scale=1.0,
                 calibration_pairs=8).setup(BiEncoder.from_pretrained(tiny_model), _Acc())
        hits = [r.getMessage() for r in caplog.records if "min-max" in r.getMessage()]
        assert len(hits) == warned and (not warned or "not comparable across queries" in hits[0])


def test_inbatch_mask_drops_judged_documents_and_the_own_negative():
    qrels = {"a": {"p1": 1}, "b": {"p2": 1, "p1": 1}}
    assert inbatch_mask(["a", "b"], ["p1", "p2"], ["n1", "n2"], qrels).tolist() == [
        [True, True, False, True],    # a: own positive (anchor), p2, -own negative n1-, n2
        [False, True, True, False]]   # b: p1 judged relevant, own positive, n1, -own negative n2-
    assert inbatch_mask(["a", "b"], ["p1", "p2"], ["n1", "n1"], qrels).tolist() == [
        [True, True, False, False],   # a copy of the own negative is masked too
        [False, True, False, False]]


@pytest.mark.parametrize("inbatch_loss", ["margin_mse", "kl"])
def test_own_negative_teacher_score_does_not_reach_the_inbatch_loss(toy, dense_teacher, tiny_model, tmp_path,
                                                                    inbatch_loss):
    teacher, index = dense_teacher
    tas = _tas(toy, teacher, tiny_model, tmp_path / "o", inbatch_teacher=str(tiny_model),
               inbatch_teacher_index=str(index), inbatch_loss=inbatch_loss, student_scale=1.0, calibration_pairs=0)
    tas.setup(BiEncoder.from_pretrained(tiny_model), _Acc())
    enc = BiEncoder.from_pretrained(make_tiny_bert(tmp_path / "s", seed=5)).eval()
    batch = tas.batches(0)[0]
    B = len(batch)
    negs = [p.negative for _, p in batch]
    assert len(set(negs)) == B and not set(negs) & {p.positive for _, p in batch}  # distinct columns
    base = tas.loss(enc, batch)[1]["inbatch_loss"]
    scores = tas.inbatch_teacher_scores

    def perturbed(cells):
        def f(qids, doc_ids):
            t = scores(qids, doc_ids).clone()
            for i, j in cells:
                t[i, j] += 5.0
            return t
        return f

    tas.inbatch_teacher_scores = perturbed([(i, B + i) for i in range(B)])  # each query's own negative
    assert tas.loss(enc, batch)[1]["inbatch_loss"] == base
    tas.inbatch_teacher_scores = perturbed([(0, B + 1)])  # another query's negative: an in-batch negative of q0
    assert abs(tas.loss(enc, batch)[1]["inbatch_loss"] - base) > 1e-3


@pytest.mark.parametrize("inbatch_loss", ["margin_mse", "kl"])
def test_student_equal_to_its_teachers_has_zero_loss(toy, dense_teacher, tiny_model, tmp_path, inbatch_loss):
    teacher, index = dense_teacher
    tas = _tas(toy, teacher, tiny_model, tmp_path / "o", inbatch_teacher=str(tiny_model),
               inbatch_teacher_index=str(index), inbatch_loss=inbatch_loss, student_scale=1.0)
    enc = BiEncoder.from_pretrained(tiny_model)
    tas.setup(enc, _Acc())
    enc.eval()  # no dropout: the student is exactly the model that produced both teachers' scores
    batch = max(tas.batches(0), key=len)
    loss, logs = tas.loss(enc, batch)
    assert logs["pair_loss"] == pytest.approx(0.0, abs=1e-7)
    assert logs["inbatch_loss"] == pytest.approx(0.0, abs=1e-6)
    # a different student is penalised, by the weighted sum of both terms
    other = BiEncoder.from_pretrained(make_tiny_bert(tmp_path / "other", seed=7)).eval()
    loss, logs = tas.loss(other, batch)
    assert logs["pair_loss"] > 1e-4 and logs["inbatch_loss"] > 1e-4
    assert loss.item() == pytest.approx(logs["pair_loss"] + 0.75 * logs["inbatch_loss"], rel=1e-5)


def test_pair_loss_matches_margin_mse_by_hand(toy, dense_teacher, tiny_model, tmp_path):
    tas = _tas(toy, dense_teacher[0], tiny_model, tmp_path / "o", teacher_scale=3.0, student_scale=2.0)
    enc = BiEncoder.from_pretrained(make_tiny_bert(tmp_path / "s", seed=5)).eval()
    tas.setup(enc, _Acc())
    batch = tas.batches(0)[0]
    loss, _ = tas.loss(enc, batch)
    corpus, queries = tas.data.corpus, tas.data.queries
    q = enc.encode_queries([queries[x] for x, _ in batch], precision="fp32")
    p = enc.encode_docs([corpus[x.positive].contents for _, x in batch], precision="fp32")
    n = enc.encode_docs([corpus[x.negative].contents for _, x in batch], precision="fp32")
    teacher = {qid: dict(hits) for qid, hits in
               ((json.loads(l)["qid"], zip(json.loads(l)["docids"], json.loads(l)["scores"]))
                for l in dense_teacher[0].read_text().splitlines())}
    expected = np.mean([(2 * (q[i] @ p[i] - q[i] @ n[i])
                         - 3 * (teacher[qid][x.positive] - teacher[qid][x.negative])) ** 2
                        for i, (qid, x) in enumerate(batch)])
    assert loss.item() == pytest.approx(float(expected), rel=1e-4, abs=1e-7)


def test_train_command_distils_the_teacher(toy, dense_teacher, tmp_path):
    teacher, index = dense_teacher
    student = make_tiny_bert(tmp_path / "student", seed=3)
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "tas.yaml", method="tas-balanced", model=str(student), output_dir=str(out),
                          data=str(toy), teacher=str(teacher), n_clusters=4, negative_depth=10, student_scale=1.0,
                          batch_size=8, epochs=3, lr=2e-3, warmup=0.0, precision="fp32", progress=False)
    assert main(["train", str(recipe)]) == 0
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if "loss" in l]
    assert len(rows) >= 3 * 4
    # full batches: every step trains batch_size queries
    assert [r["samples"] for r in rows] == [r["batch_queries"] for r in rows] == [8] * len(rows)
    early, late = np.mean([r["pair_loss"] for r in rows[:5]]), np.mean([r["pair_loss"] for r in rows[-5:]])
    assert late < early, (early, late)
    assert BiEncoder.from_pretrained(out / "final").tied
    bad = write_recipe(tmp_path / "bad.yaml", method="tas-balanced", model=str(student), output_dir=str(out),
                       data=str(toy), teacher=str(tmp_path / "missing.jsonl"))
    assert main(["train", str(bad)]) == 2
