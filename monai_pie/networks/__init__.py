"""Networks MONAI core lacks, and the one-module wrappers that bundles load."""

from __future__ import annotations

from .introspection import ConvSpec, first_conv_spec
from .latent_diffusion import LatentDiffusionModel, as_diffusion_model

__all__ = ["ConvSpec", "LatentDiffusionModel", "as_diffusion_model", "first_conv_spec"]
