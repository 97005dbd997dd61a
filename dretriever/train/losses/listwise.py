"""Listwise softmax cross-entropy over one query's candidates: its positive (column 0) and its negatives.

For query i with scores ``s_i0`` (the positive) and ``s_ij`` (its valid negatives, j = 1..n_i):

    loss_i = -log( exp(s_i0) / (exp(s_i0) + sum_j exp(s_ij)) )
    loss   = mean over queries of loss_i

The candidates are only the query's own: no other query's documents enter its softmax ("in-batch-free"),
which is what a cross-encoder affords (each extra candidate is another forward pass of the pair). A
constant score gives every row ``ln(1 + n_i)`` (:func:`listwise_constant_loss`): a loss below that means
the scorer separates positives from negatives, one at that level means it has learned nothing.

Many positives: one positive per row (the method draws one of the query's positives per epoch) and a mean
over rows, so a query weighs the same however many relevant documents it has; its other relevant
documents never appear among its negatives (the method excludes them).

Args:
    scores: (B, 1 + n) scores (e.g. a cross-encoder's raw logits), column 0 the positive.
    mask: (B, 1 + n) bool, True for a valid candidate (optional; a row with fewer negatives is padded with
        False). The positive is always kept.

References:
    Nogueira and Cho, "Passage Re-ranking with BERT" (2019): BERT cross-encoders for ranking.
    Gao, Dai and Callan, "Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline" (ECIR 2021):
    the localized contrastive estimation loss, a softmax over one positive and hard negatives of the
    first stage per query.

Inputs:
    scores (B, 1 + n) float; mask (B, 1 + n) bool or None. Returns a scalar, computed in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .precision import fp32


def valid_candidates(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, 1 + n) bool: ``mask`` (all True when None) with the positive column always kept."""
    valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool().clone()
    valid[:, 0] = True
    return valid


@fp32
def listwise_softmax_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of ``-log softmax(row)[0]`` over the row's valid candidates."""
    logits = scores.masked_fill(~valid_candidates(scores, mask), float("-inf"))
    labels = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(logits, labels)


def listwise_constant_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """The loss a constant score would get on the same rows: the mean of ``ln(1 + n_i)``."""
    counts = valid_candidates(scores, mask).sum(1).tolist()
    return float(sum(math.log(c) for c in counts) / max(len(counts), 1))
