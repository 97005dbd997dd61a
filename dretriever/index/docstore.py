"""SQLite doc store: docid -> title, text, metadata, so that hits carry their text."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..errors import DretrieverError

if TYPE_CHECKING:
    from ..data.beir import Document

FILENAME = "docs.sqlite"


class DocStoreWriter:
    """Append ``(docid, Document)`` rows to a new SQLite doc store; a repeated docid is an error."""

    def __init__(self, path: str | Path):
        self._con = sqlite3.connect(path)
        self._con.execute("PRAGMA journal_mode=OFF")
        self._con.execute("CREATE TABLE docs (docid TEXT PRIMARY KEY, title TEXT, text TEXT, metadata TEXT)")

    def add(self, rows: Iterable[tuple[str, "Document"]]) -> None:
        try:
            self._con.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", (
                (docid, d.title, d.text, json.dumps(d.metadata, ensure_ascii=False) if d.metadata else None)
                for docid, d in rows))
        except sqlite3.IntegrityError as e:
            raise DretrieverError(f"duplicate document id in the source ({e})") from None

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

    def __len__(self) -> int:
        return self._con.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    def close(self) -> None:
        self._con.close()
