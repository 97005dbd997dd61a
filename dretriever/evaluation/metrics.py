"""Scoring runs with Pyserini's trec_eval (``-c``), and the metric names reports use."""

from __future__ import annotations

from pathlib import Path

from .. import pyserini_env
from ..index.atomic import write_text_atomic

# trec_eval's -m arguments, and the names it prints for them.
METRICS = {"ndcg_cut.10": "ndcg_cut_10", "recall.100": "recall_100", "recall.1000": "recall_1000"}


def write_trec_qrels(qrels: dict[str, dict[str, int]], path: str | Path) -> None:
    lines = [f"{qid} 0 {docid} {rel}" for qid, docs in qrels.items() for docid, rel in docs.items()]
    write_text_atomic(path, "\n".join(lines) + "\n")


def score_run(qrels_path: str | Path, run_path: str | Path, metrics: dict[str, str] = METRICS) -> dict[str, float]:
    scores = pyserini_env.trec_eval(str(qrels_path), str(run_path), list(metrics))
    missing = [name for name in metrics.values() if name not in scores]
    if missing:
        raise RuntimeError(f"trec_eval did not report {missing} for {run_path}")
    return {name: scores[name] for name in metrics.values()}
