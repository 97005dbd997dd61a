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


# ------------------------------------------------------------------------------------------- precision
def _bf16_cases():
    """Every loss with the student's inputs as a bf16 forward would hand them over (bf16 tensors) and the
    teacher's in fp32 (values a bf16 cast would change)."""
    from dretriever.train.losses.kl import InBatchKLLoss, kl_distill
    from dretriever.train.losses.margin_mse import InBatchMarginMSELoss, MarginMSELoss, inbatch_margin_mse, margin_mse
    from dretriever.train.losses.ranknet import RankNetLoss, lambda_weights, ranknet_loss

    g = torch.Generator().manual_seed(0)
    emb = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1).bfloat16()  # noqa: E731
    score = lambda *s: torch.randn(*s, generator=g).bfloat16()  # noqa: E731
    teacher = lambda *s: 5 * torch.rand(*s, generator=g)  # noqa: E731
    B, N, H = 8, 6, 16
    q, d, k, neg, queue = emb(B, H), emb(B, H), emb(B, H), emb(2 * B, H), emb(24, H)
    labels = torch.arange(B)
    rand_mask = ~torch.eye(B, dtype=torch.bool)
    grades = torch.randint(0, 3, (B, N), generator=g)
    ranks = torch.arange(1, N + 1).repeat(B, 1)
    weights = lambda_weights(ranks, 10, "reciprocal", grades)
    return {
        "contrastive_loss": (contrastive_loss, (q, d, labels, 0.05)),
        "in_batch_contrastive": (lambda *a: in_batch_contrastive(*a, gather=False), (q, d, neg, 0.05)),
        "moco_contrastive": (moco_contrastive, (q, k, queue, 0.05)),
        "pairwise_softmax_loss": (pairwise_softmax_loss, (q, d, labels, rand_mask, neg, None, 0.05)),
        "margin_mse": (margin_mse, (score(B), score(B), teacher(B), teacher(B))),
        "inbatch_margin_mse": (inbatch_margin_mse, (score(B, 2 * B), teacher(B, 2 * B), labels)),
        "kl_distill": (kl_distill, (score(B, 2 * B), teacher(B, 2 * B), 0.5, 0.7)),
        "ranknet_loss": (ranknet_loss, (score(B, N), grades, weights)),
        "MarginMSELoss": (MarginMSELoss(scale=3.0), (q, d, k, teacher(B), teacher(B))),
        "InBatchMarginMSELoss": (InBatchMarginMSELoss(scale=3.0), (q, torch.cat([d, k]), teacher(B, 2 * B), labels)),
        "InBatchKLLoss": (InBatchKLLoss(3.0, 0.5, 0.7), (q, torch.cat([d, k]), teacher(B, 2 * B))),
        "RankNetLoss": (RankNetLoss(cut=10), (q, emb(B, N, H), grades, ranks)),
    }


@pytest.mark.parametrize("student", ["bf16", "fp32"])
@pytest.mark.parametrize("name", list(_bf16_cases()))
def test_every_loss_under_bf16_autocast_equals_its_fp32_value(name, student):
    """Issue 27 item 6: under autocast the score products ran in bf16 (64 logits at T = 0.05 collapsed to ~26
    values) and teacher targets were cast down to the student's bf16; now each loss computes in fp32."""
    fn, args = _bf16_cases()[name]
    up = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    expected = fn(*up)  # fp32 inputs, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(*(args if student == "bf16" else up))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_float64_teacher_is_never_cast_down_the_student_is_cast_up():
    from dretriever.train.losses.margin_mse import margin_mse

    s_pos, s_neg = torch.tensor([0.5], dtype=torch.bfloat16), torch.tensor([0.25], dtype=torch.bfloat16)
    t_pos, t_neg = torch.tensor([1.0 + 1e-12], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    got = margin_mse(s_pos, s_neg, t_pos, t_neg)
    assert got.dtype == torch.float64
    assert got.item() == (0.25 - (1.0 + 1e-12)) ** 2  # the 1e-12 survives: fp32 would round it away
