"""The cross-encoder: listwise and BCE losses by hand (values, gradient signs, bf16 autocast), training on the loop
lowers the loss below a constant score's, the saved folder scores the same in sentence-transformers'
CrossEncoder, `dretriever teacher --teacher cross-encoder` writes its raw logits and its cost, and
TAS-Balanced's margin calibration takes them."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from dretriever.cli import main
from dretriever.cross_encoder import CrossEncoderModel
from dretriever.data.beir import load_beir
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.teacher import TeacherArgs, read_teacher_scores
from dretriever.train.config import TrainArgs
from dretriever.train.cross_encoder import CrossEncoder, CrossEncoderArgs
from dretriever.train.data import load_train_data
from dretriever.train.losses.bce import bce_constant_loss, binary_cross_entropy_loss
from dretriever.train.losses.listwise import listwise_constant_loss, listwise_softmax_loss
from dretriever.train.loop import train
from dretriever.train.tas_balanced import TasBalanced, TasBalancedArgs
from tests.train_helpers import make_method, make_toy_beir, write_random_negatives

E = math.e
sp = lambda x: math.log(1 + math.exp(x))  # noqa: E731  softplus


# ------------------------------------------------------------------ losses
def test_listwise_hand_values_and_gradient_signs():
    scores = torch.tensor([[2.0, 0.0, 1.0], [0.5, 3.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # row 0: -log(e^2 / (e^2 + 1 + e)); row 1 (its last column masked): -log(e^.5 / (e^.5 + e^3))
    row0 = -math.log(E ** 2 / (E ** 2 + 1 + E))
    row1 = -math.log(E ** 0.5 / (E ** 0.5 + E ** 3))
    loss = listwise_softmax_loss(scores, mask)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert listwise_constant_loss(scores, mask) == pytest.approx((math.log(3) + math.log(2)) / 2)
    assert listwise_softmax_loss(torch.zeros(2, 3), mask).item() == pytest.approx(
        listwise_constant_loss(scores, mask), abs=1e-6)  # a constant score scores exactly the constant loss
    loss.backward()
    g = scores.grad
    # d/ds_pos = (p_pos - 1) / B < 0: descent raises the positive; d/ds_neg = p_neg / B > 0 lowers each negative
    p0 = torch.softmax(torch.tensor([2.0, 0.0, 1.0]), 0)
    assert torch.allclose(g[0], torch.stack([p0[0] - 1, p0[1], p0[2]]) / 2, atol=1e-6)
    assert g[0, 0] < 0 and g[1, 0] < 0 and (g[0, 1:] > 0).all() and g[1, 1] > 0
    assert g[1, 2] == 0  # a masked candidate gets no gradient
    # the positive is never dropped, even when the mask says so
    assert listwise_softmax_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[False, True]])).item() == \
        pytest.approx(math.log(2), abs=1e-6)


def test_bce_hand_values_and_constant():
    scores = torch.tensor([[1.0, -1.0, 0.0]], requires_grad=True)
    # pos_weight 2: (2 softplus(-1) + softplus(-1) + softplus(0)) / 3 pairs
    loss = binary_cross_entropy_loss(scores, None, 2.0)
    assert loss.item() == pytest.approx((2 * sp(-1) + sp(-1) + sp(0)) / 3, abs=1e-6)
    assert loss.item() == pytest.approx(torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.0))(
        scores[0], torch.tensor([1.0, 0.0, 0.0])).item(), abs=1e-6)  # torch's definition
    loss.backward()
    assert scores.grad[0, 0] < 0 and (scores.grad[0, 1:] > 0).all()
    masked = binary_cross_entropy_loss(scores, torch.tensor([[True, True, False]]), 2.0)
    assert masked.item() == pytest.approx((2 * sp(-1) + sp(-1)) / 2, abs=1e-6)
    # the constant loss is the least loss of any one constant score; 1 positive + 4 negatives, pos_weight 4:
    # sigmoid(c) = 1/2, loss 8 ln 2 / 5 = 1.109 (DESIGN.md's figure)
    five = torch.zeros(1, 5)
    assert bce_constant_loss(five, None, 4.0) == pytest.approx(8 * math.log(2) / 5, abs=1e-6)
    grid = min(binary_cross_entropy_loss(torch.full((1, 5), c), None, 2.0).item() for c in np.arange(-3, 3, 0.001))
    assert bce_constant_loss(five, None, 2.0) == pytest.approx(grid, abs=1e-5)


@pytest.mark.parametrize("student", ["bf16", "fp32"])
def test_losses_under_bf16_autocast_equal_their_fp32_value(student):
    torch.manual_seed(0)
    scores = (torch.randn(6, 8) * 4).to(torch.bfloat16)  # logits as a bf16 forward hands them over
    mask = torch.rand(6, 8) > 0.3
    for fn, extra in ((listwise_softmax_loss, ()), (binary_cross_entropy_loss, (7.0,))):
        expected = fn(scores.float(), mask, *extra).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fn(scores if student == "bf16" else scores.float(), mask, *extra)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ training on the loop, saving
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("ce_toy")
    data = make_toy_beir(root / "beir")
    return data, write_random_negatives(data, root / "negatives.jsonl", depth=10)


def _args(toy, model, out, **over):
    data, negatives = toy
    targs = dict(method="cross-encoder", model=str(model), output_dir=str(out), data=str(data), batch_size=7,
                 precision="fp32", progress=False, lr=1e-2, epochs=8, warmup=0, dropout=0.0, dev_queries=4,
                 dev_negatives=str(negatives), dev_candidates=5)
    margs = dict(negatives=str(negatives), neg_start=0, neg_depth=10, hard_negatives=3, max_length=64)
    targs.update({k: v for k, v in over.items() if k in TrainArgs.__dataclass_fields__})
    margs.update({k: v for k, v in over.items() if k in CrossEncoderArgs.__dataclass_fields__})
    return TrainArgs(**targs), CrossEncoder(CrossEncoderArgs(**margs), TrainArgs(**targs))


@pytest.fixture(scope="module")
def trained(toy, tiny_model, tmp_path_factory):
    """A tiny random BERT trained as a cross-encoder for 8 epochs of 28 queries (32 steps, ~9 s)."""
    out = tmp_path_factory.mktemp("ce_run")
    ta, method = _args(toy, tiny_model, out)
    summary = train(ta, method)
    return out, summary


def test_training_lowers_the_loss_below_a_constant_score(trained, toy):
    out, summary = trained
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    dev = [r for r in rows if "dev_ndcg@10" in r]
    assert summary["steps"] == len(steps) == 32  # 28 training queries // 7, x 8 epochs
    constant = math.log(4)  # 1 positive + 3 negatives
    assert all(r["constant_loss"] == pytest.approx(constant) for r in steps)
    assert np.mean([r["loss"] for r in steps[:4]]) == pytest.approx(constant, abs=0.02)  # a new head starts there
    assert np.mean([r["loss"] for r in steps[-8:]]) < constant - 0.15
    assert steps[-1]["lr"] == 0.0 and {"pos_score", "neg_score", "acc_vs_negatives"} <= set(steps[-1])
    # the dev evaluation reranks 4 dev queries' 5 mined candidates + their judged documents, at the start and
    # after each epoch
    judged = sum(len(v) for v in load_train_data(toy[0], "train", 4).dev_qrels.values())
    assert len(dev) == 9 and {r["dev_pairs"] for r in dev} == {4 * 5 + judged}
    assert summary["best_dev_ndcg@10"] == max(r["dev_ndcg@10"] for r in dev)
    assert json.loads((out / "best" / "dev_metrics.json").read_text())["dev_ndcg@10"] == summary["best_dev_ndcg@10"]


def test_saved_folder_scores_the_same_in_sentence_transformers(trained, toy):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    out, _ = trained
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert len(config["id2label"]) == 1 and config["architectures"] == ["BertForSequenceClassification"]
    assert config["sentence_transformers"]["activation_fn"] == "torch.nn.modules.linear.Identity"
    assert json.loads((final / "modules.json").read_text())[0]["path"] == ""  # sentence-transformers 6's layout
    ours = CrossEncoderModel.from_pretrained(final)
    assert ours.config.max_length == 64 and ours.new_parameters == []  # the head is saved, not new
    data, _ = toy
    corpus = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()]
    long_doc = " ".join(d["text"] for d in corpus[:20])  # past max_length: truncated the same way
    pairs = [("protein cell gene", corpus[0]["text"]), ("tumor", long_doc), ("virus immune", corpus[5]["text"]),
             ("x " * 80, corpus[1]["text"])]
    st = STCrossEncoder(str(final))  # default settings: the folder itself says identity activation and 64 tokens
    assert st.max_seq_length == 64
    got = st.predict(pairs, batch_size=3)
    want = ours.predict(pairs, batch_size=2, precision="fp32")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.ptp(want) > 1e-3  # trained scores differ between pairs
    with torch.no_grad():  # raw logits: the forward's own values, no sigmoid
        direct = ours.eval()(ours.tokenize([q for q, _ in pairs], [d for _, d in pairs])).numpy()
    np.testing.assert_allclose(want, direct, rtol=0, atol=1e-5)


def test_cross_encoder_refuses_fields_it_cannot_use(toy, tiny_model, tmp_path):
    ta, method = _args(toy, tiny_model, tmp_path / "a", train_query_max_length=32)
    with pytest.raises(DretrieverError, match="train_query_max_length"):
        method.load_model(ta)
    ta, method = _args(toy, tiny_model, tmp_path / "b", grad_cache_chunk=4)
    with pytest.raises(DretrieverError, match="grad_cache_chunk"):
        method.load_model(ta)
    ta, method = _args(toy, tiny_model, tmp_path / "c", dev_negatives="")
    with pytest.raises(DretrieverError, match="dev_negatives"):
        train(ta, method)
    with pytest.raises(DretrieverError, match="loss"):
        CrossEncoderArgs(negatives=str(toy[1]), loss="pairwise")


def test_head_lr_applies_to_the_new_head_only(toy, tiny_model, tmp_path):
    ta, method = _args(toy, tiny_model, tmp_path / "h", head_lr=0.5)
    model = method.load_model(ta)
    assert model.new_parameters == ["model.classifier.bias", "model.classifier.weight"]
    assert method.param_lrs(model) == {"model.classifier.bias": 0.5, "model.classifier.weight": 0.5}
    from dretriever.train.loop import _param_groups

    named = {id(p): n for n, p in model.named_parameters()}
    groups = _param_groups(list(model.parameters()), 0.01, named, 1e-2, method.param_lrs(model))
    assert groups[0]["lr"] == 1e-2 and groups[0]["weight_decay"] == 0.01  # the logged lr is the base one
    head = [g for g in groups if g["lr"] == 0.5]
    assert sorted(named[id(p)] for g in head for p in g["params"]) == model.new_parameters
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# ------------------------------------------------------------------ the teacher and TAS-Balanced
def test_teacher_writes_raw_logits_and_its_cost_and_calibrates_tas_balanced(trained, toy, tiny_model, tmp_path,
                                                                            capsys, caplog):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    data, _ = toy
    root, out = tmp_path, tmp_path / "teacher.jsonl"
    final = trained[0] / "final"
    assert main(["teacher", "--data", str(data), "--split", "train", "--teacher", "cross-encoder", "--cross_encoder",
                 str(final), "--candidates", "dense", "--model", str(tiny_model), "--depth", "6", "--output", str(out),
                 "--index_root", str(root / "indexes"), "--shards", "1", "--precision", "fp32",
                 "--progress", "false"]) == 0
    printed = capsys.readouterr().out
    scores = read_teacher_scores(out)
    pairs = sum(len(h) for h in scores.values())
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["cost"]["pairs_scored"] == pairs and meta["cost"]["pairs_per_s"] > 0
    assert f"cost: {pairs} pairs scored in" in printed and "pairs/s)" in printed
    # raw logits of the saved folder (the identity activation, not a sigmoid), every pair of a query
    ds = load_beir(data, split="train")
    st = STCrossEncoder(str(final))
    for qid in ("q0", "q5"):
        docids = [d for d, _ in scores[qid]]
        want = st.predict([(ds.queries[qid], ds.corpus[d].contents) for d in docids])
        np.testing.assert_allclose([s for _, s in scores[qid]], want, rtol=0, atol=2e-5)
    values = [s for h in scores.values() for _, s in h]
    assert min(values) < 0 or max(values) > 1  # logits, not probabilities in (0, 1)

    # TAS-Balanced's margin calibration on these logits: no min-max warning, the factor logged, and linear in
    # the teacher's scale (the same balanced pairs are drawn whatever the scale)
    factors = []
    for scale in (1.0, 2.0):
        tas = make_method(TasBalanced, TasBalancedArgs, "tas-balanced", tiny_model, data, root / f"tas{scale}",
                          dict(teacher=str(out), n_clusters=2, negative_depth=6, calibration_pairs=64,
                               student_scale="1.0", teacher_scale=scale))[1]
        with caplog.at_level(logging.INFO, logger="dretriever.train.tas_balanced"):
            tas.setup(BiEncoder.from_pretrained(tiny_model), type("Acc", (), {"num_processes": 1,
                                                                               "process_index": 0})())
        factors.append(tas.calibration_factor)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "min-max" in m]
    assert sum("margin calibration factor" in m for m in messages) == 2
    assert math.isfinite(factors[0]) and factors[0] != 0
    assert factors[1] == pytest.approx(2 * factors[0], rel=1e-6)


def test_teacher_names_a_missing_cross_encoder_folder(toy, tmp_path):
    with pytest.raises(DretrieverError, match="cross_encoder: folder"):
        TeacherArgs(data=str(toy[0]), output=str(tmp_path / "t.jsonl"), teacher="cross-encoder",
                    cross_encoder=str(tmp_path / "missing"))


def test_the_recipe_parses_for_another_dataset(toy):
    from dretriever.train.config import parse_recipe

    data, negatives = toy
    ta, ma, cls = parse_recipe(["recipes/cross-encoder.yaml", "--data", str(data), "--negatives", str(negatives),
                                "--dev_negatives", str(negatives), "--output_dir", "/tmp/unused"])
    assert cls is CrossEncoder and ta.method == "cross-encoder" and ma.loss == "listwise"
    assert (ma.neg_start, ma.neg_depth, ma.hard_negatives, ma.max_length) == (9, 100, 7, 256)
    assert ta.lr == 1e-4 and ma.head_lr == 1e-3 and ta.warmup == 0.1
