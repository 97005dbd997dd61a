"""Contriever's data augmentation: fixed-length windows of a corpus's token stream, random crops, token deletion.

Follows facebookresearch/contriever ``src/data.py``: the documents, tokenized without special tokens, are
concatenated in corpus order into one stream (:class:`TokenStream`); each epoch cuts it into windows of
``length`` tokens from a random offset in ``[0, length)``, so a window may span documents and none is a short
tail; a crop keeps ``max(1, int(len * ratio))`` consecutive tokens with ``ratio ~ U(ratio_min, ratio_max)`` at a
uniformly random start; deletion drops each token with probability ``p`` (never all of them); special tokens
are added after augmentation.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch


class TokenStream:
    """The documents' tokens concatenated in order, and which document holds each position."""

    def __init__(self, token_lists: list[list[int]]):
        self.lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
        self.ends = np.cumsum(self.lengths)  # document d holds positions [ends[d] - lengths[d], ends[d])
        self.tokens = np.fromiter(chain.from_iterable(token_lists), dtype=np.int64, count=int(self.lengths.sum()))

    def __len__(self) -> int:
        return len(self.tokens)

    def window_starts(self, length: int, offset: int) -> np.ndarray:
        """Starts of the windows of ``length`` tokens from ``offset`` (in ``[0, length)``), none cut short.

        Their number, ``(len - length + 1) // length``, is the same for every offset."""
        n = max(0, (len(self) - length + 1) // length)
        return offset + length * np.arange(n, dtype=np.int64)

    def documents(self, start: int, length: int) -> list[int]:
        """The documents holding tokens of ``tokens[start:start + length]`` (empty documents hold none)."""
        first, last = np.searchsorted(self.ends, [start, start + length - 1], side="right")
        return [d for d in range(int(first), int(last) + 1) if self.lengths[d]]


def random_crop(ids: list[int], ratio_min: float, ratio_max: float, rng: np.random.Generator) -> list[int]:
    ratio = rng.uniform(ratio_min, ratio_max)
    length = max(1, int(len(ids) * ratio))
    start = int(rng.integers(0, len(ids) - length + 1))
    return ids[start:start + length]


def delete_tokens(ids: list[int], p: float, rng: np.random.Generator) -> list[int]:
    if p <= 0:
        return list(ids)
    keep = rng.random(len(ids)) >= p
    out = [t for t, k in zip(ids, keep) if k]
    return out or [ids[int(rng.integers(0, len(ids)))]]


def pad_with_specials(token_lists: list[list[int]], tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """``[CLS] tokens [SEP]`` per row (truncated to ``max_length``), right-padded, with attention masks."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    rows = [[cls] + list(t[:max_length - 2]) + [sep] for t in token_lists]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
