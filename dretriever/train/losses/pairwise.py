"""STAR's pairwise softmax loss (Zhan et al., SIGIR 2021; jingtaozhan/DRhard ``star/model.py``).

For every (query, positive, negative) triple the loss is ``-log softmax([s+, s-])[0] = softplus(s- - s+)``.
Each query's loss is the mean over its valid pairs, and the batch loss the mean over the queries that have
at least one valid pair. Negatives are the other queries' positives ("random" in-batch negatives) and the
static hard negatives of the batch; a pair is dropped when its "negative" is in fact relevant to the query
(``rand_mask`` / ``hard_mask`` are 1 for valid pairs), which is what DRhard's ``rel_pair_mask`` and
``hard_pair_mask`` do. DRhard scores with the raw inner product; with L2-normalised embeddings scores lie in
[-1, 1] and need a temperature (scores / t) to train at all.

Many positives: each query brings one positive per batch (STAR samples it per epoch), and the other
copies of its relevant documents are masked, so a query with many positives has fewer valid pairs. The
per-query mean keeps every query's weight equal however many of its pairs are masked (DRhard and earlier
versions took one mean over all pairs of the batch, which down-weights such queries). When every query
has the same number of valid pairs, as with one positive per query and no shared relevant documents, the
two means are equal.

References:
    Zhan et al., "Optimizing Dense Retrieval Model Training with Hard Negatives" (SIGIR 2021).

Inputs:
    q (B, h) queries; pos (P, h) positives (possibly gathered) with labels (B,) the column of each query's
    own positive; rand_mask (B, P); neg (N, h) hard negatives with hard_mask (B, N) (optional).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32


@fp32
def pairwise_softmax_loss(q: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor, rand_mask: torch.Tensor,
                          neg: torch.Tensor | None = None, hard_mask: torch.Tensor | None = None,
                          temperature: float = 1.0) -> torch.Tensor:
    """``q`` (B, h) queries; ``pos`` (P, h) positives (possibly gathered), ``labels`` (B,) the column of each
    query's own positive in ``pos``; ``rand_mask`` (B, P) 1 where ``pos[j]`` is a valid negative for query i
    (0 at its own positive and at other copies of relevant documents); ``neg`` (N, h) hard negatives with
    ``hard_mask`` (B, N) likewise. Mean over queries of each query's mean over its valid pairs."""
    s_rand = q.float() @ pos.float().T / temperature
    s_pos = s_rand.gather(1, labels.view(-1, 1))
    rand_mask = rand_mask.to(s_rand.dtype)
    total = (F.softplus(s_rand - s_pos) * rand_mask).sum(1)
    count = rand_mask.sum(1)
    if neg is not None:
        s_hard = q.float() @ neg.float().T / temperature
        hard_mask = torch.ones_like(s_hard) if hard_mask is None else hard_mask.to(s_hard.dtype)
        total = total + (F.softplus(s_hard - s_pos) * hard_mask).sum(1)
        count = count + hard_mask.sum(1)
    has = count > 0
    if not bool(has.any()):
        return total.sum() * 0.0
    return (total[has] / count[has]).mean()
