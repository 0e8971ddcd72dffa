"""Dictionary transforms that reject bad images early, with errors that name the file and the problem."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CheckImaged", "LoadImage2Dd", "image_2d_transforms"]


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


class LoadImage2Dd(MapTransform):
    """Load 2D radiographs (PNG/JPEG/DICOM/NIfTI) with :func:`monai_pie.data.load_2d_image` as ``(1, H, W)``
    float32 :class:`~monai.data.MetaTensor` in [0, 1]; colour images become grayscale (BT.601 luminance).

    Args:
        keys: keys holding image file paths.
        min_size: smallest accepted side in pixels (a thumbnail or a 1-row file is an error).
    """

    def __init__(self, keys: KeysCollection, min_size: int = 16, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_size = int(min_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        from .cxr_readers import load_2d_image

        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            arr = load_2d_image(path)
            if min(arr.shape) < self.min_size:
                raise ValueError(f"{path}: image is {arr.shape[0]}x{arr.shape[1]} pixels; at least "
                                 f"{self.min_size} pixels per side are needed.")
            d[key] = MetaTensor(torch.from_numpy(arr[None].copy()), meta={"filename_or_obj": path,
                                                                        "original_shape": tuple(arr.shape)})
        return d


def image_2d_transforms(image_size: Sequence[int], keys: KeysCollection = "image") -> list:
    """Transforms for 2D model input: load as ``(1, H, W)`` in [0, 1], resize to ``image_size`` (area
    interpolation), then check dimensionality, channel count and finite, non-constant values."""
    from monai.transforms import EnsureTyped, Resized

    if len(image_size) != 2:
        raise ValueError(f"`image_size` must be (H, W) for 2D images, got {list(image_size)}.")
    return [
        LoadImage2Dd(keys),
        Resized(keys, spatial_size=tuple(int(s) for s in image_size), mode="area"),
        CheckImaged(keys, spatial_dims=2, channels=1),
        EnsureTyped(keys, dtype=torch.float32, track_meta=False),
    ]
