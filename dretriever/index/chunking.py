"""Split documents into overlapping passages, by words or by tokens of the encoder's tokenizer.

Passage ``i`` of document ``D`` gets the id ``D#i`` and keeps the document's title (so that every
passage is encoded as ``title text``, like a whole BEIR document). Windows hold ``chunk_size`` words or
tokens and start every ``chunk_size - chunk_overlap``; the last window ends at the end of the text.
Token windows are cut at the tokenizer's character offsets, so passages are exact substrings of the
original text. ``none`` keeps one passage per document, with the text untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import DretrieverError

MODES = ("none", "words", "tokens")
SEPARATOR = "#"
_WORD = re.compile(r"\S+")


@dataclass
class ChunkConfig:
    chunking: str = field(default="words", metadata={"help": "none | words | tokens (of the encoder's tokenizer)"})
    chunk_size: int = field(default=200, metadata={"help": "words or tokens per passage"})
    chunk_overlap: int = field(default=40, metadata={"help": "words or tokens shared by consecutive passages"})

    def __post_init__(self):
        if self.chunking not in MODES:
            raise DretrieverError(f"chunking: expected one of {MODES}, got {self.chunking!r}")
        if self.chunk_size < 1:
            raise DretrieverError(f"chunk_size: must be at least 1, got {self.chunk_size}")
        if not 0 <= self.chunk_overlap < self.chunk_size:
            raise DretrieverError(f"chunk_overlap: must lie in [0, chunk_size), got {self.chunk_overlap}")

    def describe(self) -> dict:
        return {"mode": self.chunking, "size": self.chunk_size, "overlap": self.chunk_overlap}


def passage_id(doc_id: str, chunk: int) -> str:
    return f"{doc_id}{SEPARATOR}{chunk}"


def parent_id(pid: str) -> str:
    """The document id of passage id ``D#i`` (the id itself when it has no chunk suffix)."""
    head, sep, tail = pid.rpartition(SEPARATOR)
    return head if sep and tail.isdigit() else pid


def _windows(n: int, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    if n == 0:
        yield 0, 0
        return
    start, stride = 0, size - overlap
    while True:
        end = min(start + size, n)
        yield start, end
        if end == n:
            return
        start += stride


class Chunker:
    """``split(text)`` -> passage texts; ``tokenizer`` is needed for ``tokens`` mode."""

    def __init__(self, config: ChunkConfig, tokenizer=None):
        if config.chunking == "tokens" and tokenizer is None:
            raise DretrieverError("chunking by tokens needs the encoder's tokenizer")
        if config.chunking == "tokens" and not getattr(tokenizer, "is_fast", False):
            raise DretrieverError("chunking by tokens needs a fast tokenizer (character offsets)")
        self.config, self.tokenizer = config, tokenizer

    def split(self, text: str) -> list[str]:
        c = self.config
        if c.chunking == "none":
            return [text]
        if c.chunking == "words":
            spans = [m.span() for m in _WORD.finditer(text)]
        else:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            spans = [s for s in enc["offset_mapping"] if s[1] > s[0]]
        return [text[spans[a][0]:spans[b - 1][1]] if b > a else "" for a, b in
                _windows(len(spans), c.chunk_size, c.chunk_overlap)]
