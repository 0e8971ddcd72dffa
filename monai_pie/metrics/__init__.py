"""Measurements for validations and reports: generation diversity and memorisation, rank correlation, brain markers
from T1 images, CXR measurements from masks and the networks that read them from images."""

from __future__ import annotations

from .brain_markers import BrainMarkers, tissue_class_means, tissue_fractions
from .cxr_measures import measure_ctr, measure_effusion_fraction
from .cxr_readers import CXRMaskNet, FindingClassifier, embedding_cosine, fid_from_features, measure_from_masks, prompt_adherence
from .generation import ms_ssim_diversity, nearest_neighbour_distances, spearman_rho

__all__ = [
    "BrainMarkers",
    "CXRMaskNet",
    "FindingClassifier",
    "embedding_cosine",
    "fid_from_features",
    "measure_ctr",
    "measure_effusion_fraction",
    "measure_from_masks",
    "prompt_adherence",
    "ms_ssim_diversity",
    "nearest_neighbour_distances",
    "spearman_rho",
    "tissue_class_means",
    "tissue_fractions",
]
