"""Turning covariates, class labels and text into a diffusion model's conditions."""

from __future__ import annotations

from .condition import DiffusionCondition
from .covariates import CovariateConditioner
from .scan import ScanCovariateConditioner
from .structure import StructureLabelConditioner
from .text import FindingsTextEncoder, PretrainedTextEncoder

__all__ = [
    "CovariateConditioner",
    "DiffusionCondition",
    "FindingsTextEncoder",
    "PretrainedTextEncoder",
    "ScanCovariateConditioner",
    "StructureLabelConditioner",
]
