"""InfoNCE / in-batch contrastive loss with temperature, for local or gathered (multi-process) batches.

``contrastive_loss(q, d, labels, t)`` = mean_i -log softmax(q_i . d / t)[labels_i]. With documents
gathered from all processes, ``labels`` must point into the gathered matrix: see
:func:`dretriever.train.distributed.gathered_labels`.

Many positives: one labelled positive per row and a mean over rows, so every query weighs the same however
many relevant documents it has; columns holding its other relevant documents should be dropped with
``mask`` (STAR's ``loss: softmax`` does) rather than counted as negatives. Contriever's pairs (two crops of
one chunk) have exactly one positive each.

References:
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018): InfoNCE.
    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR 2020): MoCo.
    Izacard et al., "Unsupervised Dense Information Retrieval with Contrastive Learning" (2021): Contriever.

Inputs:
    q (B, h) queries; d (M, h) documents; labels (B,) long, the column of each row's positive; mask (B, M)
    bool (optional, True drops an entry from the softmax). MoCo: q (B, h), its keys k (B, h), queue (K, h),
    mask (B, K) bool (optional) over the queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import all_gather_with_grad, gathered_labels
from .precision import fp32


@fp32
def contrastive_loss(q: torch.Tensor, d: torch.Tensor, labels: torch.Tensor, temperature: float = 0.05,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``q @ d.T / temperature`` against ``labels``.

    ``mask`` (bool, same shape as the score matrix) marks entries to drop from the softmax (e.g. other
    copies of a query's positive); the labelled entry is never dropped.
    """
    scores = q.float() @ d.float().T / temperature
    if mask is not None:
        keep = torch.zeros_like(mask)
        keep[torch.arange(len(labels), device=labels.device), labels] = True
        scores = scores.masked_fill(mask & ~keep, float("-inf"))
    return F.cross_entropy(scores, labels)


@fp32
def in_batch_contrastive(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None = None,
                         temperature: float = 0.05, gather: bool = True) -> torch.Tensor:
    """Each query against its positive, every other positive and every hard negative of the (global) batch.

    ``q`` and ``pos`` are (B, h) with ``pos[i]`` the positive of ``q[i]``; ``neg`` (B*n, h) or None.
    Documents are ``[pos; neg]`` per process and gathered in rank order, so labels are offset by
    ``rank * len(docs)``.
    """
    docs = pos if neg is None else torch.cat([pos, neg])
    if gather:
        all_docs = all_gather_with_grad(docs)
        labels = gathered_labels(q.shape[0], docs.shape[0], q.device)
    else:
        all_docs, labels = docs, torch.arange(q.shape[0], device=q.device)
    return contrastive_loss(q, all_docs, labels, temperature)


@fp32
def moco_contrastive(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.05,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """MoCo: ``q_i`` against its key ``k_i`` (positive, column 0) and every key in ``queue`` (K, h).

    ``mask`` (B, K) bool drops queue keys from row ``i``'s softmax (keys of ``q_i``'s own chunk or document,
    which a queue longer than an epoch holds); the positive is never dropped.
    """
    l_pos = (q.float() * k.float()).sum(-1, keepdim=True)
    l_neg = q.float() @ queue.float().T
    if mask is not None:
        l_neg = l_neg.masked_fill(mask, float("-inf"))
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
