"""Samplers and task inferers; every task inferer is a thin layer over ``DiffusionSampler``."""

from __future__ import annotations

from .progression import ProgressionInferer, ProgressionResult, resize_mask
from .sampler import DiffusionSampler, make_generator, randn_like
from .schedule import NoiseSchedule
from .updates import ddim_update, ddpm_update, euler_update, posterior_variance

__all__ = [
    "DiffusionSampler",
    "NoiseSchedule",
    "ProgressionInferer",
    "ProgressionResult",
    "ddim_update",
    "ddpm_update",
    "euler_update",
    "make_generator",
    "posterior_variance",
    "randn_like",
    "resize_mask",
]
