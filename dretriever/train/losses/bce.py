"""Pointwise binary cross-entropy on (query, document) scores: the positive labelled 1, negatives 0.

For query i with logits ``s_i0`` (the positive) and ``s_ij`` (its valid negatives), with ``w`` the weight of
a positive (``pos_weight``):

    loss = ( sum_i w * softplus(-s_i0) + sum_ij softplus(s_ij) ) / (number of valid pairs)

which is ``torch.nn.BCEWithLogitsLoss(pos_weight=w)`` averaged over the valid pairs, the loss of
sentence-transformers' ``BinaryCrossEntropyLoss`` for cross-encoders. ``w`` = the negatives per positive
balances the two labels. The best constant score ``c`` (``sigmoid(c) = w / (w + n)`` over a batch of one
positive and ``n`` negatives per row) gives :func:`bce_constant_loss`: compare the training loss with it.

Unlike the listwise loss, the scores are calibrated probabilities' logits (comparable across queries), but
each pair is judged alone: a query's positive is not pushed above its own negatives directly.

Args:
    scores: (B, 1 + n) logits, column 0 the positive.
    mask: (B, 1 + n) bool, True for a valid pair (optional); the positive is always kept.
    pos_weight: the weight of a positive pair, a factor (> 0).

References:
    Nogueira and Cho, "Passage Re-ranking with BERT" (2019): monoBERT, pointwise cross-entropy.
    sentence-transformers, ``CrossEncoder`` training (``BinaryCrossEntropyLoss``).

Inputs:
    scores (B, 1 + n) float; mask (B, 1 + n) bool or None; pos_weight float. Returns a scalar, in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .listwise import valid_candidates
from .precision import fp32


@fp32
def binary_cross_entropy_loss(scores: torch.Tensor, mask: torch.Tensor | None = None,
                              pos_weight: float = 1.0) -> torch.Tensor:
    """``pos_weight * softplus(-positive) + softplus(negative)`` summed over valid pairs, over their count."""
    valid = valid_candidates(scores, mask)
    terms = F.softplus(scores).clone()
    terms[:, 0] = pos_weight * F.softplus(-scores[:, 0])
    return torch.where(valid, terms, torch.zeros_like(terms)).sum() / valid.sum()


def bce_constant_loss(scores: torch.Tensor, mask: torch.Tensor | None = None, pos_weight: float = 1.0) -> float:
    """The least loss any one constant score reaches on the same pairs (the level of a scorer that learned
    nothing): with ``P`` positives and ``N`` negatives, ``p = w P / (w P + N)`` and the loss
    ``(w P (-ln p) + N (-ln(1 - p))) / (P + N)``."""
    valid = valid_candidates(scores, mask)
    positives, pairs = valid.shape[0], int(valid.sum())
    negatives = pairs - positives
    if negatives == 0:
        return 0.0
    p = pos_weight * positives / (pos_weight * positives + negatives)
    return float((pos_weight * positives * -math.log(p) + negatives * -math.log(1 - p)) / pairs)
