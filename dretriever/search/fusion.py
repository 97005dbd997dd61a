"""Fusing a dense and a sparse run: reciprocal-rank fusion and normalised score interpolation."""

from __future__ import annotations

from .types import Run


def rrf(runs: list[Run], k: int = 1000, rrf_k: float = 60.0) -> Run:
    """Reciprocal-rank fusion (Cormack et al., 2009): score(d) = sum over runs of 1 / (rrf_k + rank)."""
    fused: Run = {}
    for qid in set().union(*runs):
        scores: dict[str, float] = {}
        for run in runs:
            for rank, (docid, _) in enumerate(run.get(qid, []), start=1):
                scores[docid] = scores.get(docid, 0.0) + 1.0 / (rrf_k + rank)
        fused[qid] = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:k]
    return fused


def interpolate(dense: Run, sparse: Run, alpha: float = 0.5, k: int = 1000) -> Run:
    """``alpha * dense + (1 - alpha) * sparse`` after min-max normalising each run per query.

    A document missing from one run gets that run's minimum (0 after normalisation).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    fused: Run = {}
    for qid in set(dense) | set(sparse):
        d, s = _minmax(dense.get(qid, [])), _minmax(sparse.get(qid, []))
        docs = set(d) | set(s)
        scores = {doc: alpha * d.get(doc, 0.0) + (1 - alpha) * s.get(doc, 0.0) for doc in docs}
        fused[qid] = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:k]
    return fused


def _minmax(hits: list[tuple[str, float]]) -> dict[str, float]:
    if not hits:
        return {}
    lo, hi = min(s for _, s in hits), max(s for _, s in hits)
    span = hi - lo
    return {d: (s - lo) / span if span > 0 else 1.0 for d, s in hits}


def fuse(dense: Run, sparse: Run, method: str = "rrf", alpha: float = 0.5, k: int = 1000) -> Run:
    if method == "rrf":
        return rrf([dense, sparse], k=k)
    if method == "interpolation":
        return interpolate(dense, sparse, alpha=alpha, k=k)
    raise ValueError(f"fusion: expected 'rrf' or 'interpolation', got {method!r}")
