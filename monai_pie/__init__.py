"""monai-pie: a MONAI plugin for generative medical imaging.

Importing the package imports its submodules, so MONAI's bundle ``ComponentLocator`` (which scans every
imported module whose name starts with ``monai``) can resolve short names such as
``"_target_": "ProgressionInferer"`` in bundle configs.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import conditioning, data, engines, inferers, metrics, networks, utils  # noqa: F401  (registration)
from .conditioning import DiffusionCondition
from .inferers import AnomalyInferer, DiffusionSampler, GenerationInferer, ProgressionInferer, ProgressionResult
from .networks import LatentDiffusionModel
from .utils.errors import install_bundle_excepthook

install_bundle_excepthook()  # under `python -m monai.bundle`: the real error is the last line, not MONAI's wrapper

__all__ = [
    "__version__",
    "AnomalyInferer",
    "DiffusionCondition",
    "DiffusionSampler",
    "GenerationInferer",
    "LatentDiffusionModel",
    "ProgressionInferer",
    "ProgressionResult",
]
