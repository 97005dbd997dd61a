"""evaluation/significance.py: paired randomization p-values, bootstrap intervals, W/T/L and Holm's correction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dretriever.errors import DretrieverError
from dretriever.evaluation.significance import compare, compare_all, holm

# Per-query differences in sixteenths: sums and means are exact in binary floating point.
EIGHT = np.array([5, 3, 4, -1, 6, 2, 7, -2]) / 16


def eight_queries():
    baseline = {f"q{i}": 0.25 for i in range(8)}
    return baseline, {q: 0.25 + d for q, d in zip(baseline, EIGHT)}


def test_randomization_p_value_equals_the_enumeration_of_all_sign_flips():
    observed = abs(EIGHT.mean())
    flips = list(itertools.product([1, -1], repeat=8))
    extreme = sum(abs(np.mean(np.array(signs) * EIGHT)) >= observed for signs in flips)
    assert (len(flips), extreme) == (256, 14)  # the identity, its mirror and 12 others
    c = compare(*eight_queries(), metric="ndcg_cut_10", baseline_name="a", system_name="b")
    assert c.p_value == extreme / 256 == 0.0546875  # exact: 10000 resamples >= 2^8, so scipy enumerates
    assert (c.difference, c.baseline_mean, c.system_mean) == (0.1875, 0.25, 0.4375)
    assert (c.wins, c.ties, c.losses, c.queries) == (6, 0, 2, 8)
    assert (c.metric, c.baseline, c.system, c.resamples, c.seed) == ("ndcg_cut_10", "a", "b", 10000, 0)
    assert c.interval[0] <= c.difference <= c.interval[1]
    # the same seed gives the same interval
    assert compare(*eight_queries()).interval == c.interval


def test_monte_carlo_p_counts_the_observed_assignment():
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.01, 0.1, 20)  # 2^20 assignments > 999 resamples: drawn, not enumerated
    c = compare({i: 0.0 for i in range(20)}, dict(enumerate(diffs)), resamples=999, seed=5)
    # two-sided: twice the smaller tail, each tail (hits + 1) / (999 + 1) with the observed assignment counted
    hits = c.p_value * 1000 / 2
    assert hits == pytest.approx(round(hits)) and 1 <= round(hits) <= 500
    assert compare({i: 0.0 for i in range(20)}, dict(enumerate(diffs)), resamples=999, seed=5) == c


def test_a_run_against_itself_gives_p_1_and_the_interval_0_0():
    scores = {f"q{i}": v for i, v in enumerate([0.1, 0.5, 0.0, 1.0, 0.6309, 0.25] * 50)}
    c = compare(scores, dict(scores))
    assert (c.p_value, c.interval, c.difference) == (1.0, (0.0, 0.0), 0.0)
    assert (c.wins, c.ties, c.losses) == (0, 300, 0)


def test_a_query_missing_from_one_side_scores_zero():
    c = compare({"a": 0.5, "b": 0.5}, {"a": 0.7})
    assert c.queries == 2 and c.difference == pytest.approx((0.2 - 0.5) / 2)
    assert (c.wins, c.ties, c.losses) == (1, 0, 1)
    with pytest.raises(DretrieverError, match="no queries to compare"):
        compare({}, {})


def synthetic(seed: int, n: int = 300, shift: float = 0.05):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, n)
    return dict(enumerate(base)), dict(enumerate(base + shift + rng.normal(0, 0.1, n)))


def test_bootstrap_interval_covers_the_known_difference():
    c = compare(*synthetic(seed=0))
    low, high = c.interval
    assert low < 0.05 < high and low < c.difference < high
    # about the normal interval of a mean: 1.96 standard errors either side (sd 0.1, 300 queries)
    assert high - low == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(300), rel=0.15)
    # no drawn sign assignment reaches the observed mean: each tail counts only the observed one, (0 + 1) / 10001
    assert c.p_value == pytest.approx(2 / 10001)
    # and over 100 seeded synthetic cases it covers the truth about 95 times in 100
    covered = sum(lo < 0.05 < hi for lo, hi in (compare(*synthetic(s, n=100), resamples=1000).interval
                                                 for s in range(1, 101)))
    assert 88 <= covered <= 100


def test_holm_by_hand():
    # sorted: 0.005 * 4 = 0.02; 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> raised to 0.06 (step-down)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2]


def test_compare_all_tests_each_system_against_the_baseline_with_holm():
    base, better = eight_queries()
    scores = {"base": {"m": base}, "better": {"m": better}, "same": {"m": dict(base)}}
    found = compare_all(scores, "base", ["m"])
    assert [(c.baseline, c.system) for c in found] == [("base", "better"), ("base", "same")]
    assert [c.p_value for c in found] == [0.0546875, 1.0]
    assert [c.p_holm for c in found] == [0.109375, 1.0]  # 2 x 0.0546875; then max(0.109375, 1 x 1.0)
    with pytest.raises(DretrieverError, match="baseline: 'nope' is not one of"):
        compare_all(scores, "nope", ["m"])
    with pytest.raises(DretrieverError, match="metric: 'x' is missing"):
        compare_all(scores, "base", ["x"])
