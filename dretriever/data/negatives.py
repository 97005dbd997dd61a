"""Static hard negatives: one JSON object per line, ``{"qid", "positives", "negatives", "scores"}``.

``negatives`` are document ids ranked best first by the mining model, with the query's judged positives
(and a document whose id equals the query id) already removed; ``scores`` are their similarity scores.
The first line is a header ``{"_meta": {...}}`` recording the index, model and depth they came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ..atomic import write_text_atomic
from .ids import check_id
from .jsonl import read_jsonl


def write_negatives(path: str | Path, rows: list[dict], meta: dict) -> None:
    lines = [json.dumps({"_meta": meta})] + [json.dumps(r) for r in rows]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_negatives(path: str | Path) -> tuple[dict[str, list[str]], dict]:
    """``({qid: [negative docids, best first]}, meta)``; malformed lines fail with ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "negatives file not found (run `dretriever mine`)")
    out: dict[str, list[str]] = {}
    meta: dict = {}
    for number, obj in read_jsonl(path):
        if "_meta" in obj:
            meta = obj["_meta"]
            if not isinstance(meta, dict):
                raise DataError(path, f"'_meta' must be an object, got {type(meta).__name__}", number)
            continue
        if not isinstance(obj.get("qid"), str) or not isinstance(obj.get("negatives"), list):
            raise DataError(path, "expected {'qid': str, 'negatives': [docid, ...]}", number)
        qid = check_id(obj["qid"], path, number, "'qid'")
        out[qid] = [check_id(d, path, number, f"negative of query {qid!r}") for d in obj["negatives"]]
    if not out:
        raise DataError(path, "no negatives")
    return out, meta
