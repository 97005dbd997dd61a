"""Contriever's data augmentation: chunks of a document's tokens, independent random crops, token deletion.

Follows facebookresearch/contriever ``src/data.py``: a crop keeps ``int(len * ratio)`` consecutive tokens
with ``ratio ~ U(ratio_min, ratio_max)`` at a uniformly random start; deletion drops each token with
probability ``p``; special tokens are added after augmentation.
"""

from __future__ import annotations

import numpy as np
import torch


def chunk(ids: list[int], length: int, min_length: int = 1) -> list[list[int]]:
    """Consecutive pieces of ``length`` tokens (the last may be shorter; pieces under ``min_length`` dropped)."""
    pieces = [ids[i:i + length] for i in range(0, len(ids), length)]
    return [p for p in pieces if len(p) >= min_length]


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
