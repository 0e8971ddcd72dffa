"""The sampler core and the task inferers; every task inferer is a thin layer over ``DiffusionSampler``."""

from __future__ import annotations

from .anomaly import ANOMALY_MAPS, AnomalyInferer, AnomalyResult, anomaly_map, regional_means
from .generation import GenerationInferer, condition_batch_size
from .progression import MAX_ROUNDS, ProgressionInferer, ProgressionResult, resize_mask
from .sampler import DiffusionSampler, make_generator, randn_like
from .updates import ddim_update, ddpm_update, euler_update, posterior_variance

__all__ = [
    "ANOMALY_MAPS",
    "MAX_ROUNDS",
    "AnomalyInferer",
    "AnomalyResult",
    "DiffusionSampler",
    "GenerationInferer",
    "ProgressionInferer",
    "ProgressionResult",
    "condition_batch_size",
    "anomaly_map",
    "ddim_update",
    "ddpm_update",
    "euler_update",
    "make_generator",
    "posterior_variance",
    "randn_like",
    "regional_means",
    "resize_mask",
]
