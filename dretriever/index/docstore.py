"""SQLite doc store: one row per vector of a shard (``pos`` = its position in the shard's faiss index),
holding the docid, title, text and metadata, so that hits carry their text.

During a build the doc store is also the shard's staging area: the one pass over the sources writes every
passage here, and encoding then reads passages back by position, chunk after chunk.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from ..errors import DretrieverError

if TYPE_CHECKING:
    from ..data.beir import Document

FILENAME = "docs.sqlite"
SCHEMA = ("CREATE TABLE docs (pos INTEGER PRIMARY KEY, docid TEXT NOT NULL UNIQUE, title TEXT, text TEXT, "
          "metadata TEXT)")


class DuplicateId(DretrieverError):
    """A docid that is already in the store; ``docid`` names it."""

    def __init__(self, docid: str):
        self.docid = docid
        super().__init__(f"duplicate document id {docid!r}")


class DocStoreWriter:
    """Append rows to a new SQLite doc store, in position order; a repeated docid raises :class:`DuplicateId`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._con = sqlite3.connect(self.path)
        self._con.execute("PRAGMA journal_mode=OFF")
        self._con.execute("PRAGMA synchronous=OFF")  # a killed staging pass is redone from the start
        self._con.execute(SCHEMA)
        self.count = 0

    def add(self, rows: Iterable[tuple[str, "Document | None"]]) -> None:
        rows = list(rows)
        values = [(self.count + i, docid, d.title if d else None, d.text if d else None,
                   json.dumps(d.metadata, ensure_ascii=False) if d is not None and d.metadata else None)
                  for i, (docid, d) in enumerate(rows)]
        try:
            with self._con:
                self._con.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", values)
        except sqlite3.IntegrityError:
            seen: set[str] = set()
            for docid, _ in rows:  # which one: stored by an earlier batch, or twice in this batch
                row = self._con.execute("SELECT pos FROM docs WHERE docid = ?", (docid,)).fetchone()
                if docid in seen or (row is not None and row[0] < self.count):
                    raise DuplicateId(docid) from None
                seen.add(docid)
            raise
        self.count += len(values)

    def close(self) -> None:
        self._con.commit()
        self._con.close()


class DocStore:
    """Read-only access to one shard's doc store; safe to share between threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)

    def get_many(self, docids: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for start in range(0, len(docids), 900):  # SQLite's bound-parameter limit
            chunk = docids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self._con.execute(
                f"SELECT docid, title, text, metadata FROM docs WHERE docid IN ({marks})", chunk).fetchall()
            for docid, title, text, meta in rows:
                out[docid] = {"title": title or "", "text": text or "", "metadata": json.loads(meta) if meta else {}}
        return out

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, "Document"]]:
        """``(docid, Document)`` for positions ``start <= pos < stop``, in position order."""
        from ..data.beir import Document

        stop = len(self) if stop is None else stop
        cur = self._con.execute("SELECT docid, title, text, metadata FROM docs WHERE pos >= ? AND pos < ? "
                                "ORDER BY pos", (start, stop))
        for docid, title, text, meta in cur:
            yield docid, Document(title or "", text or "", json.loads(meta) if meta else {})

    def at(self, positions: list[int]) -> list[tuple[str, "Document"]]:
        """The rows at ``positions`` (any order, repeats allowed), in that order."""
        from ..data.beir import Document

        found: dict[int, tuple[str, Document]] = {}
        unique = sorted(set(int(p) for p in positions))
        for start in range(0, len(unique), 900):
            chunk = unique[start:start + 900]
            cur = self._con.execute(f"SELECT pos, docid, title, text, metadata FROM docs WHERE pos IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
            for pos, docid, title, text, meta in cur:
                found[pos] = (docid, Document(title or "", text or "", json.loads(meta) if meta else {}))
        return [found[int(p)] for p in positions]

    def __len__(self) -> int:
        row = self._con.execute("SELECT MAX(pos) FROM docs").fetchone()[0]
        return 0 if row is None else row + 1

    def close(self) -> None:
        self._con.close()
