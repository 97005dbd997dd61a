"""Losses, one file each. Every function takes embeddings (or scores) and returns a scalar tensor, computed in
fp32 whatever the caller's autocast (:func:`~dretriever.train.losses.precision.fp32`)."""

from .contrastive import contrastive_loss, in_batch_contrastive, moco_contrastive
from .pairwise import pairwise_softmax_loss
from .precision import fp32

__all__ = ["contrastive_loss", "fp32", "in_batch_contrastive", "moco_contrastive", "pairwise_softmax_loss"]
