"""Readers, transforms, volume/image I/O, datalists, and cohort synthesis with known ground truth (``synthetic``)."""

from __future__ import annotations

from . import synthetic  # noqa: F401  (registration)
from .cxr_readers import read_chexpert_csv, read_image_report_pairs, report_to_labels, report_to_prompt
from .datalist import as_items, generation_items, load_datalist, output_names
from .io import (
    IMAGE_EXTENSIONS,
    check_readable_file,
    image_extension,
    load_2d_image,
    read_volume,
    save_nifti_like,
    save_png16,
    strip_image_extension,
)
from .transforms import (
    CXR_ROI_REGIONS,
    CheckFieldOfViewd,
    CheckImaged,
    CheckMaskd,
    ForegroundRoid,
    ItemDefaultsd,
    LoadImage2Dd,
    LoadVolumed,
    MaskOnModelGridd,
    PETStructured,
    RegionRoid,
    ScaleIntensityPercentilesd,
    foreground_roi,
    image_2d_transforms,
    model_grid_affine,
    pet_structure,
    region_roi,
    volume_transforms,
)

__all__ = [
    "CXR_ROI_REGIONS",
    "IMAGE_EXTENSIONS",
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
    "ScaleIntensityPercentilesd",
    "as_items",
    "check_readable_file",
    "foreground_roi",
    "generation_items",
    "image_2d_transforms",
    "image_extension",
    "load_2d_image",
    "load_datalist",
    "model_grid_affine",
    "pet_structure",
    "output_names",
    "read_chexpert_csv",
    "read_image_report_pairs",
    "read_volume",
    "region_roi",
    "report_to_labels",
    "report_to_prompt",
    "save_nifti_like",
    "save_png16",
    "strip_image_extension",
    "volume_transforms",
]
