"""The Lucene (BM25) index of a corpus, built through Pyserini (BEIR "flat": title and text in one
``contents`` field). Searching it is ``search/bm25.py``.

Nothing is dropped silently. Anserini reads its input with Jackson, which refuses a JSON string over
20,000,000 UTF-16 characters; the refused line ends the reading of its file, so that document *and the
ones around it* were left out while the build still succeeded. Hence:

- a document's ``contents`` longer than :data:`MAX_CHARS` characters is indexed up to that many, with a
  warning naming it (BM25 then scores its first :data:`MAX_CHARS` characters);
- after every build the index's document count is checked against the rows given (and against the count
  the caller expects, ``stamp["num_docs"]``); a mismatch is a :class:`DretrieverError` naming the first
  missing document, with ``file:line`` when the corpus came from a file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from .. import pyserini_env
from ..atomic import write_json_atomic
from ..data.beir import Document, corpus_line
from ..errors import DretrieverError

log = logging.getLogger(__name__)

DONE = "dretriever-bm25.json"
# Characters of a document's contents that Lucene indexes: 10x below Jackson's 20,000,000 limit even when
# every character is outside the BMP (two UTF-16 units each), and far beyond any real passage.
MAX_CHARS = 1_000_000


def build_bm25_index(corpus: Mapping[str, Document] | Iterable[tuple[str, Document]], out: str | Path,
                     threads: int = 2, stamp: dict | None = None) -> Path:
    """Index ``corpus`` with Lucene into ``out`` (skipped when a finished index for the same ids is there).

    ``corpus`` may be a stream of ``(docid, Document)`` pairs; ``stamp`` then describes it and its
    ``num_docs`` is the number of rows expected. A corpus read by ``data.beir.load_corpus`` knows its file,
    which locates a missing document as ``file:line``.
    """
    out = Path(out)
    stamp = {**({"num_docs": len(corpus)} if stamp is None else stamp), "fields": "contents = title + ' ' + text",
             "max_chars": MAX_CHARS}
    if (out / DONE).is_file() and json.loads((out / DONE).read_text()) == stamp:
        return out
    source = getattr(corpus, "path", None)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "input").mkdir(parents=True)
    try:
        rows = _write_input(corpus, tmp / "input" / "docs.jsonl", source)
        if stamp.get("num_docs", rows) != rows:
            raise DretrieverError(f"BM25 index {out}: {rows} rows were given, {stamp['num_docs']} expected")
        pyserini_env.build_lucene_index(tmp / "input", tmp / "lucene", threads=threads)
        check_count(tmp / "lucene", tmp / "input" / "docs.jsonl", rows, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp / "input")
    write_json_atomic(tmp / DONE, stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _write_input(corpus, path: Path, source: str | None) -> int:
    """Write the ``{"id", "contents"}`` lines Anserini reads (contents cut at :data:`MAX_CHARS`); returns the rows."""
    rows = 0
    with open(path, "w", encoding="utf-8") as f:
        for docid, doc in (corpus.items() if isinstance(corpus, Mapping) else corpus):
            contents = doc.contents
            if len(contents) > MAX_CHARS:
                log.warning("%s: BM25 indexes the first %d of its %d characters (index/bm25.py MAX_CHARS)",
                            _where(docid, source), MAX_CHARS, len(contents))
                contents = contents[:MAX_CHARS]
            f.write(json.dumps({"id": docid, "contents": contents}, ensure_ascii=False) + "\n")
            rows += 1
    return rows


def check_count(lucene: Path, docs_file: Path, rows: int, source: str | None = None) -> None:
    """Raise unless the Lucene index at ``lucene`` holds the ``rows`` documents of ``docs_file`` (the
    ``{"id", "contents"}`` lines it was built from); the error names the first document missing."""
    searcher = pyserini_env.lucene_searcher(str(lucene))
    try:
        indexed = searcher.num_docs
        if indexed == rows:
            return
        missing = None
        with open(docs_file, encoding="utf-8") as f:
            for line in f:
                docid = json.loads(line)["id"]
                if searcher.doc(docid) is None:
                    missing = docid
                    break
    finally:
        searcher.close()
    first = f"; the first missing is {_where(missing, source)}" if missing is not None else ""
    raise DretrieverError(f"Lucene indexed {indexed} of {rows} documents and reported no error{first}")


def _where(docid: str, source: str | None) -> str:
    """``file:line: document 'id'`` when the corpus came from a file, else ``document 'id'``."""
    line = corpus_line(source, docid) if source else None
    return f"{source}:{line}: document {docid!r}" if line else f"document {docid!r}"
