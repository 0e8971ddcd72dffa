"""Postprocessing writers: results back on the input's grid exactly, files never over inputs, the newest NIfTI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import decollate_batch, list_data_collate
from monai.transforms import Compose, Orientationd, ResizeWithPadOrCropd, Spacingd

from monai_pie.data import CheckImaged, ForegroundRoid, LoadVolumed, ScaleIntensityPercentilesd, load_2d_image
from monai_pie.engines import (
    ProgressionToInputGridd,
    SaveFramesd,
    SaveProgressionPicturesd,
    SaveProgressionSummaryd,
    SaveSamplesd,
)


def volume_pipeline() -> Compose:
    return Compose([
        LoadVolumed(["image"]), CheckImaged("image"), Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=(3.0, 3.0, 3.0)), ScaleIntensityPercentilesd("image"),
        ResizeWithPadOrCropd("image", spatial_size=(12, 12, 12)), ForegroundRoid("roi", "image", threshold=0.3),
    ])


@pytest.fixture
def volume_item(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    data = (rng.random((20, 24, 18)) * 800).astype(np.float32)
    affine = np.array([[0, -2.0, 0, 10], [2.0, 0, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])  # not RAS, not the grid
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "t1.nii.gz")
    pre = volume_pipeline()
    item = pre({"image": str(tmp_path / "t1.nii.gz"), "output_dir": str(tmp_path / "out")})
    return {"pre": pre, "item": decollate_batch(list_data_collate([item]))[0], "data": data, "affine": affine}


def prediction(model_frames: torch.Tensor) -> dict:
    n = model_frames.shape[0] - 1
    return {"frames": model_frames, "change_norm": torch.arange(n, dtype=torch.float32),
            "change_inside": torch.ones(n), "seconds_per_round": torch.tensor(0.5)}


def test_no_change_comes_back_bit_identical_and_a_change_comes_back_in_input_units(volume_item):
    item, pre = volume_item["item"], volume_item["pre"]
    x0 = item["image"].as_tensor()
    frames = torch.stack([x0, x0, x0 + 0.1])  # (3, 1, 12, 12, 12): unchanged, then +0.1 model units
    out = ProgressionToInputGridd("pred", transform=pre)(dict(item, pred=prediction(frames)))
    original = volume_item["data"]
    assert np.array_equal(out["input_frames"][0], original) and np.array_equal(out["input_frames"][1], original)
    scale = float(item["image"].meta["scale_high"]) - float(item["image"].meta["scale_low"])
    change = out["input_changes"][1]
    assert change.shape == original.shape and np.isclose(np.median(change[change != 0]), 0.1 * scale, rtol=1e-4)
    assert 0 < (change != 0).mean() < 1  # the model grid covers part of the input only: the rest is untouched
    assert np.allclose(out["input_affine"], volume_item["affine"])


def test_writers_write_every_file_and_make_the_final_frame_the_newest(volume_item):
    item, pre = volume_item["item"], volume_item["pre"]
    x0 = item["image"].as_tensor()
    d = ProgressionToInputGridd("pred", transform=pre)(dict(item, pred=prediction(torch.stack([x0, x0 + 0.05, x0 + 0.1]))))
    d = SaveFramesd()(d)
    d = SaveProgressionPicturesd()(d)

    class Params:
        def params(self):
            return {"num_rounds": 2}

    d = SaveProgressionSummaryd(inferer=Params(), item_fields={"target": {"stage": "missing"}}, device="cpu")(d)
    out = Path(item["output_dir"])
    assert {p.name for p in out.iterdir()} == {"frame_00.nii.gz", "frame_01.nii.gz", "frame_02.nii.gz", "change_01.nii.gz",
                                                "change_02.nii.gz", "progression_strip.png", "progression.gif",
                                                "progression.json"}
    newest = max(out.glob("*.nii.gz"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "frame_02.nii.gz"
    summary = json.loads((out / "progression.json").read_text())
    assert summary["rounds"] == [{"round": 1, "change_norm": [0.0], "change_inside": [1.0]},
                                 {"round": 2, "change_norm": [1.0], "change_inside": [1.0]}]
    assert summary["params"] == {"num_rounds": 2} and summary["seconds_per_round"] == 0.5 and summary["seconds"] == 1.0
    assert summary["roi"] == "whole brain (automatic)" and summary["target"] == {"stage": None}
    assert summary == d["summary"]


def test_2d_frames_come_back_at_the_input_resolution_clipped(tmp_path):
    from PIL import Image

    img = (np.random.default_rng(1).random((40, 30)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    frames = torch.zeros(2, 1, 16, 16)
    frames[1] += 2.0  # an absurd change: frames must stay in [0, 1]
    item = {"image": str(tmp_path / "x.png"), "output_dir": str(tmp_path / "out"), "roi": torch.ones(1, 16, 16)}
    d = ProgressionToInputGridd("pred", clip=(0, 1))(dict(item, pred=prediction(frames)))
    assert d["input_frames"][1].shape == (40, 30) and d["input_frames"][1].max() == 1.0
    d = SaveFramesd(format="png16", roi_key="roi")(d)
    assert load_2d_image(tmp_path / "out" / "frame_01.png").shape == (40, 30)
    final = nib.load(tmp_path / "out" / "frame_01.nii.gz")
    assert final.shape == (30, 40, 1)  # a one-slice volume (x = columns), the layout load_2d_image reads back
    assert np.allclose(final.get_fdata()[..., 0].T, d["input_frames"][1])  # x = columns, y = rows
    assert (load_2d_image(tmp_path / "out" / "roi.png") > 0.5).all()


def test_no_writer_replaces_an_input_file(tmp_path):
    frames = [np.zeros((4, 4), np.float32)] * 2
    src = tmp_path / "frame_00.png"
    src.write_bytes(b"the user's file")
    with pytest.raises(ValueError, match="would overwrite the input"):
        SaveFramesd(format="png16")({"input_frames": frames, "input_changes": frames[:1], "image": str(src),
                                     "output_dir": str(tmp_path)})
    assert src.read_bytes() == b"the user's file"


def test_save_samples_writes_nifti_and_png_under_their_names(tmp_path):
    d = SaveSamplesd(output_dir=tmp_path, format="nifti", affine=np.diag([2.5, 2.5, 2.5, 1]))(
        {"pred": torch.rand(1, 4, 5, 6), "output_name": "sample_000"})
    vol = nib.load(d["sample_path"])
    assert vol.shape == (4, 5, 6) and np.allclose(np.diag(vol.affine)[:3], 2.5)
    d = SaveSamplesd(output_dir=tmp_path, format="png16")({"pred": torch.full((1, 8, 8), 0.5),
                                                          "output_name": "prompt_01/sample_002"})
    assert d["sample_path"].endswith(os.path.join("prompt_01", "sample_002.png"))
    assert np.allclose(load_2d_image(d["sample_path"]), 0.5, atol=1e-4)


def _int16_item(tmp_path, slope: float = 0.5, inter: float = 10.0) -> tuple[dict, np.ndarray, Compose]:
    """An int16 input with a non-trivial scaling, through the volume pipeline."""
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 1600, (20, 24, 18)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_slope_inter(slope, inter)
    nib.save(img, tmp_path / "t1_int16.nii.gz")
    pre = volume_pipeline()
    item = pre({"image": str(tmp_path / "t1_int16.nii.gz"), "output_dir": str(tmp_path / "out")})
    return decollate_batch(list_data_collate([item]))[0], raw * slope + inter, pre


@pytest.mark.parametrize("output_dtype", ["input", "int16", "float32"])
def test_frames_and_changes_are_stored_as_asked(tmp_path, output_dtype):
    item, values, pre = _int16_item(tmp_path)
    x0 = item["image"].as_tensor()
    d = ProgressionToInputGridd("pred", transform=pre)(dict(item, pred=prediction(torch.stack([x0, x0 + 0.01]))))
    SaveFramesd(output_dtype=output_dtype)(d)
    out = Path(item["output_dir"])
    f0, f1, c1 = (nib.load(out / name) for name in ("frame_00.nii.gz", "frame_01.nii.gz", "change_01.nii.gz"))
    want_frame = {"input": np.int16, "int16": np.int16, "float32": np.float32}[output_dtype]
    want_change = np.float32 if output_dtype == "float32" else np.int16
    assert f0.get_data_dtype() == want_frame and f1.get_data_dtype() == want_frame
    assert c1.get_data_dtype() == want_change
    if output_dtype in ("input", "float32"):  # the input's own precision: frame 0 reads back as the input, exactly
        assert np.array_equal(f0.get_fdata(dtype=np.float32), values.astype(np.float32))
    if output_dtype == "input":
        assert (f0.dataobj.slope, f0.dataobj.inter) == (0.5, 10.0)
    change = d["input_changes"][0]
    step = (change.max() - change.min()) / 65534  # int16 scaled to the change's own range
    assert np.abs(c1.get_fdata() - change).max() <= step + 1e-6 * np.abs(change).max()
    # the changed frame is within half the input's step of what was asked (or exact in float32)
    tol = {"input": 0.25 + 1e-3, "int16": (values.max() + 0.01 * 1600) / 32767, "float32": 1e-3}[output_dtype]
    assert np.abs(f1.get_fdata() - d["input_frames"][1]).max() <= tol


def test_storage_when_values_leave_the_input_range(tmp_path):
    from monai_pie.data import NiftiStorage, save_nifti_like

    storage = NiftiStorage("uint8", 1.0, 0.0)
    assert storage.quantise(np.array([0.0, 255.0])) is not None
    assert storage.quantise(np.array([-3.0, 300.0])) is None  # out of uint8
    values = np.array([[[-3.0, 300.0, 7.0]]], np.float32)
    back = nib.load(save_nifti_like(values, np.eye(4), tmp_path / "x.nii.gz", storage))
    # out of the 8-bit input's range: the same scaling one integer type wider, every value exact
    assert back.get_data_dtype() == np.int16 and np.array_equal(back.get_fdata(), values[0])
    wide = nib.load(save_nifti_like(values * 1e10, np.eye(4), tmp_path / "w.nii.gz", NiftiStorage("int32", 1.0, 0.0)))
    assert wide.get_data_dtype() == np.float32 and np.array_equal(wide.get_fdata(), values[0] * 1e10)  # 32-bit: exact
    fitted = nib.load(save_nifti_like(values, np.eye(4), tmp_path / "y.nii.gz", NiftiStorage("int16")))
    assert fitted.get_data_dtype() == np.int16 and np.allclose(fitted.get_fdata(), values[0], atol=303 / 65535)
    with pytest.raises(ValueError, match="output_dtype"):
        SaveFramesd(output_dtype="float16")


def test_bounded_change_keeps_frames_in_the_input_range_and_a_null_frame_bit_identical(volume_item):
    item, pre = volume_item["item"], volume_item["pre"]
    x0 = item["image"].as_tensor()
    dark = x0.clone()
    dark[..., 4:8, 4:8, 4:8] -= 0.5  # pushes voxels far below the darkest input voxel
    frames = torch.stack([x0, x0, dark])
    plain = ProgressionToInputGridd("pred", transform=pre)(dict(item, pred=prediction(frames)))
    out = ProgressionToInputGridd("pred", transform=pre, bounded_change_mm=3.0)(dict(item, pred=prediction(frames)))
    original = volume_item["data"]
    assert np.array_equal(out["input_frames"][1], original)
    assert plain["input_frames"][2].min() < original.min() - 1.0  # the plain residual leaves the input's range ...
    assert out["input_frames"][2].min() >= original.min() and out["input_frames"][2].max() <= original.max()
    assert np.array_equal(out["input_frames"][2], original + out["input_changes"][1])  # ... the bounded one does not
    assert out["input_changes"][1].sum() < 0  # and still darkens


@pytest.mark.parametrize("kwargs, message", [({"bounded_change_mm": 2.0}, "needs volumes"),
                                             ({"bounded_change_mm": 0.0, "transform": Compose([])}, "> 0")])
def test_bounded_change_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProgressionToInputGridd("pred", **kwargs)
