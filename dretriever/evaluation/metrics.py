"""Scoring runs with Pyserini's trec_eval (``-c -q``), and the metric names reports use."""

from __future__ import annotations

import re
from pathlib import Path

from .. import pyserini_env
from ..data.beir import load_qrels
from ..errors import DretrieverError
from ..atomic import write_text_atomic

# trec_eval's -m arguments, and the names it prints for them.
METRICS = {"ndcg_cut.10": "ndcg_cut_10", "recall.100": "recall_100", "recall.1000": "recall_1000"}


def measures(names: list[str]) -> dict[str, str]:
    """``{-m argument: printed name}`` for printed names (``ndcg_cut_10``) or -m arguments (``ndcg_cut.10``)."""
    out = {}
    for name in names:
        match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_]*?)[._](\d+)", name)
        if not match and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise DretrieverError(f"metric: expected a trec_eval measure such as ndcg_cut_10, got {name!r}")
        out[f"{match[1]}.{match[2]}" if match else name] = f"{match[1]}_{match[2]}" if match else name
    return out


def write_trec_qrels(qrels: dict[str, dict[str, int]], path: str | Path) -> None:
    lines = [f"{qid} 0 {docid} {rel}" for qid, docs in qrels.items() for docid, rel in docs.items()]
    write_text_atomic(path, "\n".join(lines) + "\n")


def score_run_per_query(qrels_path: str | Path, run_path: str | Path, metrics: dict[str, str] = METRICS
                        ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One trec_eval ``-c -q`` call: ``(means, {name: {qid: score}})`` over every judged query (a query absent
    from the run scores 0, as ``-c`` counts it). The means are trec_eval's ``all`` lines; the per-query scores'
    mean must agree with them (to trec_eval's four printed decimals), or this raises."""
    printed = pyserini_env.trec_eval(str(qrels_path), str(run_path), list(metrics), per_query=True)
    missing = [name for name in metrics.values() if "all" not in printed.get(name, {})]
    if missing:
        raise RuntimeError(f"trec_eval did not report {missing} for {run_path}")
    judged = list(load_qrels(qrels_path))
    means, per_query = {}, {}
    for name in metrics.values():
        scores = printed[name]
        means[name] = scores.pop("all")
        per_query[name] = {q: scores.get(q, 0.0) for q in judged}
        mean = sum(per_query[name].values()) / len(judged)
        if abs(mean - means[name]) > 1.01e-4 or set(scores) - set(judged):
            raise RuntimeError(f"trec_eval's per-query {name} for {run_path} (mean {mean:.6f} over {len(judged)} "
                               f"judged queries) disagrees with its mean {means[name]:.4f}")
    return means, per_query


def score_run(qrels_path: str | Path, run_path: str | Path, metrics: dict[str, str] = METRICS) -> dict[str, float]:
    return score_run_per_query(qrels_path, run_path, metrics)[0]
