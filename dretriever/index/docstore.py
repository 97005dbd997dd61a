"""SQLite doc store: one row per vector of a shard (``pos`` = its position in the shard's faiss index),
holding the docid, title, text and metadata, so that hits carry their text.

During a build the doc store is also the shard's staging area: the one pass over the sources writes every
passage here, and encoding then reads passages back by position, chunk after chunk.

When a shard is finished, :func:`finalize_docstore` adds the columns that updates and filters query: ``doc_id``
(the source document's id: ``metadata["doc_id"]`` in a datastore, else the row's own id) and one typed column
``f_KEY`` per filter key declared at build time (``--filter_keys year:int,source``), each with its index, so
that a delete finds a document's passages and a filter finds its allowed positions without a scan.

A writer killed inside a transaction (a build killed while :func:`finalize_docstore` commits) leaves a hot
rollback journal (``docs.sqlite-journal``) that only a read-write connection can roll back: :class:`DocStore`
rolls it back (:func:`recover`) before it opens the store read-only, so the build's rerun reads the store as it
was before the killed transaction and finalizes it again.
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


DOC_ID_INDEX = "docs_doc_id"
SQL_TYPES = {"int": "INTEGER", "float": "REAL", "str": "TEXT"}


def filter_column(key: str) -> str:
    return f'"f_{key}"'


def recover(path: str | Path) -> None:
    """Roll back a killed writer's hot journal, if ``path`` has one (a read on a read-write connection does it;
    a read-only connection would fail with "attempt to write a readonly database"). Where the folder is not
    writable, the read-only open that follows reports the problem."""
    if not Path(f"{path}-journal").exists():
        return
    try:
        con = sqlite3.connect(path)
        try:
            con.execute("PRAGMA schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        pass


def finalize_docstore(path: str | Path, filter_keys: dict[str, str] | None = None) -> None:
    """Add the ``doc_id`` column and the declared filter columns, filled from the metadata, with indexes.

    Idempotent (a rerun after a kill adds only what is missing); one transaction.
    """
    con = sqlite3.connect(path)
    try:
        have = {row[1] for row in con.execute("PRAGMA table_info(docs)")}
        with con:
            if "doc_id" not in have:
                con.execute("ALTER TABLE docs ADD COLUMN doc_id TEXT")
                con.execute("UPDATE docs SET doc_id = COALESCE(json_extract(metadata, '$.doc_id'), docid)")
                con.execute(f"CREATE INDEX {DOC_ID_INDEX} ON docs(doc_id)")
            for key, kind in (filter_keys or {}).items():
                if f"f_{key}" in have:
                    continue
                col = filter_column(key)
                con.execute(f"ALTER TABLE docs ADD COLUMN {col} {SQL_TYPES[kind]}")
                con.execute(f"UPDATE docs SET {col} = json_extract(metadata, ?)", (f'$."{key}"',))
                con.execute(f'CREATE INDEX "docs_f_{key}" ON docs({col})')
    finally:
        con.close()


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
        recover(self.path)
        self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        columns = {row[1] for row in self._con.execute("PRAGMA table_info(docs)")}
        # stores finished before the doc_id column existed: the same value, found by a scan
        self.doc_id_expr = "doc_id" if "doc_id" in columns else "COALESCE(json_extract(metadata, '$.doc_id'), docid)"
        self.columns = columns

    def get_many(self, docids: list[str], with_pos: bool = False) -> dict[str, dict]:
        """``docid -> {"title", "text", "metadata"}`` (and ``"pos"`` with ``with_pos``) for the ids found."""
        out: dict[str, dict] = {}
        for start in range(0, len(docids), 900):  # SQLite's bound-parameter limit
            chunk = docids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self._con.execute(
                f"SELECT docid, title, text, metadata, pos FROM docs WHERE docid IN ({marks})", chunk).fetchall()
            for docid, title, text, meta, pos in rows:
                out[docid] = {"title": title or "", "text": text or "", "metadata": json.loads(meta) if meta else {}}
                if with_pos:
                    out[docid]["pos"] = pos
        return out

    def positions_of_documents(self, doc_ids: list[str]) -> dict[str, list[int]]:
        """``doc_id -> positions`` of every passage of those source documents that are in this store."""
        out: dict[str, list[int]] = {}
        for start in range(0, len(doc_ids), 900):
            chunk = doc_ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for doc_id, pos in self._con.execute(
                    f"SELECT {self.doc_id_expr}, pos FROM docs WHERE {self.doc_id_expr} IN ({marks})", chunk):
                out.setdefault(doc_id, []).append(pos)
        return out

    def document_ids(self) -> set[str]:
        return {row[0] for row in self._con.execute(f"SELECT DISTINCT {self.doc_id_expr} FROM docs")}

    def positions_where(self, where: str, params: list) -> "np.ndarray":
        """Positions of the rows matching an SQL condition (built by ``index/filters.py``), sorted."""
        import numpy as np

        cur = self._con.execute(f"SELECT pos FROM docs WHERE {where} ORDER BY pos", params)
        return np.fromiter((row[0] for row in cur), dtype=np.int64)

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
