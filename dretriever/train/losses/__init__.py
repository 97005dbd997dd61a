"""Losses, one file each. Every function takes embeddings (or scores) and returns a scalar tensor."""

from .contrastive import contrastive_loss, in_batch_contrastive, moco_contrastive
from .pairwise import pairwise_softmax_loss

__all__ = ["contrastive_loss", "in_batch_contrastive", "moco_contrastive", "pairwise_softmax_loss"]
