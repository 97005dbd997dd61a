"""Run representation shared by every searcher: ``{qid: [(docid, score), ...]}``, best first."""

from __future__ import annotations

from pathlib import Path

Run = dict[str, list[tuple[str, float]]]


def write_trec_run(run: Run, path: str | Path, tag: str) -> None:
    """Write a TREC run file (``qid Q0 docid rank score tag``), via a temporary name."""
    from ..index.atomic import write_text_atomic

    lines = [f"{qid} Q0 {docid} {rank} {score:.6f} {tag}"
             for qid, hits in run.items() for rank, (docid, score) in enumerate(hits, start=1)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_trec_run(path: str | Path) -> Run:
    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            qid, _, docid, _, score, *_ = line.split()
            run.setdefault(qid, []).append((docid, float(score)))
    return run


def remove_query_ids(run: Run) -> Run:
    """Drop a hit whose id equals its query's id (Pyserini's ``--remove-query`` for BEIR)."""
    return {qid: [(d, s) for d, s in hits if d != qid] for qid, hits in run.items()}
