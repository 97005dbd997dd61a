"""The Lucene (BM25) index of a corpus, built through Pyserini (BEIR "flat": title and text in one
``contents`` field). Searching it is ``search/bm25.py``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from .. import pyserini_env
from ..data.beir import Document
from .atomic import write_json_atomic

DONE = "dretriever-bm25.json"


def build_bm25_index(corpus: Mapping[str, Document] | Iterable[tuple[str, Document]], out: str | Path,
                     threads: int = 2, stamp: dict | None = None) -> Path:
    """Index ``corpus`` with Lucene into ``out`` (skipped when a finished index for the same ids is there).

    ``corpus`` may be a stream of ``(docid, Document)`` pairs; ``stamp`` then describes it.
    """
    out = Path(out)
    stamp = {**({"num_docs": len(corpus)} if stamp is None else stamp), "fields": "contents = title + ' ' + text"}
    if (out / DONE).is_file() and json.loads((out / DONE).read_text()) == stamp:
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "input").mkdir(parents=True)
    with open(tmp / "input" / "docs.jsonl", "w", encoding="utf-8") as f:
        for docid, doc in (corpus.items() if isinstance(corpus, Mapping) else corpus):
            f.write(json.dumps({"id": docid, "contents": doc.contents}, ensure_ascii=False) + "\n")
    pyserini_env.build_lucene_index(tmp / "input", tmp / "lucene", threads=threads)
    shutil.rmtree(tmp / "input")
    write_json_atomic(tmp / DONE, stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out

