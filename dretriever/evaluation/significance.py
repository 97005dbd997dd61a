"""Is a difference real? Paired tests over the per-query scores of a baseline and a system.

Given each query's score under both (trec_eval ``-q``; a query missing from one side scores 0, as trec_eval
``-c`` counts it), :func:`compare` reports, for the per-query differences ``d = system - baseline``:

- the mean paired difference;
- a percentile bootstrap confidence interval of it (``scipy.stats.bootstrap`` resampling the queries'
  differences with replacement, so each query keeps its pair; seeded);
- a two-sided paired randomization test (Fisher's sign-flip test: under the null hypothesis each difference is
  as likely to be negative as positive; ``scipy.stats.permutation_test`` with ``permutation_type="samples"`` on
  the differences, seeded). It enumerates all 2^n sign assignments when ``resamples >= 2^n``, else draws
  ``resamples`` of them, each tail counting the observed one ((hits + 1) / (resamples + 1)); the two-sided p is
  twice the smaller tail (at most 1), so its least value is 2 / (resamples + 1);
- wins, ties and losses over queries.

:func:`holm` adjusts the p-values of several systems compared against one baseline (Holm 1979, step-down).
References: Smucker, Allan & Carterette, "A comparison of statistical significance tests for information
retrieval evaluation" (CIKM 2007); Sakai, "Statistical reform in information retrieval?" (SIGIR Forum 2014).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DretrieverError

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05  # the level at which a direction is claimed (regressions) or a difference called significant


@dataclass
class Comparison:
    """One system against the baseline on one metric; ``p_holm`` is set by :func:`compare_all`."""

    metric: str
    baseline: str
    system: str
    queries: int
    baseline_mean: float
    system_mean: float
    difference: float
    interval: tuple[float, float]
    p_value: float
    wins: int
    ties: int
    losses: int
    resamples: int
    seed: int
    p_holm: float | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "interval": list(self.interval)}


def describe(resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE) -> str:
    """The sentence a report prints under its table: which test, how many resamples, which seed."""
    return (f"Δ = system - baseline, mean over queries (a query missing from a run scores 0). p: two-sided paired "
            f"randomization test (Fisher sign flips of the per-query differences, scipy.stats.permutation_test, "
            f"{resamples} resamples or all 2^n when fewer, seed {seed}). {confidence:.0%} CI: percentile bootstrap "
            f"of the mean difference (scipy.stats.bootstrap, queries resampled in pairs, {resamples} resamples, "
            f"seed {seed}). p (Holm): adjusted for the systems compared with the same baseline. W/T/L: queries "
            f"where the system scores above / equal to / below the baseline.")


def paired(baseline: dict[str, float], system: dict[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The union of both sides' query ids (sorted) and the two score arrays over it (a missing query: 0)."""
    qids = sorted(set(baseline) | set(system))
    return (qids, np.array([baseline.get(q, 0.0) for q in qids], dtype=np.float64),
            np.array([system.get(q, 0.0) for q in qids], dtype=np.float64))


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def compare(baseline: dict[str, float], system: dict[str, float], metric: str = "", baseline_name: str = "baseline",
            system_name: str = "system", resamples: int = RESAMPLES, seed: int = SEED,
            confidence: float = CONFIDENCE) -> Comparison:
    """Paired difference, bootstrap interval, randomization p-value and W/T/L of ``system`` over ``baseline``
    (``{qid: score}`` each)."""
    from scipy import stats

    if resamples < 1:
        raise DretrieverError(f"resamples: must be positive, got {resamples}")
    qids, a, b = paired(baseline, system)
    if not qids:
        raise DretrieverError(f"{metric or 'scores'}: no queries to compare ({baseline_name} vs {system_name})")
    d = b - a
    d[np.abs(d) < 1e-12] = 0.0  # float noise is a tie
    if np.all(d == d[0]):  # no spread: every resample gives the same mean
        low = high = float(d[0])
    else:
        boot = stats.bootstrap((d,), _mean, vectorized=True, n_resamples=resamples, confidence_level=confidence,
                               method="percentile", rng=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    test = stats.permutation_test((d,), _mean, permutation_type="samples", vectorized=True, n_resamples=resamples,
                                  alternative="two-sided", rng=np.random.default_rng(seed))
    return Comparison(metric=metric, baseline=baseline_name, system=system_name, queries=len(qids),
                      baseline_mean=float(a.mean()), system_mean=float(b.mean()), difference=float(d.mean()),
                      interval=(low, high), p_value=float(min(1.0, test.pvalue)), wins=int((d > 0).sum()),
                      ties=int((d == 0).sum()), losses=int((d < 0).sum()), resamples=resamples, seed=seed)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes max over j <= i of
    min(1, (m - j + 1) p_(j)); returned in the input's order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return out.tolist()


def compare_all(scores: dict[str, dict[str, dict[str, float]]], baseline: str, metrics: list[str],
                resamples: int = RESAMPLES, seed: int = SEED) -> list[Comparison]:
    """Every other system against ``baseline`` on each metric; ``scores[system][metric] = {qid: score}``.
    Holm's correction runs over the systems compared on the same metric."""
    if baseline not in scores:
        raise DretrieverError(f"baseline: {baseline!r} is not one of {list(scores)}")
    out = []
    for metric in metrics:
        found = [s for s in scores if metric in scores[s]]
        if metric not in scores[baseline] or len(found) != len(scores):
            raise DretrieverError(f"metric: {metric!r} is missing from the per-query scores of "
                                  f"{[s for s in scores if s not in found]}")
        group = [compare(scores[baseline][metric], scores[s][metric], metric, baseline, s, resamples, seed)
                 for s in scores if s != baseline]
        for c, adjusted in zip(group, holm([c.p_value for c in group])):
            c.p_holm = adjusted
        out += group
    return out
