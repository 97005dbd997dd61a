"""TAS-Balanced: cluster batches, balanced margin sampling, pairs, dual-teacher loss values, the train command."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from dretriever.cli import main
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.train.samplers import BalancedMarginSampler, ClusterBatchSampler, Pair, cluster_queries
from dretriever.train.tas_balanced import TasBalanced, TasBalancedArgs, build_pairs
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


def test_one_cluster_per_batch_and_every_query_once_per_epoch():
    clusters = np.array([0] * 10 + [1] * 7 + [2] * 3 + [3] * 12)
    sampler = ClusterBatchSampler(clusters, batch_size=4, seed=3)
    b0 = sampler.batches(0)
    assert sorted(i for b in b0 for i in b) == list(range(len(clusters)))
    assert all(len({int(clusters[i]) for i in b}) == 1 for b in b0)
    assert all(1 <= len(b) <= 4 for b in b0)
    assert len(b0) == 3 + 2 + 1 + 3  # ceil(size / 4) per cluster
    assert b0 == sampler.batches(0) and b0 != sampler.batches(1)
    two = ClusterBatchSampler(clusters, batch_size=4, clusters_per_batch=2, seed=3).batches(0)
    assert sorted(i for b in two for i in b) == list(range(len(clusters)))
    assert all(len({int(clusters[i]) for i in b}) <= 2 for b in two)
    assert sum(len({int(clusters[i]) for i in b}) == 2 for b in two) >= len(two) - 2
    with pytest.raises(DretrieverError, match="multiple of clusters_per_batch"):
        ClusterBatchSampler(clusters, batch_size=5, clusters_per_batch=2)


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


def test_batches_come_from_one_cluster(toy, dense_teacher, tiny_model, tmp_path):
    tas = _tas(toy, dense_teacher[0], tiny_model, tmp_path / "o")
    tas.setup(BiEncoder.from_pretrained(tiny_model), _Acc())
    cluster_of = dict(zip(tas.qids, tas.clusters.tolist()))
    batches = tas.batches(0)
    assert sorted(q for b in batches for q, _ in b) == tas.qids
    for batch in batches:
        assert len({cluster_of[q] for q, _ in batch}) == 1
        for qid, pair in batch:
            assert pair.positive in tas.data.qrels[qid] and pair.negative not in tas.data.qrels[qid]


@pytest.mark.parametrize("inbatch_loss", ["margin_mse", "kl"])
def test_student_equal_to_its_teachers_has_zero_loss(toy, dense_teacher, tiny_model, tmp_path, inbatch_loss):
    teacher, index = dense_teacher
    tas = _tas(toy, teacher, tiny_model, tmp_path / "o", inbatch_teacher=str(tiny_model),
               inbatch_teacher_index=str(index), inbatch_loss=inbatch_loss)
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
    # samples/s counts the queries really trained (one cluster's: often fewer than batch_size), not 8 per step
    assert [r["samples"] for r in rows] == [r["batch_queries"] for r in rows]
    assert any(r["samples"] < 8 for r in rows)
    early, late = np.mean([r["pair_loss"] for r in rows[:5]]), np.mean([r["pair_loss"] for r in rows[-5:]])
    assert late < early, (early, late)
    assert BiEncoder.from_pretrained(out / "final").tied
    bad = write_recipe(tmp_path / "bad.yaml", method="tas-balanced", model=str(student), output_dir=str(out),
                       data=str(toy), teacher=str(tmp_path / "missing.jsonl"))
    assert main(["train", str(bad)]) == 2
