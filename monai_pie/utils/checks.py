"""Input checks that raise errors naming the offending parameter."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_finite", "check_in_range", "check_mask", "check_positive_int"]


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values."""
    if not torch.is_tensor(x):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"`{name}` contains non-finite values ({n_nan} NaN, {n_inf} inf); clean the input first.")


def check_in_range(value: float, name: str, low: float = 0.0, high: float = 1.0) -> None:
    """Raise ``ValueError`` unless ``low <= value <= high``."""
    if not (low <= float(value) <= high):
        raise ValueError(f"`{name}` must be in [{low}, {high}], got {value}.")


def check_positive_int(value: int, name: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def check_mask(mask: torch.Tensor, spatial_shape: Sequence[int], batch_size: int, name: str = "roi_mask") -> torch.Tensor:
    """Validate a soft mask for an image with ``spatial_shape`` and return it as ``(B or 1, 1, *spatial)``.

    Accepted shapes: ``spatial``, ``(1, *spatial)``, ``(B|1, 1, *spatial)``. Values must lie in [0, 1].
    """
    if not torch.is_tensor(mask):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(mask).__name__}.")
    spatial_shape = tuple(int(s) for s in spatial_shape)
    nd = len(spatial_shape)
    m = mask.as_tensor() if hasattr(mask, "as_tensor") else mask  # a plain tensor: batched meta data would not slice
    if m.ndim == nd:
        m = m[None, None]
    elif m.ndim == nd + 1:
        m = m[None]
    if m.ndim != nd + 2 or tuple(m.shape[2:]) != spatial_shape or m.shape[1] != 1:
        raise ValueError(
            f"`{name}` of shape {tuple(mask.shape)} does not match the image's spatial shape {spatial_shape}; "
            f"expected {spatial_shape}, (1, *spatial) or (B, 1, *spatial)."
        )
    if m.shape[0] not in (1, batch_size):
        raise ValueError(f"`{name}` has batch size {m.shape[0]} but the image batch is {batch_size}.")
    m = m.float()
    check_finite(m, name)
    lo, hi = float(m.min()), float(m.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"`{name}` values must lie in [0, 1] (soft mask, 1 = may change); got range [{lo:g}, {hi:g}].")
    return m
