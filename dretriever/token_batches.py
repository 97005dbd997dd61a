"""Token rows held flat, and padding-aware batches cut from them by a token budget.

Inference encodes texts sorted by token count (longest first). A fixed count of texts per batch pads every
row to the batch's longest, and a large batch of short queries also runs its activations out of the CPU
caches (the issue-13 measurement: 300 SciFact queries at batch 8 ran 108 q/s, at batch 300 46 q/s).
:func:`plan_batches` instead caps each batch's padded size (rows x longest row) at ``max_tokens``, so a
batch of short rows holds more of them and one of long rows fewer, each about the same amount of work.

:class:`TokenRows` keeps the tokenizer's unpadded rows as one flat int64 array per column plus offsets,
and pads any selection of rows with one numpy gather: the same tensors as ``tokenizer.pad`` (checked in
tests/test_encoder.py) without its per-row Python work, which was most of the tokenize cost on short texts.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch

from .errors import DretrieverError


class TokenRows:
    """Unpadded token rows (the ``padding=False`` output of a tokenizer) as flat arrays."""

    def __init__(self, columns: dict[str, list[list[int]]], pad_values: dict[str, int], padding_side: str = "right"):
        ids = columns["input_ids"]
        self.lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        self.starts = np.zeros(len(ids), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=self.starts[1:])
        total = int(self.lengths.sum())
        # attention_mask is rebuilt from the lengths (it is all ones before padding)
        self.flat = {k: np.fromiter(chain.from_iterable(v), dtype=np.int64, count=total)
                     for k, v in columns.items() if k != "attention_mask"}
        self.with_mask = "attention_mask" in columns
        self.pad_values = pad_values
        self.left = padding_side == "left"

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows ``idx`` padded to their longest: int64 tensors keyed like the tokenizer's output."""
        lens = self.lengths[idx]
        width = int(lens.max())
        pos = np.arange(width)
        if self.left:
            offset = pos[None, :] - (width - lens)[:, None]
        else:
            offset = np.broadcast_to(pos[None, :], (len(idx), width))
        mask = (offset >= 0) & (offset < lens[:, None])
        gather = np.where(mask, self.starts[idx, None] + offset, 0)
        out = {}
        for k, flat in self.flat.items():
            out[k] = torch.from_numpy(np.where(mask, flat[gather], self.pad_values.get(k, 0)))
        if self.with_mask:
            out["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        return out


def parse_max_tokens(value: str | int | None) -> int | str | None:
    """A command line's ``--max_tokens``: ``auto`` (the encoder's default), ``none`` (fixed batches) or N."""
    if value is None or isinstance(value, int):
        return value
    word = value.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else word
    if word.isdigit() and int(word) > 0:
        return int(word)
    raise DretrieverError(f"max_tokens: expected auto, none or a positive integer, got {value!r}")


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None) -> list[np.ndarray]:
    """Row indices per batch, longest rows first; each batch holds at most ``batch_size`` rows and (when
    ``max_tokens`` is set) at most ``max_tokens`` padded tokens (one row even if it alone is longer)."""
    if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size}, {max_tokens}")
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        size = batch_size
        if max_tokens is not None:
            size = max(1, min(batch_size, max_tokens // max(int(lengths[order[start]]), 1)))
        batches.append(order[start:start + size])
        start += size
    return batches
