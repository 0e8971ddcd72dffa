"""Validation statistics: bootstrap medians, R^2 of change maps, correlations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_pie.validation.stats import (
    corr,
    format_ci,
    median_ci,
    r_squared,
    retrieval_correlations,
    retrieval_hits,
    spearman,
)


def test_median_ci_brackets_the_median_and_drops_nans():
    med, lo, hi = median_ci([*range(1, 21), 1000.0, float("nan")])
    assert med == 11.0 and lo < med < hi < 1000.0  # an outlier does not move the median's interval
    assert median_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in median_ci([float("nan")]))
    assert median_ci([1.0, 5.0, 9.0], seed=1) == median_ci([1.0, 5.0, 9.0], seed=1)  # reproducible


def test_r_squared_scores_against_the_truth_map():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((8, 8, 8)) + 1.0
    mask = np.ones(truth.shape, dtype=bool)
    assert r_squared(truth, truth, mask) == pytest.approx(1.0)
    assert r_squared(np.full_like(truth, truth.mean()), truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert r_squared(np.zeros_like(truth), truth, mask) < 0  # "no change" is worse than the mean when truth moves
    assert math.isnan(r_squared(truth, np.ones_like(truth), mask))


def test_correlations():
    x = np.arange(10.0)
    assert corr(x, 2 * x + 1) == pytest.approx(1.0) and corr(x, -x) == pytest.approx(-1.0)
    assert math.isnan(corr(x, np.ones(10)))
    assert spearman([0.3, 0.5, 0.7, 0.9], [1.0, 2.0, 2.5, 10.0]) == pytest.approx(1.0)
    assert spearman([0.3, 0.5, 0.7, 0.9], [1.0, 3.0, 2.0, 4.0]) < 1.0


def test_retrieval_finds_the_own_truth_only_when_the_subject_specific_part_survives():
    rng = np.random.default_rng(0)
    common = rng.standard_normal((6, 6))
    truths = {k: common + 0.3 * rng.standard_normal((6, 6)) for k in "abcd"}
    own = {k: t + 0.05 * rng.standard_normal((6, 6)) for k, t in truths.items()}
    assert retrieval_hits(own, truths) == {k: 1.0 for k in "abcd"}
    # the common pattern alone (the subject's own part lost) picks whichever truth happens to be nearest
    assert sum(retrieval_hits({k: common for k in "abcd"}, truths).values()) == 1.0
    swapped = {"a": truths["b"], "b": truths["a"]}
    assert retrieval_hits(swapped, truths) == {"a": 0.0, "b": 0.0}
    mask = np.zeros((6, 6), bool)
    mask[:3] = True  # only the masked part counts: a map that matches there is retrieved
    half = {"a": np.where(mask, truths["a"], truths["c"])}
    assert retrieval_hits(half, truths, mask) == {"a": 1.0}
    with pytest.raises(KeyError, match="'z' has no truth"):
        retrieval_hits({"z": common}, truths)
    assert retrieval_hits({"a": truths["a"]}, {"a": truths["a"]}) == {"a": 1.0}  # the only candidate
    assert math.isnan(retrieval_correlations({"a": truths["a"]}, {"a": truths["a"]})["a"][1])
    assert retrieval_hits({"a": np.zeros((6, 6))}, truths) == {"a": 0.0}  # a constant map retrieves nothing
    # the two correlations retrieval decides between: own truth first, nearest other second
    own, other = retrieval_correlations({"a": truths["a"]}, truths)["a"]
    assert own == pytest.approx(1.0) and other == max(corr(truths["a"], truths[k]) for k in "bcd") < 1.0


def test_format_ci_prints_the_median_and_interval_or_na():
    assert format_ci((0.5, 0.25, 0.75)) == "0.50 [0.25, 0.75]"
    assert format_ci((0.1234, 0.1, 0.2), nd=3) == "0.123 [0.100, 0.200]"
    assert format_ci((float("nan"),) * 3) == "n/a"
