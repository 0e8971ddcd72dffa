"""Brain T1 volumes in and out of the model grid: any orientation and spacing in, the same grid and affine out.

The model sees ``RAS``, ``pixdim`` spacing, intensities scaled by the 0-99.5 percentiles, padded/cropped to
``image_size``. Results go back by inverting the spatial steps on the CHANGE (frame minus frame 0) and adding it to
the untouched input, so voxels PIE did not change come back bit-identical (no resampling blur).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from ..data.transforms import CheckImaged

__all__ = ["ModelGridVolume", "brain_transforms", "from_model_grid", "load_to_model_grid", "save_like"]

LOWER_PERCENTILE, UPPER_PERCENTILE = 0.0, 99.5


def brain_transforms(pixdim: Sequence[float], image_size: Sequence[int], track_meta: bool = False) -> list:
    """The training/inference pipeline for ``{"image": path}`` items (the bundles' ``preprocessing_transforms``)."""
    return [
        LoadImaged(keys="image", image_only=True, reader="NibabelReader"),
        EnsureChannelFirstd(keys="image"),
        CheckImaged(keys="image", spatial_dims=3, channels=1),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=pixdim, mode="bilinear"),
        ScaleIntensityRangePercentilesd(keys="image", lower=LOWER_PERCENTILE, upper=UPPER_PERCENTILE, b_min=0.0,
                                        b_max=1.0, clip=True),
        ResizeWithPadOrCropd(keys="image", spatial_size=image_size),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=track_meta),
    ]


@dataclass
class ModelGridVolume:
    """An input volume on the model grid, with what is needed to map results back.

    Attributes:
        image: ``(1, 1, *image_size)`` float tensor in [0, 1].
        roi: ``(1, 1, *image_size)`` ROI in [0, 1] on the model grid, or ``None``.
        original: the input as loaded, ``(1, X, Y, Z)`` ``MetaTensor`` with its affine.
        scale: ``hi - lo`` of the intensity scaling (model units -> input units).
        spatial_pre, spatial_post: the invertible spatial steps before / after intensity scaling.
        reference: the model-grid ``MetaTensor`` carrying the applied operations to invert.
        path: the input file.
    """

    image: torch.Tensor
    roi: torch.Tensor | None
    original: MetaTensor
    scale: float
    spatial_pre: Compose
    spatial_post: Compose
    reference: MetaTensor
    path: Path


def _load(path: str | Path, what: str) -> MetaTensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    load = Compose([LoadImaged(keys="x", image_only=True), EnsureChannelFirstd(keys="x")])
    try:
        return load({"x": str(path)})["x"]
    except Exception as err:
        raise ValueError(f"cannot read {what} {path}: {err}") from err


def load_to_model_grid(image_path: str | Path, pixdim: Sequence[float], image_size: Sequence[int],
                       roi_path: str | Path | None = None) -> ModelGridVolume:
    """Load a T1 (and optional ROI mask file) and bring both to the model grid; errors name the file and problem."""
    original = _load(image_path, "image")
    CheckImaged(keys="x", spatial_dims=3, channels=1)({"x": original})
    data: dict[str, Any] = {"image": original.clone()}
    keys, modes = ["image"], ["bilinear"]
    if roi_path is not None:
        roi = _load(roi_path, "ROI mask")
        if roi.shape != original.shape:
            raise ValueError(f"ROI mask {roi_path} has shape {tuple(roi.shape[1:])}, but the image {image_path} has "
                             f"{tuple(original.shape[1:])}; they must share the voxel grid.")
        if not np.allclose(roi.affine.numpy(), original.affine.numpy(), atol=1e-3):
            raise ValueError(f"ROI mask {roi_path} and image {image_path} have different affines (not the same grid).")
        r = roi.float()
        if not torch.isfinite(r).all() or float(r.min()) < 0 or float(r.max()) > 1:
            raise ValueError(f"ROI mask {roi_path} must hold values in [0, 1] (got [{float(r.min())}, {float(r.max())}]).")
        if float(r.sum()) == 0:
            raise ValueError(f"ROI mask {roi_path} is empty (all zeros).")
        data["roi"] = r
        keys.append("roi")
        modes.append("bilinear")
    pre = Compose([Orientationd(keys=keys, axcodes="RAS"), Spacingd(keys=keys, pixdim=pixdim, mode=modes)])
    post = Compose([ResizeWithPadOrCropd(keys=keys, spatial_size=image_size)])
    data = pre(data)
    img = data["image"]
    lo = float(np.percentile(img.numpy(), LOWER_PERCENTILE))
    hi = float(np.percentile(img.numpy(), UPPER_PERCENTILE))
    if hi <= lo:
        raise ValueError(f"image {image_path} has no intensity range after resampling (constant?).")
    data["image"] = ((img - lo) / (hi - lo)).clamp(0, 1)
    data = post(data)
    roi_t = data["roi"].as_tensor().clamp(0, 1)[None].float() if "roi" in data else None
    if roi_t is not None and float(roi_t.sum()) == 0:
        raise ValueError(f"ROI mask {roi_path} falls outside the model's field of view after resampling.")
    return ModelGridVolume(
        image=data["image"].as_tensor()[None].float(), roi=roi_t, original=original, scale=hi - lo,
        spatial_pre=pre, spatial_post=post, reference=data["image"], path=Path(image_path),
    )


def from_model_grid(vol: ModelGridVolume, change: torch.Tensor) -> torch.Tensor:
    """Map a change ``(1, *image_size)`` in model units back to the input grid: ``(1, X, Y, Z)`` in input units."""
    ref = vol.reference
    # inverses pop from the recorded operations: give each call its own copy
    delta = MetaTensor(change.detach().cpu().float() * vol.scale, meta=copy.deepcopy(dict(ref.meta)),
                       applied_operations=copy.deepcopy(list(ref.applied_operations)))
    from monai.transforms import allow_missing_keys_mode

    with allow_missing_keys_mode(vol.spatial_post), allow_missing_keys_mode(vol.spatial_pre):  # the ROI key is absent
        delta = vol.spatial_post.inverse({"image": delta})["image"]
        delta = vol.spatial_pre.inverse({"image": delta})["image"]
    out = torch.as_tensor(delta).float()
    if tuple(out.shape) != tuple(vol.original.shape):
        raise RuntimeError(f"inverse mapping gave shape {tuple(out.shape)}, expected {tuple(vol.original.shape)}.")
    return out


def save_like(data: np.ndarray | torch.Tensor, like: MetaTensor, path: str | Path) -> Path:
    """Save ``(X, Y, Z)`` or ``(1, X, Y, Z)`` ``data`` as NIfTI with ``like``'s affine (atomic write)."""
    import nibabel as nib

    from ..utils import atomic_write

    arr = np.asarray(data.detach().cpu() if torch.is_tensor(data) else data, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    affine = like.affine.numpy() if torch.is_tensor(like.affine) else np.asarray(like.affine)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=".tmp.nii.gz")
