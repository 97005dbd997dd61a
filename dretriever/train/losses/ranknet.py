"""RankNet pairwise loss weighted by the metric change of a swap (LambdaLoss style), as ADORE uses it.

For each query, every pair (i relevant, j not relevant) among its candidates contributes

    w_ij * log(1 + exp(-(s_i - s_j)))        with    w_ij = |g(r_i) - g(r_j)|

where ``r`` is the (1-based) rank of the candidate in the retrieval the query just made and ``g`` is
the rank discount of the target metric, zero beyond the metric cut: ``g(r) = 1/r`` (reciprocal, as in
MRR@cut and ADORE's weighting) or ``g(r) = 1/log2(r+1)`` (DCG), and ``g(r) = 0`` for ``r > cut``.
Pairs whose documents both lie beyond the cut weigh nothing; a relevant document ranked below the cut
is pulled up against the irrelevant ones above the cut.

The loss is the weighted sum over pairs divided by the number of queries.

References:
    Burges et al., "Learning to Rank using Gradient Descent" (ICML 2005): RankNet.
    Wang et al., "The LambdaLoss Framework for Ranking Metric Optimization" (CIKM 2018).
    Zhan et al., "Optimizing Dense Retrieval Model Training with Hard Negatives" (SIGIR 2021): ADORE.

Inputs (batch of ``B`` queries, ``N`` candidates each, padded):
    scores  (B, N) float   student scores (query embedding . fixed document embedding)
    labels  (B, N) bool    candidate is relevant
    ranks   (B, N) int     1-based rank of the candidate in the detached retrieval
    mask    (B, N) bool    real candidate (False for padding); optional
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISCOUNTS = ("reciprocal", "log2")


def rank_gain(ranks: torch.Tensor, cut: int | None = None, discount: str = "reciprocal") -> torch.Tensor:
    """``g(r)``: ``1/r`` or ``1/log2(r+1)`` for ``r <= cut``, else 0 (no cut when ``cut`` is None or 0)."""
    r = ranks.to(torch.float32)
    if discount == "reciprocal":
        gain = 1.0 / r
    elif discount == "log2":
        gain = 1.0 / torch.log2(r + 1.0)
    else:
        raise ValueError(f"discount: expected one of {DISCOUNTS}, got {discount!r}")
    if cut:
        gain = torch.where(r <= cut, gain, torch.zeros_like(gain))
    return gain


def lambda_weights(ranks: torch.Tensor, cut: int | None = None, discount: str = "reciprocal") -> torch.Tensor:
    """(B, N, N) weights ``|g(r_i) - g(r_j)|`` of swapping candidates i and j."""
    gain = rank_gain(ranks, cut, discount)
    return (gain.unsqueeze(2) - gain.unsqueeze(1)).abs()


def ranknet_loss(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted RankNet loss over (relevant i, irrelevant j) pairs, summed per query, averaged over queries.

    ``weights`` is (B, N, N) (``lambda_weights``) or None for the plain RankNet loss (all pairs weigh 1).
    """
    labels = labels.bool()
    if mask is None:
        mask = torch.ones_like(labels)
    mask = mask.bool()
    pairs = (labels & mask).unsqueeze(2) & (~labels & mask).unsqueeze(1)  # (B, N, N): i relevant, j not
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # s_i - s_j
    per_pair = F.softplus(-diff)  # -log sigmoid(s_i - s_j)
    if weights is not None:
        per_pair = per_pair * weights
    per_pair = torch.where(pairs, per_pair, torch.zeros_like(per_pair))
    return per_pair.sum() / scores.shape[0]


class RankNetLoss(nn.Module):
    """ADORE's loss on embeddings: scores are query . document dot products, documents fixed.

    Args:
        cut: metric cut; pairs whose candidates both rank beyond it weigh zero (None: no cut).
        discount: ``"reciprocal"`` (1/r, ADORE's MRR weighting) or ``"log2"`` (DCG).
        weighted: False gives the plain RankNet loss.
    """

    def __init__(self, cut: int | None = 10, discount: str = "reciprocal", weighted: bool = True):
        super().__init__()
        if discount not in DISCOUNTS:
            raise ValueError(f"discount: expected one of {DISCOUNTS}, got {discount!r}")
        self.cut, self.discount, self.weighted = cut, discount, weighted

    def forward(self, query_emb: torch.Tensor, doc_emb: torch.Tensor, labels: torch.Tensor, ranks: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``query_emb`` (B, D), ``doc_emb`` (B, N, D) (no gradient needed), labels/ranks/mask (B, N)."""
        scores = torch.einsum("bd,bnd->bn", query_emb, doc_emb.to(query_emb.dtype))
        weights = lambda_weights(ranks, self.cut, self.discount) if self.weighted else None
        return ranknet_loss(scores, labels, weights, mask)
