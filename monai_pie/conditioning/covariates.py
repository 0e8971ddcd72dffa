"""Scalar covariates (age, sex, diagnosis, stage, volumes) -> cross-attention context, with a learned null token."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .condition import DiffusionCondition

__all__ = ["CovariateConditioner"]


class CovariateConditioner(nn.Module):
    """Map ``K`` scalar covariates to a ``(B, 1, embed_dim)`` context for a cross-attention U-Net.

    Each covariate is min-max normalised with the given range (so users pass raw values: age in years, sex 0/1,
    diagnosis as an index, stage in [0, 1]) and the vector goes through a small MLP. A learned null token stands for
    "no condition": training replaces a random fraction of contexts with it (``drop``), and classifier-free guidance
    uses it as the unconditional branch (``null_condition``).

    Args:
        names: covariate names, in order, e.g. ``("age", "sex", "stage")``.
        ranges: ``{name: (low, high)}`` used for normalisation; missing names use ``(0, 1)``.
        embed_dim: context width (the U-Net's ``cross_attention_dim``).
        hidden_dim: MLP width.

    Input: a ``(B, K)`` tensor in ``names`` order, or a mapping ``{name: (B,) values}`` (lists or numbers work too).
    """

    def __init__(
        self,
        names: Sequence[str],
        ranges: Mapping[str, Sequence[float]] | None = None,
        embed_dim: int = 32,
        hidden_dim: int = 64,
    ) -> None:
        super().__init__()
        if not names:
            raise ValueError("`names` must list at least one covariate.")
        self.names = tuple(names)
        ranges = dict(ranges or {})
        unknown = set(ranges) - set(self.names)
        if unknown:
            raise ValueError(f"`ranges` names covariates not in `names`: {sorted(unknown)}.")
        lo = torch.tensor([float(ranges.get(n, (0.0, 1.0))[0]) for n in self.names])
        hi = torch.tensor([float(ranges.get(n, (0.0, 1.0))[1]) for n in self.names])
        if torch.any(hi <= lo):
            raise ValueError(f"every range must have high > low, got {dict(zip(self.names, zip(lo.tolist(), hi.tolist())))}.")
        self.register_buffer("low", lo)
        self.register_buffer("high", hi)
        self.embed_dim = int(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(len(self.names), hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, embed_dim))
        self.null_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def as_tensor(self, covariates: Any) -> torch.Tensor:
        """Covariates as a ``(B, K)`` float tensor in ``names`` order, validated."""
        device = self.low.device
        if isinstance(covariates, Mapping):
            missing = [n for n in self.names if n not in covariates]
            if missing:
                raise ValueError(f"covariates missing {missing}; this model is conditioned on {list(self.names)}.")
            cols = [torch.as_tensor(covariates[n], dtype=torch.float32, device=device).reshape(-1) for n in self.names]
            size = max(c.numel() for c in cols)
            cols = [c.expand(size) if c.numel() == 1 else c for c in cols]
            if len({c.numel() for c in cols}) != 1:
                raise ValueError(f"covariates have different batch sizes: {[c.numel() for c in cols]}.")
            x = torch.stack(cols, dim=1)
        else:
            x = torch.as_tensor(covariates, dtype=torch.float32, device=device)
            if x.ndim == 1:  # one covariate: (B,) values; several: one sample's (K,) values
                x = x[:, None] if len(self.names) == 1 else x[None]
            if x.ndim != 2 or x.shape[1] != len(self.names):
                raise ValueError(f"covariates must have shape (B, {len(self.names)}) for {list(self.names)}, got {tuple(x.shape)}.")
        if not torch.isfinite(x).all():
            raise ValueError("covariates contain NaN or infinite values.")
        self._warn_outside_range(x)
        return x

    def _warn_outside_range(self, x: torch.Tensor) -> None:
        """Warn (not fail) when a covariate lies outside the range the model was trained on: it still runs, but the
        result is extrapolation."""
        outside = (x < self.low) | (x > self.high)
        for k in torch.nonzero(outside.any(0)).flatten().tolist():
            bad = x[outside[:, k], k]
            warnings.warn(f"covariate {self.names[k]!r} = {float(bad[0]):g} lies outside the range the model was "
                          f"trained on [{float(self.low[k]):g}, {float(self.high[k]):g}]; results there are "
                          "extrapolation.", stacklevel=3)

    def embed(self, covariates: Any) -> torch.Tensor:
        """Covariates -> context ``(B, 1, embed_dim)``."""
        x = self.as_tensor(covariates)
        x = (x - self.low) / (self.high - self.low)
        return self.mlp(x)[:, None, :]

    def forward(self, covariates: Any) -> DiffusionCondition:
        return DiffusionCondition(context=self.embed(covariates))

    def null_condition(self, condition: DiffusionCondition) -> DiffusionCondition:
        """The unconditional branch: the learned null token for every batch element."""
        batch = condition.batch_size() or 1
        return DiffusionCondition(context=self.null_token.expand(batch, 1, self.embed_dim),
                                  class_labels=condition.class_labels, concat=condition.concat)

    def drop(self, context: torch.Tensor, drop_mask: torch.Tensor) -> torch.Tensor:
        """Replace rows of ``context`` ``(B, 1, D)`` where ``drop_mask`` ``(B,)`` is true by the null token."""
        keep = (~drop_mask.bool()).to(context.dtype).reshape(-1, 1, 1)
        return keep * context + (1.0 - keep) * self.null_token.to(context.dtype)
