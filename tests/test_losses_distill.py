"""RankNet (ADORE), Margin-MSE (pairwise and in-batch) and KL distillation against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dretriever.train.losses.kl import InBatchKLLoss, kl_distill
from dretriever.train.losses.margin_mse import InBatchMarginMSELoss, MarginMSELoss, inbatch_margin_mse, margin_mse
from dretriever.train.losses.ranknet import RankNetLoss, ideal_dcg, lambda_weights, rank_gain, ranknet_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------ RankNet with metric weights
def test_rank_gain_cut_and_discounts():
    ranks = torch.tensor([[1, 2, 4, 11]])
    assert rank_gain(ranks, cut=10).tolist() == [[1.0, 0.5, 0.25, 0.0]]
    assert rank_gain(ranks, cut=None).tolist()[0][3] == pytest.approx(1 / 11)
    log2 = rank_gain(ranks, cut=3, discount="log2").tolist()[0]
    assert log2 == pytest.approx([1.0, 1 / math.log2(3), 0.0, 0.0])
    with pytest.raises(ValueError, match="discount"):
        rank_gain(ranks, discount="linear")


def test_ranknet_weighted_by_swap_gain_with_cut():
    # One query, candidates at ranks 1..4; relevant: ranks 2 and 4. Metric cut 3 -> g = [1, 1/2, 1/3, 0].
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    labels = torch.tensor([[False, True, False, True]])
    ranks = torch.tensor([[1, 2, 3, 4]])
    w = lambda_weights(ranks, cut=3)
    # pairs (relevant i, irrelevant j): (1,0) (1,2) (3,0) (3,2)
    # the query's sum over pairs is divided by its 2 relevant candidates
    expected = (abs(0.5 - 1) * softplus(2.0 - 1.0) + abs(0.5 - 1 / 3) * softplus(0.5 - 1.0)
                + abs(0 - 1) * softplus(2.0 + 1.0) + abs(0 - 1 / 3) * softplus(0.5 + 1.0)) / 2
    assert ranknet_loss(scores, labels, w, normalize="positives").item() == pytest.approx(expected, rel=1e-6)
    # unweighted RankNet: every pair weighs 1
    plain = (softplus(1.0) + softplus(-0.5) + softplus(3.0) + softplus(1.5)) / 2
    assert ranknet_loss(scores, labels, normalize="positives").item() == pytest.approx(plain, rel=1e-6)


def test_ranknet_one_positive_is_the_unnormalised_binary_sum():
    # one relevant candidate (grade 1 or 2): ΔnDCG weights = |g_i - g_j| (IDCG = 2^rel - 1) and P = 1
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    ranks = torch.tensor([[1, 2, 3, 4]])
    binary = lambda_weights(ranks, cut=3)
    expected = 0.5 * softplus(1.0) + (1 / 6) * softplus(-0.5) + 0.5 * softplus(-2.0)  # pairs (1,0) (1,2) (1,3)
    for grade in (1, 2):
        labels = torch.tensor([[0, grade, 0, 0]])
        graded = lambda_weights(ranks, cut=3, relevance=labels)
        assert torch.allclose(graded * (labels.unsqueeze(2) > labels.unsqueeze(1)),
                              binary * (labels.unsqueeze(2) > labels.unsqueeze(1)))
        assert ranknet_loss(scores, labels, graded, normalize="positives").item() == pytest.approx(expected, rel=1e-6)


def test_graded_relevance_gives_the_delta_ndcg_weights():
    # Ranks 1..4, grades [0, 2, 1, 0]; the query also has a grade-1 positive the candidates miss.
    # Cut 3, reciprocal discount g = [1, 1/2, 1/3, 0]; gains G = 2^rel - 1 = [0, 3, 1, 0].
    # IDCG@3 from the judged grades [2, 1, 1] = 3 * 1 + 1 * 1/2 + 1 * 1/3 = 23/6.
    # w_ij = |G_i - G_j| |g_i - g_j| / IDCG:
    #   (1,0): 3 * 1/2 = 3/2 -> 9/23     (1,2): 2 * 1/6 = 1/3 -> 2/23     (1,3): 3 * 1/2 -> 9/23
    #   (2,0): 1 * 2/3 = 2/3 -> 4/23     (2,3): 1 * 1/3 -> 2/23
    ranks = torch.tensor([[1, 2, 3, 4]])
    labels = torch.tensor([[0, 2, 1, 0]])
    ideal = ideal_dcg(torch.tensor([[2, 1, 1]]), cut=3)
    assert ideal.item() == pytest.approx(23 / 6, rel=1e-6)
    w = lambda_weights(ranks, cut=3, relevance=labels, ideal=ideal)[0]
    expected_w = {(1, 0): 9 / 23, (1, 2): 2 / 23, (1, 3): 9 / 23, (2, 0): 4 / 23, (2, 3): 2 / 23}
    for (i, j), v in expected_w.items():
        assert w[i, j].item() == pytest.approx(v, rel=1e-6)
        assert w[j, i].item() == pytest.approx(v, rel=1e-6)  # symmetric
    assert w[0, 3].item() == 0.0  # two irrelevant documents: no gain to swap
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    # loss: sum over the 5 pairs of w * softplus(s_j - s_i), divided by the 2 relevant candidates
    loss = (9 / 23 * softplus(1.0) + 2 / 23 * softplus(-0.5) + 9 / 23 * softplus(-2.0)
            + 4 / 23 * softplus(1.5) + 2 / 23 * softplus(-1.5)) / 2
    assert ranknet_loss(scores, labels, lambda_weights(ranks, 3, relevance=labels, ideal=ideal),
                        normalize="positives").item() == \
        pytest.approx(loss, rel=1e-6)
    # the same ranking with binary labels: no (1,2) pair and the weights differ
    binary = labels.clamp(max=1)
    wb = lambda_weights(ranks, cut=3, relevance=binary, ideal=ideal_dcg(torch.tensor([[1, 1, 1]]), cut=3))[0]
    assert wb[1, 2].item() == 0.0
    assert wb[1, 0].item() == pytest.approx(0.5 / (11 / 6), rel=1e-6)  # IDCG@3 of three grade-1 docs = 11/6
    # log2 discount, no cut: IDCG of [2, 1, 1] = 3 + 1/log2(3) + 1/2
    assert ideal_dcg(torch.tensor([[1, 2, 1, 0]]), discount="log2").item() == \
        pytest.approx(3 + 1 / math.log2(3) + 0.5, rel=1e-6)


def test_ranknet_pairs_beyond_cut_weigh_nothing_and_padding_is_ignored():
    scores = torch.tensor([[0.3, 0.9, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([[False, True, False], [True, False, False]])
    ranks = torch.tensor([[11, 12, 13], [1, 2, 3]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    w = lambda_weights(ranks, cut=10)
    # query 0: all ranks beyond the cut -> 0; query 1: one valid pair (0, 1) weight |1 - 1/2|
    expected = (0.5 * softplus(0.0 - 1.0)) / 2  # averaged over the 2 queries
    assert ranknet_loss(scores, labels, w, mask).item() == pytest.approx(expected, rel=1e-6)


def test_ranknet_module_scores_embeddings_and_pushes_relevant_up():
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    docs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # candidate 0 irrelevant at rank 1, 1 relevant at rank 2
    labels = torch.tensor([[False, True]])
    ranks = torch.tensor([[1, 2]])
    loss = RankNetLoss(cut=10)(q, docs, labels, ranks)
    # s = [0, 1]; pair (1, 0) weight |1/2 - 1| = 0.5
    assert loss.item() == pytest.approx(0.5 * softplus(-1.0), rel=1e-6)
    loss.backward()
    # gradient descent moves q towards the relevant document (dimension 0) and away from the other
    assert q.grad[0, 0] < 0 < q.grad[0, 1]


# ------------------------------------------------------------------ Margin-MSE
def test_margin_mse_pairwise():
    s_pos, s_neg = torch.tensor([0.9, 0.2]), torch.tensor([0.5, 0.4])
    t_pos, t_neg = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])
    # margins: student [0.4, -0.2], teacher [2.0, -1.0]
    expected = ((0.4 - 2.0) ** 2 + (-0.2 + 1.0) ** 2) / 2
    assert margin_mse(s_pos, s_neg, t_pos, t_neg).item() == pytest.approx(expected, rel=1e-6)
    # only margins matter: shifting teacher scores per query changes nothing
    assert margin_mse(s_pos, s_neg, t_pos + 7, t_neg + 7).item() == pytest.approx(expected, rel=1e-6)


def test_margin_mse_module_scale():
    q = torch.tensor([[1.0, 0.0]])
    pos, neg = torch.tensor([[0.6, 0.8]]), torch.tensor([[0.0, 1.0]])
    # student scores 2 * [0.6, 0.0] -> margin 1.2; teacher margin 1.0
    assert MarginMSELoss(scale=2.0)(q, pos, neg, torch.tensor([1.5]), torch.tensor([0.5])).item() == pytest.approx(
        0.04, rel=1e-5)


def test_inbatch_margin_mse_with_mask():
    student = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.8, 0.4]])
    teacher = torch.tensor([[2.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    pos = torch.tensor([0, 1])
    # row 0: margins student [0.5, 1.0] teacher [1.0, 1.0] -> errors 0.25, 0
    # row 1: margins student [0.6, 0.4] teacher [1.0, 0.0] -> errors 0.16, 0.16
    assert inbatch_margin_mse(student, teacher, pos).item() == pytest.approx((0.25 + 0 + 0.16 + 0.16) / 4, rel=1e-5)
    # per row, then over rows: row 0 keeps one column (0.25), row 1 two (mean 0.16)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert inbatch_margin_mse(student, teacher, pos, mask).item() == pytest.approx((0.25 + 0.16) / 2, rel=1e-5)
    q = torch.eye(2)
    d = torch.tensor([[1.0, 0.2], [0.5, 0.8], [0.0, 0.4]])  # q @ d.T == student above
    assert InBatchMarginMSELoss()(q, d, teacher, pos, mask).item() == pytest.approx((0.25 + 0.16) / 2, rel=1e-5)
    # a row with no valid column is left out of the mean
    none = torch.tensor([[True, False, False], [True, True, True]])
    assert inbatch_margin_mse(student, teacher, pos, none).item() == pytest.approx(0.16, rel=1e-5)


# ------------------------------------------------------------------ KL
def test_kl_distill_hand_computed():
    student = torch.tensor([[0.0, math.log(3.0)]])  # softmax -> [0.25, 0.75]
    teacher = torch.tensor([[0.0, 0.0]])  # softmax -> [0.5, 0.5]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_distill(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # temperatures divide the scores
    assert kl_distill(2 * student, teacher, student_temperature=2.0).item() == pytest.approx(expected, rel=1e-6)
    # identical distributions -> 0
    assert kl_distill(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_distill_mask_drops_columns():
    student = torch.tensor([[0.0, math.log(3.0), 9.0]])
    teacher = torch.tensor([[0.0, 0.0, -9.0]])
    mask = torch.tensor([[True, True, False]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_distill(student, teacher, mask=mask).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="valid column"):
        kl_distill(student, teacher, mask=torch.zeros_like(mask))
    q, d = torch.tensor([[1.0]]), student.T  # (1, 1) @ (1, 3): the same score row
    assert InBatchKLLoss()(q, d, teacher, mask).item() == pytest.approx(expected, rel=1e-6)
