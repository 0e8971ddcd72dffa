"""Every bundle that takes an image runs under 3D Slicer's bundle runner, step by step as Slicer does it."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.bundle_helpers import BRAIN_PROG, CXR_PROG
from helpers.slicer import slicer_infer

from monai_pie.data import load_2d_image

#: speed settings for the test, applied after Slicer's own overrides (the shipped weights, the default everything else)
FAST = {"num_rounds": 2, "num_inference_steps": 10, "progress": False}


def test_brain_progression_under_slicer(tmp_path):
    shutil.copy(BRAIN_PROG / "docs" / "example_t1.nii.gz", tmp_path / "t1.nii.gz")
    result = slicer_infer(BRAIN_PROG, tmp_path / "t1.nii.gz", tmp_path / "out" / "result.nii.gz",
                          device=torch.device("cpu"), extra=FAST)
    example = nib.load(tmp_path / "t1.nii.gz")
    img = nib.load(result)
    assert img.shape == example.shape and np.allclose(img.affine, example.affine)  # on the input's grid
    x = example.get_fdata()
    change = np.abs(img.get_fdata() - x)
    brain = x > np.percentile(x, 70)
    assert change.max() > 0.01 * np.ptp(x) and change[brain].mean() > 5 * change[~brain].mean()  # edited: the brain
    # the result is the final frame, not a change map or frame 0
    assert sorted(p.name for p in result.parent.glob("*.nii.gz")) == ["change_01.nii.gz", "change_02.nii.gz",
                                                                       "frame_00.nii.gz", "frame_01.nii.gz",
                                                                       "result.nii.gz"]


@pytest.mark.parametrize("spacing", [1.0, 0.25])
def test_cxr_progression_under_slicer_with_a_one_slice_volume(spacing, tmp_path):
    x = load_2d_image(CXR_PROG / "docs" / "example_cxr.png")
    affine = np.diag([spacing, spacing, 1.0, 1.0])
    nib.save(nib.Nifti1Image((x.T * 4095)[:, :, None].astype(np.float32), affine), tmp_path / "cxr.nii.gz")
    result = slicer_infer(CXR_PROG, tmp_path / "cxr.nii.gz", tmp_path / "out" / "result.nii.gz",
                          device=torch.device("cpu"), extra=FAST)
    img = nib.load(result)
    assert img.shape == (128, 128, 1) and np.allclose(img.affine, affine)  # Slicer overlays it on the input
    lo, hi = 4095 * float(x.min()), 4095 * float(x.max())
    final = (img.get_fdata()[..., 0].T - lo) / (hi - lo)  # the result is in the input's units
    assert np.isfinite(final).all() and 0 < np.abs(final - x).max() and final.min() >= -1e-6 and final.max() <= 1 + 1e-6
    assert np.allclose(final, load_2d_image(result.parent / "frame_02.png"), atol=1e-4)  # the final frame
