"""Small statistics for validation reports: bootstrap intervals, R^2 of change maps, correlations."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["corr", "median_ci", "r_squared", "spearman"]


def median_ci(values: Sequence[float], num_resamples: int = 2000, level: float = 0.95,
              seed: int = 0) -> tuple[float, float, float]:
    """Median of ``values`` and its percentile-bootstrap interval (NaNs dropped).

    Args:
        values: One value per subject.
        num_resamples: Bootstrap resamples (seeded, so reports are reproducible).
        level: Interval coverage.
        seed: Seed of the resampling.

    Returns:
        tuple: ``(median, low, high)``; all NaN when there is no finite value.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    boot = np.median(v[rng.integers(0, v.size, size=(num_resamples, v.size))], axis=1)
    tail = (1.0 - level) / 2 * 100
    return float(np.median(v)), float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))


def r_squared(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """``1 - SS(prediction - truth) / SS(truth - mean(truth))`` inside ``mask``: the share of the true change map's
    variance an edit explains (0 = no better than a constant, negative = worse than predicting no change pattern)."""
    p, t = prediction[mask].astype(np.float64), truth[mask].astype(np.float64)
    ss = float(((t - t.mean()) ** 2).sum())
    return float("nan") if ss == 0 else 1.0 - float(((p - t) ** 2).sum()) / ss


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (NaN when either is constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float("nan") if den == 0 else float((a * b).sum() / den)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties; NaN when either side is constant)."""
    from scipy.stats import rankdata

    return corr(rankdata(x), rankdata(y))
