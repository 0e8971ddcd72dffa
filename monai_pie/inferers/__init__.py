"""The sampler core and the task inferers; every task inferer is a thin layer over ``DiffusionSampler``."""

from __future__ import annotations

from .generation import GenerationInferer, condition_batch_size
from .progression import MAX_ROUNDS, ProgressionInferer, ProgressionResult, resize_mask
from .sampler import DiffusionSampler, make_generator, randn_like
from .updates import ddim_update, ddpm_update, euler_update, posterior_variance

__all__ = [
    "MAX_ROUNDS",
    "DiffusionSampler",
    "GenerationInferer",
    "ProgressionInferer",
    "ProgressionResult",
    "condition_batch_size",
    "ddim_update",
    "ddpm_update",
    "euler_update",
    "make_generator",
    "posterior_variance",
    "randn_like",
    "resize_mask",
]
