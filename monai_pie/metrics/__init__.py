"""Metrics: generation diversity and memorisation, rank correlation, brain markers from T1 images."""

from __future__ import annotations

from .brain_markers import BrainMarkers, tissue_class_means, tissue_fractions
from .generation import ms_ssim_diversity, nearest_neighbour_distances, spearman_rho

__all__ = [
    "BrainMarkers",
    "ms_ssim_diversity",
    "nearest_neighbour_distances",
    "spearman_rho",
    "tissue_class_means",
    "tissue_fractions",
]
