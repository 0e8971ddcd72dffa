"""Generation metrics: MS-SSIM diversity, memorisation distances, rank correlation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric

__all__ = ["ms_ssim_diversity", "nearest_neighbour_distances", "spearman_rho"]


def ms_ssim_diversity(samples: torch.Tensor, data_range: float = 1.0, kernel_size: int = 7,
                      weights: Sequence[float] = (0.3, 0.4, 0.3)) -> float:
    """Mean MS-SSIM over all pairs of ``samples`` ``(N, C, *spatial)``; lower means more diverse.

    Three scales by default, so 3D volumes of ~64 voxels per side qualify (MS-SSIM needs
    ``(kernel_size - 1) * 2**(scales - 1)`` voxels per side).
    """
    n = samples.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a diversity score, got {n}.")
    metric = MultiScaleSSIMMetric(spatial_dims=samples.ndim - 2, data_range=data_range, kernel_size=kernel_size,
                                  weights=tuple(weights))
    scores = []
    for i in range(n):
        for j in range(i + 1, n):
            scores.append(float(metric(samples[i : i + 1], samples[j : j + 1]).mean()))
    return float(np.mean(scores))


def nearest_neighbour_distances(queries: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False) -> np.ndarray:
    """Mean absolute distance from each query ``(N, ...)`` to its nearest reference ``(M, ...)``.

    With ``exclude_self`` (queries are the reference), each item's distance to itself is ignored: the
    training-to-training baseline of a memorisation audit.
    """
    q = queries.reshape(queries.shape[0], -1).float()
    r = reference.reshape(reference.shape[0], -1).float()
    d = torch.cdist(q, r, p=1) / q.shape[1]
    if exclude_self:
        if q.shape[0] != r.shape[0]:
            raise ValueError("`exclude_self` needs queries and reference to be the same set.")
        d.fill_diagonal_(float("inf"))
    return d.min(dim=1).values.numpy()


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two sequences (NaN if either is constant)."""
    from scipy.stats import spearmanr

    if len(set(np.round(np.asarray(y, dtype=float), 12))) < 2 or len(set(np.asarray(x, dtype=float))) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)
