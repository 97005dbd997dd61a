"""``EncoderView``: the encoder as ``method.loss`` sees it, and where autocast begins and ends.

The loop runs ``method.loss(view, batch)`` with autocast off, so every score product and loss computes in
fp32 (under autocast ``q.float() @ d.float().T`` still runs in bf16; DRhard turns autocast off for exactly
these products). The transformer stays fast: ``view.embed`` (or calling the view) runs the encoder under
the recipe's precision and returns fp32 embeddings, and ``view.autocast()`` gives that precision to any other
forward a method makes (MoCo's key encoder). Everything else (``tokenize``, ``config``, ``tower``, ``dim``,
...) is the encoder's. ``backward(loss)`` back-propagates the method's loss; the gradient cache's view
(:class:`~dretriever.train.gradcache.CachedEncoder`) re-encodes chunk by chunk there.
"""

from __future__ import annotations

import contextlib

import torch


class EncoderView:
    def __init__(self, encoder, autocast=contextlib.nullcontext):
        """``autocast``: a factory of the precision context (the loop's: the recipe's ``precision``)."""
        self.encoder, self.autocast = encoder, autocast

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def __call__(self, batch, side: str) -> torch.Tensor:
        return self.embed(batch, side)

    def embed(self, batch, side: str) -> torch.Tensor:
        """The encoder's embeddings of a tokenized ``batch``, computed under autocast, returned in fp32."""
        with self.autocast():
            return self.encoder.embed(batch, side).float()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
