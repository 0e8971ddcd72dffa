"""Dictionary transforms of the inference and training pipelines: loading with clear errors, checks that reject bad
images and masks early (naming the file and the problem), intensity scaling that remembers its range, and default
regions of interest.

Shapes: channel-first, ``(C, H, W[, D])``, as MONAI's dictionary transforms expect.
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = [
    "CXR_ROI_REGIONS",
    "CheckFieldOfViewd",
    "CheckImaged",
    "CheckMaskd",
    "ForegroundRoid",
    "ItemDefaultsd",
    "LoadImage2Dd",
    "LoadVolumed",
    "MaskOnModelGridd",
    "PETStructured",
    "RegionRoid",
    "ScaleIntensityFixedd",
    "ScaleIntensityPercentilesd",
    "foreground_roi",
    "image_2d_transforms",
    "model_grid_affine",
    "pet_structure",
    "region_roi",
    "volume_transforms",
]

#: meta keys under which :class:`ScaleIntensityPercentilesd` records the intensity range it mapped to [0, 1]
SCALE_LOW, SCALE_HIGH = "scale_low", "scale_high"

#: default ROIs of a PA chest film as super-ellipses ``(centre row, centre col, radius rows, radius cols, exponent)`` in
#: fractions of the image (exponent 2: an ellipse; 4: a rounded rectangle that keeps the costophrenic angles), placed
#: from the phantom masks of held-out subjects: ``thorax`` the lung fields, ``heart`` the heart up to severe
#: cardiomegaly, ``lower_lungs`` where pleural fluid collects.
CXR_ROI_REGIONS: dict[str, tuple[float, float, float, float, float]] = {
    "thorax": (0.43, 0.50, 0.37, 0.42, 4.0),
    "heart": (0.56, 0.60, 0.22, 0.30, 2.0),
    "lower_lungs": (0.56, 0.50, 0.23, 0.42, 4.0),
}


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

        from .io import load_2d_image

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


def volume_transforms(pixdim: Sequence[float], image_size: Sequence[int], keys: KeysCollection = "image",
                      track_meta: bool = False, intensity_range: Sequence[float] | None = None) -> list:
    """Volumes to the model grid for training: load, check (3D, one channel, finite, not constant), RAS,
    ``pixdim`` spacing, intensities to [0, 1], padded / cropped to ``image_size``.

    Intensities are scaled by each image's 0-99.5 percentiles (MRI, whose units are arbitrary), or, with
    ``intensity_range = (low, high)``, by that fixed range, clipped (quantitative images such as PET SUVR, whose
    values mean something across subjects). The inference configs spell the same steps out (plus ROI handling), so
    that a reader sees them in the JSON.
    """
    from monai.transforms import EnsureTyped, Orientationd, ResizeWithPadOrCropd, Spacingd

    scale: Any = ScaleIntensityPercentilesd(keys) if intensity_range is None else \
        ScaleIntensityFixedd(keys, *intensity_range)
    return [
        LoadVolumed(keys),
        CheckImaged(keys, spatial_dims=3, channels=1),
        Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim=pixdim, mode="bilinear"),
        scale,
        ResizeWithPadOrCropd(keys, spatial_size=image_size),
        EnsureTyped(keys, dtype=torch.float32, track_meta=track_meta),
    ]


class LoadVolumed(MapTransform):
    """Load images (NIfTI, NRRD, MHA, DICOM folders) as channel-first ``MetaTensor`` with
    :func:`monai_pie.data.read_volume`: a missing, empty, truncated or non-image file, or a degenerate affine, gets
    one message naming the file and the cause.

    Args:
        keys: keys holding file paths.
        what: how messages name each key's file (default: ``"image"``, ``"ROI mask"`` for ``roi``).
    """

    def __init__(self, keys: KeysCollection, what: Mapping[str, str] | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.what = {"roi": "ROI mask", **dict(what or {})}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from .io import read_volume

        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = read_volume(d[key], self.what.get(str(key), "image"))
        return d


class ScaleIntensityPercentilesd(MapTransform):
    """Map intensities ``[p_lower, p_upper]`` (percentiles of the image) to [0, 1], clipped, and record the range in
    the image's meta data (``scale_low``, ``scale_high``) so results can be mapped back to the input's units.

    Args:
        keys: keys of ``MetaTensor`` images ``(C, *spatial)``.
        lower, upper: the percentiles that map to 0 and 1.
    """

    def __init__(self, keys: KeysCollection, lower: float = 0.0, upper: float = 99.5,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}.")
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            values = np.asarray(img.detach().cpu() if torch.is_tensor(img) else img)
            lo, hi = float(np.percentile(values, self.lower)), float(np.percentile(values, self.upper))
            if hi <= lo:
                raise ValueError(f"{_source(d, key)}: no intensity range after resampling (constant image?).")
            out = ((img - lo) / (hi - lo)).clamp(0, 1)
            if hasattr(out, "meta"):
                out.meta[SCALE_LOW], out.meta[SCALE_HIGH] = lo, hi
            d[key] = out
        return d


class ScaleIntensityFixedd(MapTransform):
    """Map intensities ``[low, high]`` to [0, 1], clipped, and record the range in the image's meta data like
    :class:`ScaleIntensityPercentilesd`, so results map back to the input's units (quantitative images: PET SUVR).

    Args:
        keys: keys of ``MetaTensor`` images.
        low, high: the values that map to 0 and 1.
    """

    def __init__(self, keys: KeysCollection, low: float, high: float, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not float(high) > float(low):
            raise ValueError(f"the intensity range must be (low, high) with high > low, got ({low}, {high}).")
        self.low, self.high = float(low), float(high)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            out = ((d[key] - self.low) / (self.high - self.low)).clamp(0, 1)
            if hasattr(out, "meta"):
                out.meta[SCALE_LOW], out.meta[SCALE_HIGH] = self.low, self.high
            d[key] = out
        return d


def pet_structure(image: np.ndarray | torch.Tensor, cap_quantile: float = 0.7, sigma_vox: float = 2.0,
                  foreground: float = 0.1) -> torch.Tensor:
    """A subject's structure image from its own PET (MRI-free): intensities capped at the ``cap_quantile`` of the
    foreground, so focal uptake (tau, off-target binding) is flattened to the tissue level, smoothed and scaled to
    [0, 1]. Shape, tissue contrast and head size stay; the disease signal mostly does not.

    Args:
        image: ``(C, *spatial)`` or ``(*spatial)`` PET (channels are averaged).
        cap_quantile: quantile of the foreground values where intensities are capped.
        sigma_vox: Gaussian smoothing in voxels.
        foreground: share of the 99.5th percentile above which a voxel is foreground.

    Returns:
        ``(1, *spatial)`` float32 in [0, 1].
    """
    from scipy.ndimage import gaussian_filter

    x = np.asarray(image.detach().cpu() if torch.is_tensor(image) else image, dtype=np.float32)
    x = x.mean(0) if x.ndim == 4 or (x.ndim == 3 and x.shape[0] == 1) else x
    if not np.isfinite(x).all():
        raise ValueError("the PET image contains non-finite values; clean it first.")
    top = float(np.percentile(x, 99.5))
    fg = x > foreground * top
    if top <= 0 or not fg.any():
        raise ValueError("the PET image has no foreground (all values <= 0 or constant).")
    cap = float(np.quantile(x[fg], cap_quantile))
    out = gaussian_filter(np.clip(x, 0.0, cap) / cap, sigma_vox)
    return torch.from_numpy(np.clip(out, 0.0, 1.0).astype(np.float32))[None]


class PETStructured(MapTransform):
    """Add ``output_key``: :func:`pet_structure` of the image (the TauAD individual condition), ``(1, *spatial)``.

    Args:
        keys: the PET image key (``(C, *spatial)``, after resampling to the model grid).
        output_key: where the structure image goes.
        cap_quantile, sigma_vox: see :func:`pet_structure`.
    """

    def __init__(self, keys: KeysCollection = "image", output_key: str = "structure", cap_quantile: float = 0.7,
                 sigma_vox: float = 2.0) -> None:
        super().__init__(keys)
        if not 0.0 < cap_quantile <= 1.0:
            raise ValueError(f"`cap_quantile` must be in (0, 1], got {cap_quantile}.")
        self.output_key, self.cap_quantile, self.sigma_vox = output_key, float(cap_quantile), float(sigma_vox)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = pet_structure(d[key], self.cap_quantile, self.sigma_vox)
        return d


class ItemDefaultsd(MapTransform):
    """Fill datalist fields an item does not set (``None`` counts as unset) from ``defaults``, so every item of a
    batch carries the same keys (per-item ``age``, ``prompt``, ``seed`` override the bundle's settings), and check
    them, naming the field and the image.

    Args:
        defaults: ``{field: value}``; a ``None`` default leaves the field out of items that do not set it (optional
            fields such as the source stage of a counterfactual edit).
        numeric: fields that must be finite numbers (converted to float).
        ranges: ``{field: (low, high)}``: numbers that must lie in the range (converted to float).
        choices: ``{field: allowed values}`` (e.g. ``{"sex": [0, 1]}``).
        fallbacks: ``{field: other field}``: a field still unset after ``defaults`` takes the item's own value of the
            other field (e.g. ``{"target_age": "age"}``: an edit keeps the input's age unless asked otherwise).
    """

    def __init__(self, defaults: Mapping[str, Any], numeric: Sequence[str] = (),
                 ranges: Mapping[str, Sequence[float]] | None = None,
                 choices: Mapping[str, Sequence[Any]] | None = None,
                 fallbacks: Mapping[str, str] | None = None) -> None:
        fields = list(dict.fromkeys([*defaults, *numeric, *(ranges or {}), *(choices or {}), *(fallbacks or {})]))
        super().__init__(fields, allow_missing_keys=True)
        self.defaults, self.numeric = dict(defaults), tuple(numeric)
        self.ranges, self.choices = dict(ranges or {}), {k: list(v) for k, v in (choices or {}).items()}
        self.fallbacks = dict(fallbacks or {})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, value in self.defaults.items():
            if d.get(key) is None:
                if value is None:
                    d.pop(key, None)
                else:
                    d[key] = value
        for key, other in self.fallbacks.items():
            if d.get(key) is None and d.get(other) is not None:
                d[key] = d[other]
        where = f" (item {d['image']})" if "image" in d else ""
        for key in (*self.numeric, *self.ranges):
            try:
                value = float(d[key]) if not isinstance(d.get(key), bool) else math.nan
            except (TypeError, ValueError, KeyError):
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"`{key}` must be a finite number, got {d.get(key)!r}{where}.")
            if key in self.ranges and not self.ranges[key][0] <= value <= self.ranges[key][1]:
                raise ValueError(f"`{key}` must be in [{self.ranges[key][0]}, {self.ranges[key][1]}], got "
                                 f"{d[key]!r}{where}.")
            d[key] = value
        for key, allowed in self.choices.items():
            if isinstance(d.get(key), bool) or d.get(key) not in allowed:
                raise ValueError(f"`{key}` must be one of {allowed}, got {d.get(key)!r}{where}.")
        return d


class CheckFieldOfViewd(MapTransform):
    """Warn when an image covers much less space than the model sees (``image_size * pixdim``): an 8-voxel cube is
    not a head, and the result would be mostly padding. Extents are compared sorted, so the axis order of the file
    does not matter.

    Args:
        keys: channel-first ``MetaTensor`` images with their affine.
        pixdim, image_size: the model grid.
        min_fraction: warn below this fraction of the model's extent along any axis.
    """

    def __init__(self, keys: KeysCollection, pixdim: Sequence[float], image_size: Sequence[int],
                 min_fraction: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.model_extent = sorted(float(p) * int(n) for p, n in zip(pixdim, image_size))
        self.min_fraction = float(min_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            nd = img.ndim - 1
            affine = np.asarray(getattr(img, "affine", np.eye(nd + 1)), dtype=np.float64)
            spacing = np.linalg.norm(affine[:nd, :nd], axis=0)
            extent = sorted(float(s) * int(n) for s, n in zip(spacing, img.shape[1:]))
            if any(e < self.min_fraction * m for e, m in zip(extent, self.model_extent)):
                shown = " x ".join(f"{e:.0f}" for e in extent)
                model = " x ".join(f"{m:.0f}" for m in self.model_extent)
                warnings.warn(f"{_source(d, key)} covers only {shown} mm, but the model sees {model} mm (image_size "
                              "x pixdim): is it the whole object the model was trained on? The result will be "
                              "mostly padding.", stacklevel=2)
        return d


class CheckMaskd(MapTransform):
    """Check a mask file against its image before any resampling: same voxel grid (shape and affine), values in
    [0, 1] (or, with ``binarize``, any label image, thresholded at half its maximum), not empty.

    Args:
        keys: mask keys (channel-first).
        image_key: the image the mask must share a grid with.
        binarize: accept 0/255 or 0/65535 label images and threshold them at half their maximum.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", binarize: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.binarize = image_key, binarize

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        for key in self.key_iterator(d):
            mask, src, img_src = d[key], _source(d, key), _source(d, self.image_key)
            if tuple(mask.shape[1:]) != tuple(image.shape[1:]):
                raise ValueError(f"ROI mask {src} has shape {tuple(mask.shape[1:])}, but the image {img_src} has "
                                 f"{tuple(image.shape[1:])}; they must share the voxel grid (draw the mask on the image).")
            if hasattr(mask, "affine") and hasattr(image, "affine") and not np.allclose(
                    np.asarray(mask.affine), np.asarray(image.affine), atol=1e-3):
                raise ValueError(f"ROI mask {src} and image {img_src} have different affines (not the same grid).")
            m = mask.float()  # a MetaTensor stays one (keeps its meta data)
            if not torch.isfinite(m).all():
                raise ValueError(f"ROI mask {src} contains NaN or infinite values.")
            lo, hi = float(m.min()), float(m.max())
            if hi <= 0:
                raise ValueError(f"ROI mask {src} is empty (all zeros).")
            if self.binarize:
                m = (m > 0.5 * hi).float()  # 0/1, 0/255 and 0/65535 label files alike
            elif lo < 0 or hi > 1:
                raise ValueError(f"ROI mask {src} must hold values in [0, 1] (got [{lo}, {hi}]).")
            d[key] = m
        return d


class MaskOnModelGridd(MapTransform):
    """A resampled mask on the model grid: clamped to [0, 1], or thresholded at ``coverage`` (a cell belongs to the
    ROI when that fraction of it is covered, so thin ROIs survive downsampling); it must not be empty.

    Args:
        keys: mask keys ``(1, *spatial)``.
        coverage: threshold for a binary mask; ``None`` keeps the soft mask.
    """

    def __init__(self, keys: KeysCollection, coverage: float | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.coverage = coverage

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            src = _source(d, key)
            m = torch.as_tensor(d[key]).float()
            m = (m >= self.coverage).float() if self.coverage is not None else m.clamp(0, 1)
            if not bool((m > 0).any()):
                raise ValueError(f"ROI mask {src} covers no voxel of the model grid {tuple(m.shape[1:])} (outside the "
                                 "field of view after resampling, or too thin): draw a larger region.")
            d[key] = m
        return d


def foreground_roi(image: torch.Tensor, threshold: float = 0.08, dilate: int = 1) -> torch.Tensor:
    """Whole-object ROI ``(1, *spatial)`` of a scaled image ``(1, *spatial)`` in [0, 1]: foreground above
    ``threshold``, opened, its largest component with holes filled, dilated by ``dilate`` voxels."""
    from scipy import ndimage

    fg = np.asarray(torch.as_tensor(image)[0].detach().cpu()) > threshold
    fg = ndimage.binary_opening(fg, iterations=1)
    lab, n = ndimage.label(fg)
    if n == 0:
        raise ValueError("could not find the foreground (no voxel above the threshold); give an ROI mask file.")
    sizes = ndimage.sum(np.ones_like(lab), lab, index=range(1, n + 1))
    region = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    if dilate:
        region = ndimage.binary_dilation(region, iterations=dilate)
    return torch.from_numpy(region.astype(np.float32))[None]


def region_roi(image_size: Sequence[int], region: str = "thorax") -> torch.Tensor:
    """ROI ``(1, H, W)`` for a named region of a PA film (:data:`CXR_ROI_REGIONS`)."""
    if region not in CXR_ROI_REGIONS:
        raise ValueError(f"`roi_region` must be one of {sorted(CXR_ROI_REGIONS)}, got {region!r}.")
    h, w = (int(s) for s in image_size)
    cr, cc, rr, rc, power = CXR_ROI_REGIONS[region]
    rows = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    cols = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    inside = ((rows[:, None] - cr) / rr).abs() ** power + ((cols[None, :] - cc) / rc).abs() ** power <= 1.0
    return inside.float()[None]


class _DefaultRoid(MapTransform):
    """Base of the default-ROI transforms: fills ``keys`` when the item has no mask, and records where each ROI came
    from in ``source_key`` (the mask's file, or a description of the default)."""

    description = "default"

    def __init__(self, keys: KeysCollection = "roi", image_key: str = "image", source_key: str = "roi_source") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.source_key = image_key, source_key

    @abstractmethod
    def default(self, image: torch.Tensor) -> torch.Tensor:
        """The default ROI ``(1, *spatial)`` of a model-grid image ``(1, *spatial)``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key in d:
                d.setdefault(self.source_key, _source(d, key))
            else:
                d[key] = self.default(d[self.image_key])
                d[self.source_key] = self.description
        return d


class ForegroundRoid(_DefaultRoid):
    """Default ROI of a volume without a mask file: its foreground (:func:`foreground_roi`), e.g. the whole brain.

    Args:
        keys: the ROI key.
        image_key: the scaled image ``(1, *spatial)`` in [0, 1].
        threshold, dilate: see :func:`foreground_roi`.
        description: how reports name this ROI.
    """

    def __init__(self, keys: KeysCollection = "roi", image_key: str = "image", threshold: float = 0.08,
                 dilate: int = 1, description: str = "whole brain (automatic)") -> None:
        super().__init__(keys, image_key)
        self.threshold, self.dilate, self.description = threshold, dilate, description

    def default(self, image: torch.Tensor) -> torch.Tensor:
        return foreground_roi(image, self.threshold, self.dilate)


class RegionRoid(_DefaultRoid):
    """Default ROI of a radiograph without a mask file: a named region (:data:`CXR_ROI_REGIONS`) of the model grid.

    Args:
        keys: the ROI key.
        image_key: the model-grid image ``(1, H, W)``.
        region: ``"thorax"``, ``"heart"`` or ``"lower_lungs"``.
    """

    def __init__(self, keys: KeysCollection = "roi", image_key: str = "image", region: str = "thorax") -> None:
        super().__init__(keys, image_key)
        region_roi((4, 4), region)  # fails now, naming the valid regions, rather than at the first item
        self.region, self.description = region, f"default {region} region"

    def default(self, image: torch.Tensor) -> torch.Tensor:
        return region_roi(image.shape[1:], self.region)


def model_grid_affine(reference: str, pixdim: Sequence[float], image_size: Sequence[int]) -> np.ndarray:
    """The voxel-to-world matrix ``(4, 4)`` of the model grid: ``reference`` (any volume on the training template)
    through the :func:`volume_transforms` spatial steps. Generated volumes are written with it."""
    from monai.transforms import Compose

    out = Compose(volume_transforms(pixdim, image_size, track_meta=True))({"image": reference})["image"]
    return np.asarray(out.affine, dtype=np.float64)

