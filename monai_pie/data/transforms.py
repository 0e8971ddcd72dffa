"""Dictionary transforms that reject bad images early, with errors that name the file and the problem."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CheckImaged"]


def _source(data: Mapping[Hashable, Any], key: Hashable) -> str:
    img = data[key]
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", key))


class CheckImaged(MapTransform):
    """Check channel-first images: spatial dimensionality, channel count, finite values, non-constant content.

    Args:
        keys: keys of the images to check.
        spatial_dims: required number of spatial dimensions (3 for volumes); ``None`` skips the check.
        channels: required channel count; ``None`` skips the check.
        allow_constant: accept images whose values are all equal (usually a corrupt or empty file).
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int | None = 3, channels: int | None = 1,
                 allow_constant: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims, self.channels, self.allow_constant = spatial_dims, channels, allow_constant

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img, src = d[key], _source(d, key)
            shape = tuple(img.shape)
            if self.spatial_dims is not None and len(shape) - 1 != self.spatial_dims:
                raise ValueError(
                    f"{src}: expected a channel-first {self.spatial_dims}D image, got shape {shape} "
                    f"({len(shape) - 1} spatial dims). A 2D slice or a 4D series cannot be used here."
                )
            if self.channels is not None and shape[0] != self.channels:
                raise ValueError(f"{src}: expected {self.channels} channel(s), got {shape[0]} (shape {shape}).")
            t = torch.as_tensor(img)
            if not torch.isfinite(t).all():
                raise ValueError(f"{src}: image contains NaN or infinite values.")
            if not self.allow_constant and t.numel() > 0 and bool((t == t.flatten()[0]).all()):
                raise ValueError(f"{src}: image is constant (all values {float(t.flatten()[0])}); is the file empty?")
        return d
