"""Run representation shared by every searcher: ``{qid: [(docid, score), ...]}``, best first."""

from __future__ import annotations

from pathlib import Path

Run = dict[str, list[tuple[str, float]]]


def write_trec_run(run: Run, path: str | Path, tag: str) -> None:
    """Write a TREC run file (``qid Q0 docid rank score tag``), via a temporary name."""
    from ..atomic import write_text_atomic

    lines = [f"{qid} Q0 {docid} {rank} {score:.6f} {tag}"
             for qid, hits in run.items() for rank, (docid, score) in enumerate(hits, start=1)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_trec_run(path: str | Path) -> Run:
    """A TREC run file (``qid Q0 docid rank score tag``); a malformed line raises DataError with ``file:line``."""
    import math

    from ..data.lines import read_lines
    from ..errors import DataError

    run: Run = {}
    for number, line in read_lines(path, missing="run file not found"):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DataError(path, f"expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}", number)
        try:
            score = float(parts[4])
        except ValueError:
            raise DataError(path, f"score must be a number, got {parts[4][:50]!r}", number) from None
        if not math.isfinite(score):
            raise DataError(path, f"score must be finite, got {parts[4]!r}", number)
        run.setdefault(parts[0], []).append((parts[2], score))
    return run


def remove_query_ids(run: Run) -> Run:
    """Drop a hit whose id equals its query's id (Pyserini's ``--remove-query`` for BEIR)."""
    return {qid: [(d, s) for d, s in hits if d != qid] for qid, hits in run.items()}
