"""Strict reader for datasets in the BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).
``corpus.jsonl.gz`` and ``queries.jsonl.gz`` are read where the plain files are absent (same errors, same lines).

Fatal, with ``file:line``: malformed JSON, a missing ``_id``, a duplicate id, an empty corpus, a
malformed qrels row, and a split whose qrels name none of the queries. Counted and warned: documents
with empty text, and qrels rows naming unknown query or document ids (they are dropped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .ids import check_id
from .jsonl import read_jsonl, required_id
from .lines import or_gzip, read_lines

log = logging.getLogger(__name__)

# The URL pattern of the BEIR datasets, used only when a dataset is absent and the network allows.
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


@dataclass
class Document:
    title: str
    text: str
    metadata: dict = field(default_factory=dict)

    @property
    def contents(self) -> str:
        """The single field BEIR's "flat" setting searches, and what dense models encode."""
        return f"{self.title} {self.text}".strip() if self.title else self.text.strip()


class Corpus(dict):
    """``{doc id: Document}`` in file order, knowing the file it was read from (``path``), so that a later
    stage can name a document's line (:func:`corpus_line`)."""

    path: str | None = None


def corpus_line(path: str | Path, doc_id: str) -> int | None:
    """The line of ``path`` (a corpus JSONL file) holding document ``doc_id``; None if none does."""
    for line, obj in read_jsonl(path):
        if obj.get("_id") is not None and str(obj["_id"]) == doc_id:
            return line
    return None


@dataclass
class BeirDataset:
    name: str
    path: Path
    corpus: dict[str, Document]
    queries: dict[str, str]  # only the queries judged in the split
    qrels: dict[str, dict[str, int]]
    split: str


def load_corpus(path: str | Path) -> Corpus:
    path = or_gzip(path)
    corpus = Corpus()
    corpus.path = str(path)
    first_line: dict[str, int] = {}
    empty = 0
    for line, obj in read_jsonl(path):
        doc_id = required_id(obj, path, line)
        if doc_id in corpus:
            raise DataError(path, f"duplicate document id {doc_id!r} (first on line {first_line[doc_id]})", line)
        title, text = obj.get("title") or "", obj.get("text") or ""
        if not isinstance(title, str) or not isinstance(text, str):
            raise DataError(path, "'title' and 'text' must be strings", line)
        if not text.strip():
            empty += 1
        meta = {k: v for k, v in obj.items() if k not in ("_id", "title", "text")}
        corpus[doc_id] = Document(title, text, meta)
        first_line[doc_id] = line
    if not corpus:
        raise DataError(path, "the corpus is empty")
    if empty:
        log.warning("%s: %d document(s) with empty text (kept; they are indexed by title alone)", path, empty)
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    path = or_gzip(path)
    queries: dict[str, str] = {}
    for line, obj in read_jsonl(path):
        qid = required_id(obj, path, line)
        if qid in queries:
            raise DataError(path, f"duplicate query id {qid!r}", line)
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, f"query {qid!r} has no text", line)
        queries[qid] = text
    if not queries:
        raise DataError(path, "no queries")
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (header ``query-id corpus-id score``) or a TREC qrels file."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for number, raw in read_lines(path, missing="qrels file not found"):
        parts = raw.split()
        if not parts:
            continue
        if number == 1 and parts[0] == "query-id":
            continue
        if len(parts) == 4:  # TREC: qid iter docid rel
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise DataError(path, f"expected 3 columns (query-id corpus-id score), got {len(parts)}", number)
        if not parts[2].isascii():  # int() would read other scripts' digits ("\u0663" is 3)
            raise DataError(path, f"relevance must be an integer, got {parts[2][:50]!r}", number)
        try:
            score = int(parts[2])
        except ValueError:
            raise DataError(path, f"relevance must be an integer, got {parts[2][:50]!r}", number) from None
        qid, docid = (check_id(v, path, number, what) for v, what in zip(parts, ("query id", "document id")))
        qrels.setdefault(qid, {})[docid] = score
    return qrels


def load_beir(path: str | Path, split: str = "test", corpus: dict[str, Document] | None = None) -> BeirDataset:
    """Load a BEIR dataset folder, validating the qrels of ``split`` against corpus and queries."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, "dataset folder not found (set BEIR_DATA or pass --data)")
    corpus = corpus if corpus is not None else load_corpus(path / "corpus.jsonl")
    queries_path = or_gzip(path / "queries.jsonl")
    all_queries = load_queries(queries_path)
    qrels_path = path / "qrels" / f"{split}.tsv"
    raw = load_qrels(qrels_path)
    qrels: dict[str, dict[str, int]] = {}
    unknown_q = unknown_d = 0
    for qid, docs in raw.items():
        if qid not in all_queries:
            unknown_q += len(docs)
            continue
        kept = {d: r for d, r in docs.items() if d in corpus}
        unknown_d += len(docs) - len(kept)
        if kept:
            qrels[qid] = kept
    if unknown_q or unknown_d:
        log.warning("%s: dropped %d judgment(s) naming unknown queries and %d naming unknown documents",
                    qrels_path, unknown_q, unknown_d)
    if not qrels:
        raise DataError(qrels_path, f"no judgments for any query in {queries_path}")
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(path.name, path, corpus, queries, qrels, split)


def ensure_dataset(root: str | Path, name: str) -> Path:
    """``root/name`` if present; else download it with BEIR's own helper (needs network)."""
    target = Path(root) / name
    if target.is_dir():
        return target
    from beir import util

    try:
        util.download_and_unzip(BEIR_URL.format(name=name), str(root))
    except Exception as e:  # network errors come in many types; report them as one
        raise DataError(target, f"dataset not found and download failed ({e.__class__.__name__}: {e})") from e
    return target
