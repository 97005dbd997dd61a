"""Each loss against values computed by hand (see the comments)."""

import math

import pytest
import torch

from dretriever.train.losses import contrastive_loss, in_batch_contrastive, moco_contrastive, pairwise_softmax_loss

E = math.e


def test_contrastive_hand_values():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    # each row: logits (1, 0) -> -log(e / (e + 1)) = log(1 + e^-1)
    assert contrastive_loss(q, d, labels, 1.0).item() == pytest.approx(math.log(1 + 1 / E), abs=1e-6)
    # temperature 0.5 doubles the logits: log(1 + e^-2)
    assert contrastive_loss(q, d, labels, 0.5).item() == pytest.approx(math.log(1 + E ** -2), abs=1e-6)
    # masking the other column leaves a single candidate: loss 0
    mask = torch.tensor([[True, True], [True, True]])
    assert contrastive_loss(q, d, labels, 1.0, mask=mask).item() == pytest.approx(0.0, abs=1e-6)


def test_in_batch_with_hard_negatives_hand_values():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    # q0 logits (1, 0, .6, .8) label 0; q1 logits (0, 1, .8, .6) label 1: same loss by symmetry
    expected = -math.log(E / (E + 1 + E ** 0.6 + E ** 0.8))
    got = in_batch_contrastive(q, pos, neg, temperature=1.0, gather=False).item()
    assert got == pytest.approx(expected, abs=1e-6)


def test_moco_hand_values():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # logits (1, 0, -1), label 0 -> log(1 + e^-1 + e^-2)
    assert moco_contrastive(q, k, queue, 1.0).item() == pytest.approx(math.log(1 + 1 / E + E ** -2), abs=1e-6)
    # temperature 0.5 -> logits (2, 0, -2)
    assert moco_contrastive(q, k, queue, 0.5).item() == pytest.approx(math.log(1 + E ** -2 + E ** -4), abs=1e-6)


def test_pairwise_softmax_hand_values():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[0.6, 0.8]])
    labels = torch.tensor([0])
    rand_mask = torch.tensor([[False, True]])
    # pairs: (1 vs 0) -> softplus(-1); (1 vs .6) -> softplus(-.4); mean of the two
    sp = lambda x: math.log(1 + math.exp(x))  # noqa: E731
    expected = (sp(-1.0) + sp(-0.4)) / 2
    got = pairwise_softmax_loss(q, pos, labels, rand_mask, neg, torch.tensor([[True]]), temperature=1.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # temperature 0.5 doubles the score gaps
    got = pairwise_softmax_loss(q, pos, labels, rand_mask, neg, torch.tensor([[True]]), temperature=0.5)
    assert got.item() == pytest.approx((sp(-2.0) + sp(-0.8)) / 2, abs=1e-6)
    # a masked (relevant) hard negative is not a pair
    got = pairwise_softmax_loss(q, pos, labels, rand_mask, neg, torch.tensor([[False]]), temperature=1.0)
    assert got.item() == pytest.approx(sp(-1.0), abs=1e-6)


def test_pairwise_equals_two_way_log_softmax():
    torch.manual_seed(0)
    q, pos, neg = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.arange(3)
    rand_mask = ~torch.eye(3, dtype=torch.bool)
    got = pairwise_softmax_loss(q, pos, labels, rand_mask, neg, torch.ones(3, 3, dtype=torch.bool))
    s = q @ pos.T
    sp = s.diagonal()
    terms = []
    for i in range(3):
        for j in range(3):
            if i != j:
                terms.append(-torch.log_softmax(torch.stack([sp[i], s[i, j]]), 0)[0])
            terms.append(-torch.log_softmax(torch.stack([sp[i], q[i] @ neg[j]]), 0)[0])
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)


def test_pairwise_softmax_is_a_mean_over_queries_of_each_querys_mean():
    # q0 has two valid pairs, q1 one (its other "negative" is relevant and masked)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1])
    rand_mask = torch.tensor([[False, True, True], [False, False, True]])
    sp = lambda x: math.log(1 + math.exp(x))  # noqa: E731
    q0 = (sp(0.0 - 1.0) + sp(0.6 - 1.0)) / 2
    q1 = sp(0.8 - 1.0)
    got = pairwise_softmax_loss(q, pos, labels, rand_mask, temperature=1.0)
    assert got.item() == pytest.approx((q0 + q1) / 2, abs=1e-6)
    # a query without any valid pair does not count; none at all gives 0
    got = pairwise_softmax_loss(q, pos, labels, torch.tensor([[False, True, True], [False, False, False]]))
    assert got.item() == pytest.approx(q0, abs=1e-6)
    assert pairwise_softmax_loss(q, pos, labels, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0
