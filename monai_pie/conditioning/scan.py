"""Covariates plus the subject's own scan as a diffusion model's condition (longitudinal progression).

BrLP (Puglisi et al., MICCAI 2024) conditions the follow-up scan's diffusion on the baseline scan through a ControlNet;
here the baseline's latent is concatenated to ``x_t`` (one network, no second copy of the encoder). The covariates
(e.g. target age and stage, and the source's) go to cross-attention and are dropped to a null token in training, so
classifier-free guidance acts on the covariates; the scan is kept in the null condition: it carries the subject's
anatomy, not the guided change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .condition import DiffusionCondition
from .covariates import CovariateConditioner

__all__ = ["ScanCovariateConditioner"]


class ScanCovariateConditioner(CovariateConditioner):
    """``{covariate: (B,), scan_key: (B, C_lat, *latent_spatial)}`` -> covariate context + concatenated scan latent.

    The scan is the *latent* of the subject's own image (``LatentDiffusionModel.encode``); the training batch
    preparation (``LatentDiffusionPrepareBatch(scan_image_key=...)``) and ``ProgressionInferer`` put it under
    ``scan_key`` themselves, so callers pass covariates only.

    Args:
        names, ranges, embed_dim, hidden_dim: as in :class:`CovariateConditioner` (e.g. ``("age", "sex", "stage",
            "source_age", "source_stage")``).
        scan_key: the raw condition's key of the scan latent.
        scan_channels: channels of the scan latent (the autoencoder's latent channels); checked when given.
    """

    def __init__(self, names: Sequence[str], ranges: Mapping[str, Sequence[float]] | None = None, embed_dim: int = 32,
                 hidden_dim: int = 64, scan_key: str = "scan", scan_channels: int | None = None) -> None:
        if scan_key in names:
            raise ValueError(f"`scan_key` {scan_key!r} must not be one of the covariate `names` {list(names)}.")
        super().__init__(names, ranges, embed_dim, hidden_dim)
        self.scan_key = scan_key
        self.scan_channels = None if scan_channels is None else int(scan_channels)

    def forward(self, condition: Any) -> DiffusionCondition:  # type: ignore[override]
        if not isinstance(condition, Mapping) or self.scan_key not in condition:
            got = sorted(condition) if isinstance(condition, Mapping) else type(condition).__name__
            raise ValueError(f"this model is conditioned on the subject's own scan: the condition must be a dict with "
                             f"the covariates {list(self.names)} and the scan latent {self.scan_key!r} "
                             f"(B, C_lat, *latent_spatial); got {got}.")
        scan = condition[self.scan_key]
        scan = scan.as_tensor() if hasattr(scan, "as_tensor") else torch.as_tensor(scan)
        if scan.ndim not in (4, 5):
            raise ValueError(f"`{self.scan_key}` must be a latent (B, C_lat, H, W[, D]), got {tuple(scan.shape)}.")
        if self.scan_channels is not None and scan.shape[1] != self.scan_channels:
            raise ValueError(f"`{self.scan_key}` has {scan.shape[1]} channels, but the model takes a scan latent of "
                             f"{self.scan_channels}.")
        if not torch.isfinite(scan).all():
            raise ValueError(f"`{self.scan_key}` contains NaN or infinite values.")
        context = self.embed({k: v for k, v in condition.items() if k != self.scan_key})
        if scan.shape[0] not in (1, context.shape[0]) and context.shape[0] != 1:
            raise ValueError(f"`{self.scan_key}` has batch {scan.shape[0]} but the covariates have {context.shape[0]}.")
        return DiffusionCondition(context=context, concat=scan.to(device=context.device, dtype=torch.float32))
