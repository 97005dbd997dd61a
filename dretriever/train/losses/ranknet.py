"""RankNet pairwise loss weighted by the metric change of a swap (LambdaRank / LambdaLoss style), as ADORE uses it.

For each query, every pair (i, j) of its candidates with ``rel_i > rel_j`` contributes

    w_ij * log(1 + exp(-(s_i - s_j)))

and the query's loss is the sum over its pairs divided by a count that ``normalize`` chooses; the batch loss is
the mean over queries:

- ``pairs`` (default, DRhard's ``adore/train.py``): the number of its pairs (i, j) with ``rel_i > rel_j``
  among its candidates, whatever their weights, so a query's loss is a mean over its pairs. With one positive
  among ADORE's top 200 that is 199 pairs.
- ``positives``: ``P``, its number of relevant candidates (``rel > 0``), a mean over its positives: with one
  positive, the plain weighted sum, about (number of candidates - 1) times the ``pairs`` loss (199x for the
  top 200), so most steps are clipped at a gradient norm of 1.

The weight is the change of nDCG@cut when i and j swap ranks (LambdaRank's ΔnDCG):

    w_ij = |G(rel_i) - G(rel_j)| * |g(r_i) - g(r_j)| / IDCG,       G(rel) = 2^rel - 1

where ``r`` is the (1-based) rank of the candidate in the retrieval the query just made, ``g`` the rank
discount of the target metric, zero beyond the metric cut (``g(r) = 1/r``: reciprocal, ADORE's MRR
weighting; ``g(r) = 1/log2(r+1)``: DCG), and IDCG the best DCG@cut the query's judged grades allow
(:func:`ideal_dcg`). Pairs whose documents both lie beyond the cut weigh nothing; a relevant document
ranked below the cut is pulled up against the documents above the cut that it outranks in relevance.

Many positives: graded pairs between two relevant documents count too (rel 2 over rel 1); IDCG makes the
weights independent of the gain scale, and either division bounds a query's loss whatever its number of
positives (``pairs``: by the largest weighted pair term; ``positives``: by ``N`` candidates x the largest
softplus), so a query with 1,000 positives weighs no more than one with 1. With one positive of any grade,
IDCG = G(rel) * g(1) = G(rel), so the weights are the binary ``|g(r_i) - g(r_j)|`` of DRhard.

Without ``relevance`` (``lambda_weights(ranks, cut, discount)``) the weights are the binary
``|g(r_i) - g(r_j)|`` (no gains, no IDCG); the division still applies in :func:`ranknet_loss`.

References:
    Burges et al., "Learning to Rank using Gradient Descent" (ICML 2005): RankNet.
    Burges, "From RankNet to LambdaRank to LambdaMART: An Overview" (MSR-TR-2010-82): ΔnDCG weights.
    Wang et al., "The LambdaLoss Framework for Ranking Metric Optimization" (CIKM 2018).
    Zhan et al., "Optimizing Dense Retrieval Model Training with Hard Negatives" (SIGIR 2021): ADORE.

Inputs (batch of ``B`` queries, ``N`` candidates each, padded):
    scores     (B, N) float  student scores (query embedding . fixed document embedding)
    labels     (B, N) int    graded relevance of the candidate (0: not relevant); bool is read as 0/1
    ranks      (B, N) int    1-based rank of the candidate in the detached retrieval
    mask       (B, N) bool   real candidate (False for padding); optional
    ideal      (B,)   float  IDCG@cut of each query from all its judged grades; optional (default: from the
                             candidates' grades, which is exact when every positive is a candidate)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import fp32

DISCOUNTS = ("reciprocal", "log2")
NORMALIZATIONS = ("pairs", "positives")


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


def relevance_gain(relevance: torch.Tensor) -> torch.Tensor:
    """``G(rel) = 2^rel - 1`` (0 for irrelevant, 1 for grade 1, 3 for grade 2)."""
    return torch.pow(2.0, relevance.to(torch.float32)) - 1.0


def ideal_dcg(relevance: torch.Tensor, cut: int | None = None, discount: str = "reciprocal") -> torch.Tensor:
    """(B,) best DCG@cut of each row of grades (B, K) (0-padded): gains sorted down, discounted by rank."""
    grades = relevance.to(torch.float32).clamp(min=0).sort(dim=1, descending=True).values
    ranks = torch.arange(1, grades.shape[1] + 1, device=grades.device).expand_as(grades)
    return (relevance_gain(grades) * rank_gain(ranks, cut, discount)).sum(1)


def lambda_weights(ranks: torch.Tensor, cut: int | None = None, discount: str = "reciprocal",
                   relevance: torch.Tensor | None = None, ideal: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, N) weights of swapping candidates i and j.

    With ``relevance`` (B, N) grades: ΔnDCG, ``|G_i - G_j| |g(r_i) - g(r_j)| / IDCG`` (``ideal`` (B,) or
    :func:`ideal_dcg` of ``relevance``; rows with IDCG 0 weigh 0). Without: ``|g(r_i) - g(r_j)|``.
    """
    disc = rank_gain(ranks, cut, discount)
    w = (disc.unsqueeze(2) - disc.unsqueeze(1)).abs()
    if relevance is None:
        return w
    gain = relevance_gain(relevance)
    w = w * (gain.unsqueeze(2) - gain.unsqueeze(1)).abs()
    if ideal is None:
        ideal = ideal_dcg(relevance, cut, discount)
    ideal = ideal.to(w.dtype).to(w.device)
    scale = torch.where(ideal > 0, 1.0 / ideal.clamp(min=1e-12), torch.zeros_like(ideal))
    return w * scale.view(-1, 1, 1)


