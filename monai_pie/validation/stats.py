"""Small statistics for validation reports: bootstrap intervals, R^2 of change maps, correlations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["corr", "format_ci", "median_ci", "r_squared", "retrieval_correlations", "retrieval_hit", "retrieval_hits",
           "seed_cv", "spearman", "subject_medians"]


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


def retrieval_correlations(maps: Mapping[Any, np.ndarray], truths: Mapping[Any, np.ndarray],
                           mask: np.ndarray | None = None) -> dict[Any, tuple[float, float]]:
    """Per key of ``maps``: its map's correlation with the truth of the same key, and the highest with any other
    key's truth (inside ``mask``): what retrieval compares, so a report can show by how much it misses.

    Args:
        maps: Change maps of the edits (any shape, one per subject key).
        truths: The candidates: true change maps of the same shape, by subject key (the keys of ``maps`` among them).
        mask: Boolean mask of the same shape the correlations are taken over; None: everywhere.

    Returns:
        dict: ``{key: (own, nearest other)}``; a correlation with a constant map is NaN and is no competitor, and
        ``nearest other`` is NaN when no other truth competes.

    Raises:
        KeyError: A key of ``maps`` has no truth among the candidates.
    """
    pick = (lambda a: a[mask]) if mask is not None else np.ravel
    out = {}
    for k, m in maps.items():
        if k not in truths:
            raise KeyError(f"retrieval: {k!r} has no truth among the candidates {sorted(map(str, truths))}.")
        others = [c for c in (corr(pick(m), pick(t)) for j, t in truths.items() if j != k) if np.isfinite(c)]
        out[k] = (corr(pick(m), pick(truths[k])), max(others) if others else float("nan"))
    return out


def retrieval_hit(own: float, other: float) -> float:
    """Whether a map is retrieved (1.0 or 0.0).

    Args:
        own: Its correlation with its own truth (NaN for a constant map: never retrieved).
        other: Its highest correlation with any other truth (NaN: no other truth competes).
    """
    return float(own > other) if np.isfinite(other) else float(bool(np.isfinite(own)))


def retrieval_hits(maps: Mapping[Any, np.ndarray], truths: Mapping[Any, np.ndarray],
                   mask: np.ndarray | None = None) -> dict[Any, float]:
    """Per key of ``maps``: 1.0 when its map correlates best with the truth of the same key among all ``truths``
    (inside ``mask``), else 0.0 (arguments as :func:`retrieval_correlations`)."""
    return {k: retrieval_hit(own, other) for k, (own, other) in retrieval_correlations(maps, truths, mask).items()}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties; NaN when either side is constant)."""
    from scipy.stats import rankdata

    return corr(rankdata(x), rankdata(y))


def format_ci(stat: tuple[float, float, float], nd: int = 2) -> str:
    """``median [low, high]`` of a :func:`median_ci` result with ``nd`` decimals (the value alone without an
    interval), or ``n/a``."""
    med, lo, hi = stat
    if not np.isfinite(med):
        return "n/a"
    return f"{med:.{nd}f}" + (f" [{lo:.{nd}f}, {hi:.{nd}f}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def subject_medians(per: Mapping[Any, Sequence[Mapping[str, Any]]], index_keys: Sequence[str]) -> tuple[
        dict[Any, dict[str, float]], dict[str, tuple[float, float, float]]]:
    """Per-subject means over seeds of every measure (the keys of a subject's rows except ``index_keys``), then each
    measure's median over subjects with its bootstrap interval (:func:`median_ci`).

    Returns:
        tuple: ``({subject: {measure: mean}}, {measure: (median, low, high)})``.
    """
    subjects = {i: {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k not in index_keys}
                for i, rows in per.items()}
    keys = next(iter(subjects.values())).keys()
    return subjects, {k: median_ci([v[k] for v in subjects.values()]) for k in keys}


def seed_cv(per: Mapping[Any, Sequence[Mapping[str, Any]]], key: str) -> float:
    """Median over subjects (with more than one seed) of the seed SD of ``key`` over the absolute seed mean; NaN
    when no subject has two seeds."""
    cvs = [np.std([r[key] for r in rows]) / max(abs(np.mean([r[key] for r in rows])), 1e-12)
           for rows in per.values() if len(rows) > 1]
    return float(np.median(cvs)) if cvs else float("nan")
