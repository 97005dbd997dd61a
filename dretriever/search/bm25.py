"""BM25 search through Pyserini's Lucene (BEIR "flat": title and text in one ``contents`` field).

The Lucene index itself is built in ``index/bm25.py``.
"""

from __future__ import annotations

from pathlib import Path

from .. import pyserini_env
from .types import Run


class BM25Searcher:
    """Pyserini's LuceneSearcher with BM25 (k1=0.9, b=0.4 as in Pyserini's BEIR regressions)."""

    def __init__(self, index_dir: str | Path, k1: float = 0.9, b: float = 0.4, threads: int = 2):
        lucene = Path(index_dir) / "lucene"
        self.searcher = pyserini_env.lucene_searcher(str(lucene if lucene.is_dir() else index_dir))
        self.searcher.set_bm25(k1, b)
        self.threads = threads

    def search(self, queries: dict[str, str], k: int = 1000) -> Run:
        qids = list(queries)
        results = self.searcher.batch_search([queries[q] for q in qids], qids, k=k, threads=self.threads)
        return {qid: [(h.docid, float(h.score)) for h in results.get(qid, [])] for qid in qids}