@fp32
def ranknet_loss(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, normalize: str = "pairs") -> torch.Tensor:
    """Weighted RankNet loss over pairs with ``labels_i > labels_j``: per query the sum over its pairs divided
    by its number of such pairs (``normalize="pairs"``, DRhard's) or of relevant candidates (``"positives"``),
    then the mean over queries (a query without pairs counts as 0).

    ``weights`` is (B, N, N) (``lambda_weights``) or None for the plain RankNet loss (all pairs weigh 1).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
    rel = labels.to(torch.float32)
    if mask is None:
        mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    mask = mask.bool()
    valid = mask.unsqueeze(2) & mask.unsqueeze(1)
    pairs = valid & (rel.unsqueeze(2) > rel.unsqueeze(1))  # (B, N, N): i more relevant than j
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # s_i - s_j
    per_pair = F.softplus(-diff)  # -log sigmoid(s_i - s_j)
    if weights is not None:  # zeroed off the pairs first, so a non-finite weight elsewhere cannot reach a gradient
        per_pair = per_pair * torch.where(pairs, weights.to(per_pair.dtype), torch.zeros_like(per_pair))
    per_pair = torch.where(pairs, per_pair, torch.zeros_like(per_pair))
    count = pairs.sum((1, 2)) if normalize == "pairs" else ((rel > 0) & mask).sum(1)
    return (per_pair.sum((1, 2)) / count.clamp(min=1).to(per_pair.dtype)).mean()


class RankNetLoss(nn.Module):
    """ADORE's loss on embeddings: scores are query . document dot products, documents fixed.

    Args:
        cut: metric cut; pairs whose candidates both rank beyond it weigh zero (None: no cut).
        discount: ``"reciprocal"`` (1/r, ADORE's MRR weighting) or ``"log2"`` (DCG).
        weighted: False gives the plain RankNet loss.
        normalize: ``"pairs"`` (DRhard's: a mean over each query's pairs) or ``"positives"``.
    """

    def __init__(self, cut: int | None = 10, discount: str = "reciprocal", weighted: bool = True,
                 normalize: str = "pairs"):
        super().__init__()
        if discount not in DISCOUNTS:
            raise ValueError(f"discount: expected one of {DISCOUNTS}, got {discount!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
        self.cut, self.discount, self.weighted, self.normalize = cut, discount, weighted, normalize

    @fp32
    def forward(self, query_emb: torch.Tensor, doc_emb: torch.Tensor, labels: torch.Tensor, ranks: torch.Tensor,
                mask: torch.Tensor | None = None, ideal: torch.Tensor | None = None) -> torch.Tensor:
        """``query_emb`` (B, D), ``doc_emb`` (B, N, D) (no gradient needed), labels (grades)/ranks/mask (B, N),
        ``ideal`` (B,) optional IDCG@cut."""
        scores = torch.einsum("bd,bnd->bn", query_emb, doc_emb.to(query_emb.dtype))
        if self.weighted:
            grades = labels.to(torch.float32) * (mask.float() if mask is not None else 1.0)
            weights = lambda_weights(ranks, self.cut, self.discount, grades, ideal)
        else:
            weights = None
        return ranknet_loss(scores, labels, weights, mask, self.normalize)
