"""KL-divergence distillation: match the student's softmax over candidates to the teacher's.

For each query (row) with valid candidate columns ``j``:

    p = softmax(T / teacher_temperature),  q = softmax(S / student_temperature)
    loss_row = sum_j p_j (log p_j - log q_j)

averaged over rows. TAS-Balanced's option in place of the in-batch Margin-MSE (the score matrix of
each query against every document of the batch), and the listwise loss of RocketQAv2-style
distillation.

Many positives: the loss is a mean over rows (queries) of one KL each, so a query's weight does not depend
on how many of its relevant documents the batch holds; mask the columns of its other relevant documents
(TAS-Balanced does) so that they are not pushed down as negatives.

References:
    Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).
    Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware
    Sampling" (SIGIR 2021).

Inputs:
    student (B, M), teacher (B, M) scores; mask (B, M) bool (optional; False drops a column for that
    row; every row needs at least one valid column).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import fp32


@fp32
def kl_distill(student: torch.Tensor, teacher: torch.Tensor, student_temperature: float = 1.0,
               teacher_temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of KL(teacher distribution || student distribution)."""
    s = student / student_temperature
    t = teacher.to(student.dtype) / teacher_temperature
    if mask is not None:
        mask = mask.bool()
        if not mask.any(1).all():
            raise ValueError("kl_distill: every row needs at least one valid column")
        s = s.masked_fill(~mask, float("-inf"))
        t = t.masked_fill(~mask, float("-inf"))
    log_q = F.log_softmax(s, dim=-1)
    log_p = F.log_softmax(t, dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1).mean()


class InBatchKLLoss(nn.Module):
    """KL distillation over the in-batch score matrix ``S = scale * Q D^T`` against a teacher matrix."""

    def __init__(self, scale: float = 1.0, student_temperature: float = 1.0, teacher_temperature: float = 1.0):
        super().__init__()
        self.scale = scale
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature

    @fp32
    def forward(self, query_emb: torch.Tensor, doc_emb: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return kl_distill(self.scale * query_emb @ doc_emb.T, teacher, self.student_temperature,
                          self.teacher_temperature, mask)
