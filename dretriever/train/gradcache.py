"""Gradient cache (Gao et al., 2021): train a large batch in the memory of a chunk.

``CachedEncoder`` stands in for the encoder inside ``method.loss``. Pass 1: every ``embed(batch, side)``
call is run chunk by chunk without a graph; the result is returned as a leaf tensor that requires grad,
and the inputs and RNG states of each chunk are recorded. The method computes its loss on these
embeddings as usual (gathers and all). ``backward(loss)`` then (a) back-propagates the loss to the cached
embeddings only, and (b) re-encodes each chunk with a graph under the same RNG state (so dropout masks
match pass 1) and back-propagates the cached gradient through it. The parameter gradients equal those
of the un-chunked step; only one chunk's activations are alive at a time.

Methods must produce trainable embeddings through ``encoder.embed`` (or calling the encoder); anything
else (a momentum encoder, fixed index vectors) is unaffected.
"""

from __future__ import annotations

import contextlib

import torch


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


class CachedEncoder:
    def __init__(self, encoder, chunk: int, autocast_factory=contextlib.nullcontext):
        self.encoder, self.chunk, self.autocast = encoder, chunk, autocast_factory
        self.records: list[tuple] = []

    def __getattr__(self, name):  # tokenize, config, tower, dim, ... come from the real encoder
        return getattr(self.encoder, name)

    def __call__(self, batch, side: str) -> torch.Tensor:
        return self.embed(batch, side)

    def embed(self, batch, side: str) -> torch.Tensor:
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        n = batch["input_ids"].shape[0]
        pieces, chunks = [], []
        for start in range(0, n, self.chunk):
            sub = {k: v[start:start + self.chunk] for k, v in batch.items()}
            # trim padding the chunk does not need
            width = int(sub["attention_mask"].sum(1).max())
            sub = {k: v[:, :width] for k, v in sub.items()}
            state = _RandState(self.encoder.device)
            with torch.no_grad():
                pieces.append(self.encoder.embed(sub, side))
            chunks.append((sub, state))
        reps = torch.cat(pieces).detach().requires_grad_(True)
        self.records.append((side, chunks, reps))
        return reps

    def backward(self, loss: torch.Tensor) -> None:
        reps = [r for _, _, r in self.records]
        loss.backward(inputs=reps)
        for side, chunks, r in self.records:
            if r.grad is None:
                continue
            start = 0
            for sub, state in chunks:
                n = sub["input_ids"].shape[0]
                g = r.grad[start:start + n]
                start += n
                with state.restore(), self.autocast():
                    out = self.encoder.embed(sub, side)
                out.backward(g)
        self.records.clear()
