"""Margin-MSE: regress the student's score margin between two documents onto a teacher's margin.

Pairwise (Hofstätter et al., 2020): for a query q with a positive p and a negative n,

    loss = mean over the batch of ((s(q,p) - s(q,n)) - (t(q,p) - t(q,n)))^2

In-batch (TAS-Balanced's second teacher, Hofstätter et al., 2021): every document of the batch is a
negative for every query; for query i with its positive at column ``pos_i`` of the (B, M) score matrix,

    loss_i = mean over valid j != pos_i of ((S[i,pos_i] - S[i,j]) - (T[i,pos_i] - T[i,j]))^2
    loss   = mean of loss_i over the rows with at least one valid column

Only margins are matched, so the teacher's scores may be shifted by any per-query constant; their
scale must match the student's (see the ``*_scale`` arguments of TAS-Balanced).

Many positives: the pairwise loss takes one (positive, negative) pair per query (TAS-Balanced samples it),
so it does not grow with the positives. In-batch, the columns holding other documents relevant to the
query are masked; the per-row mean keeps a query with many masked columns (many positives in the batch)
at the same weight as any other (earlier versions took one mean over all valid entries, which equals the
per-row mean when every row has the same number of valid columns).

References:
    Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
    Distillation" (arXiv 2010.02666): Margin-MSE.
    Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware
    Sampling" (SIGIR 2021): TAS-Balanced, dual supervision with an in-batch Margin-MSE.

Inputs:
    pairwise: student_pos, student_neg, teacher_pos, teacher_neg, each (B,)
    in-batch: student (B, M), teacher (B, M), positive_index (B,) long, mask (B, M) bool (optional;
              False excludes a column for that row, e.g. a copy of the query's own positive)
"""

from __future__ import annotations

import torch
from torch import nn

from .precision import fp32


@fp32
def margin_mse(student_pos: torch.Tensor, student_neg: torch.Tensor, teacher_pos: torch.Tensor,
               teacher_neg: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of student and teacher margins ``pos - neg``."""
    student = student_pos - student_neg
    teacher = (teacher_pos - teacher_neg).to(student.dtype)
    return ((student - teacher) ** 2).mean()


@fp32
def inbatch_margin_mse(student: torch.Tensor, teacher: torch.Tensor, positive_index: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Margin-MSE of each row's positive column against every other valid column: the mean over a row's
    valid columns, then over the rows that have one."""
    rows = torch.arange(student.shape[0], device=student.device)
    teacher = teacher.to(student.dtype)
    s_margin = student[rows, positive_index].unsqueeze(1) - student
    t_margin = teacher[rows, positive_index].unsqueeze(1) - teacher
    valid = torch.ones_like(student, dtype=torch.bool) if mask is None else mask.bool().clone()
    valid[rows, positive_index] = False
    if not valid.any():
        return student.sum() * 0.0
    err = torch.where(valid, (s_margin - t_margin) ** 2, torch.zeros_like(student))
    count = valid.sum(1)
    has = count > 0
    return (err.sum(1)[has] / count[has].to(err.dtype)).mean()


class MarginMSELoss(nn.Module):
    """Pairwise Margin-MSE on embeddings: scores are ``scale * (q . d)``.

    Args:
        scale: multiplies the student's dot products (with normalised embeddings they lie in [-1, 1]).
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    @fp32
    def forward(self, query_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor,
                teacher_pos: torch.Tensor, teacher_neg: torch.Tensor) -> torch.Tensor:
        s_pos = self.scale * (query_emb * pos_emb).sum(-1)
        s_neg = self.scale * (query_emb * neg_emb).sum(-1)
        return margin_mse(s_pos, s_neg, teacher_pos, teacher_neg)


class InBatchMarginMSELoss(nn.Module):
    """In-batch Margin-MSE on embeddings: ``S = scale * Q D^T`` against a teacher's (B, M) matrix."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    @fp32
    def forward(self, query_emb: torch.Tensor, doc_emb: torch.Tensor, teacher: torch.Tensor,
                positive_index: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return inbatch_margin_mse(self.scale * query_emb @ doc_emb.T, teacher, positive_index, mask)
