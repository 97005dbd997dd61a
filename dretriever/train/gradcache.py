"""Gradient cache (Gao et al., 2021): train a large batch in the memory of a chunk.

``CachedEncoder`` is the loop's :class:`~dretriever.train.encoder_view.EncoderView` when ``grad_cache_chunk``
> 0. Pass 1: every ``embed(batch, side)`` call is run chunk by chunk (under the view's autocast) without a
graph; the result is returned as an fp32 leaf tensor that requires grad, and the inputs and RNG states of
each chunk are recorded. The method computes its loss on these embeddings as usual (gathers and all).
``backward(loss)`` then (a) back-propagates the loss to the cached embeddings only, and (b) re-encodes each
chunk with a graph under the same RNG state (so dropout masks match pass 1) and back-propagates the cached
gradient through it. The parameter gradients equal those of an un-cached step encoding the same chunks; only
one chunk's activations are alive at a time.

Each chunk drops the trailing columns that are padding in all of its rows (exact: no real token attends to
them, and the real tokens keep their positions). Leading padding (a left-padding tokenizer) is kept: removing
it would shift the positions of the real tokens.

Methods must produce trainable embeddings through ``encoder.embed`` (or calling the encoder); anything
else (a momentum encoder, fixed index vectors) is unaffected.
"""

from __future__ import annotations

import contextlib

import torch

from .encoder_view import EncoderView

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _RandState:
    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    @contextlib.contextmanager
    def restore(self):
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, self.device)


def chunks(batch: dict, size: int) -> list[dict]:
    """``batch`` (its model inputs) in chunks of ``size`` rows, each without its trailing all-padding columns."""
    batch = {k: v for k, v in batch.items() if k in INPUTS}
    out = []
    for start in range(0, batch["input_ids"].shape[0], size):
        sub = {k: v[start:start + size] for k, v in batch.items()}
        real = sub["attention_mask"].any(0).nonzero()
        width = int(real[-1]) + 1 if len(real) else sub["attention_mask"].shape[1]
        out.append({k: v[:, :width] for k, v in sub.items()})
    return out


class CachedEncoder(EncoderView):
    def __init__(self, encoder, chunk: int, autocast=contextlib.nullcontext):
        super().__init__(encoder, autocast)
        self.chunk = chunk
        self.records: list[tuple] = []

    def embed(self, batch, side: str) -> torch.Tensor:
        pieces, recorded = [], []
        for sub in chunks(batch, self.chunk):
            state = _RandState(self.encoder.device)
            with torch.no_grad(), self.autocast():
                pieces.append(self.encoder.embed(sub, side).float())
            recorded.append((sub, state))
        reps = torch.cat(pieces).requires_grad_(True)
        self.records.append((side, recorded, reps))
        return reps

    def backward(self, loss: torch.Tensor) -> None:
        reps = [r for _, _, r in self.records]
        loss.backward(inputs=reps)
        for side, recorded, r in self.records:
            if r.grad is None:
                continue
            start = 0
            for sub, state in recorded:
                n = sub["input_ids"].shape[0]
                g = r.grad[start:start + n]
                start += n
                with state.restore(), self.autocast():
                    out = self.encoder.embed(sub, side).float()
                out.backward(g)
        self.records.clear()
