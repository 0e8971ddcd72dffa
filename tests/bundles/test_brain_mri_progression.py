"""brain_mri_progression: the PIE workflow on the input's grid, datalists, and what bad input gets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from helpers.bundle_helpers import BRAIN_LDM, BRAIN_NET, BRAIN_PROG, cfg, last_line, run_cli
from monai.bundle import run as bundle_run

from monai_pie.utils.errors import root_cause

EXAMPLE = BRAIN_PROG / "docs" / "example_t1.nii.gz"


def progress(model: Path, out: Path, **overrides) -> dict:
    """Run the bundle in-process with tiny weights and fast settings; the JSON summary of a single image."""
    settings = dict(BRAIN_NET, bundle_root=str(BRAIN_PROG), model_path=str(model), output_dir=str(out),
                    num_rounds=2, num_inference_steps=4, progress=False)
    bundle_run(config_file=cfg(BRAIN_PROG, "inference.json"), **{**settings, **overrides})
    return json.loads((out / "progression.json").read_text()) if (out / "progression.json").is_file() else {}


def error_of(model: Path, tmp_path: Path, **overrides) -> BaseException:
    with pytest.raises(Exception) as info:
        progress(model, tmp_path / "out", **overrides)
    return root_cause(info.value)


def write(path: Path, data: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4) * 2 if affine is None else affine), str(path))
    return str(path)


def test_progression_outputs_on_the_input_grid(brain_trained, tmp_path):
    out = tmp_path / "prog"
    summary = progress(brain_trained / "model.pt", out, anchor="previous", blend_in=0.4)
    assert len(summary["rounds"]) == 2 and summary["target"]["diagnosis"] == "AD"
    assert summary["params"]["anchor"] == "previous" and summary["params"]["blend_in"] == 0.4  # overrides reach PIE
    example = nib.load(EXAMPLE)
    f0, f2 = nib.load(out / "frame_00.nii.gz"), nib.load(out / "frame_02.nii.gz")
    assert f2.shape == example.shape and np.allclose(f2.affine, example.affine)
    assert np.allclose(f0.get_fdata(), example.get_fdata(), atol=1e-5)  # frame 0 is the input
    changed = np.abs(f2.get_fdata() - example.get_fdata()) > 1e-6
    assert 0 < changed.mean() < 0.5  # the model-grid field of view changed, the rest of the head did not
    for name in ("progression_strip.png", "progression.gif", "change_01.nii.gz"):
        assert (out / name).is_file()
    newest = max(out.glob("*.nii.gz"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "frame_02.nii.gz"  # what 3D Slicer loads as the result


def test_bounded_change_moves_the_change_inside_the_inputs_range(brain_trained, tmp_path):
    plain = tmp_path / "plain"
    progress(brain_trained / "model.pt", plain)
    bounded = tmp_path / "bounded"
    progress(brain_trained / "model.pt", bounded, bounded_change_mm=4.0)
    x0 = nib.load(EXAMPLE).get_fdata()
    a, b = (nib.load(d / "frame_02.nii.gz").get_fdata() for d in (plain, bounded))
    changed = np.abs(a - x0) > 1e-3 * np.ptp(x0)
    assert changed.any() and not np.allclose(a[changed], b[changed])  # the setting reaches the written frames
    assert b.min() >= x0.min() - 1e-3 and b.max() <= x0.max() + 1e-3
    far = ndimage.distance_transform_edt(a == x0) > 10  # voxels 10 away from anything the plain edit touched
    # it moves the change nearby (deconvolution tails aside); it does not make new change far away
    assert far.any() and np.abs(b[far] - x0[far]).max() < 0.01 * np.abs(a - x0).max()


def test_a_datalist_runs_each_item_with_its_own_fields_into_its_own_folder(brain_trained, tmp_path):
    roi = np.zeros(nib.load(EXAMPLE).shape, np.float32)
    roi[30:70, 40:80, 30:65] = 1
    write(tmp_path / "roi.nii.gz", roi, nib.load(EXAMPLE).affine)
    items = [{"image": str(EXAMPLE), "age": 81.0, "target_age": 90.0, "sex": 1, "roi": str(tmp_path / "roi.nii.gz")},
             {"image": str(EXAMPLE)}]
    (tmp_path / "list.json").write_text(json.dumps({"test": items}))
    progress(brain_trained / "model.pt", tmp_path / "out", datalist_file=str(tmp_path / "list.json"),
             dataset_dir=str(tmp_path), target_stage=0.6)
    first = json.loads((tmp_path / "out" / "example_t1" / "progression.json").read_text())
    second = json.loads((tmp_path / "out" / "example_t1_2" / "progression.json").read_text())
    # an item's target_age asks for an older brain; without one the edit keeps the input's (here the bundle's) age
    assert first["target"] == {"stage": 0.6, "diagnosis": "MCI", "age": 90.0, "sex": 1}
    assert second["target"]["age"] == 72.0 and second["roi"] == "whole brain (automatic)"
    assert first["roi"].endswith("roi.nii.gz")
    change = np.abs(nib.load(tmp_path / "out" / "example_t1" / "frame_02.nii.gz").get_fdata() - nib.load(EXAMPLE).get_fdata())
    assert change[roi > 0].mean() > 5 * change[roi == 0].mean()  # the ROI file is respected


# ------------------------------------------------------------------------------------------------- bad input
def _bad_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """``name -> (path, what the message must say)``: the classes of broken input a user meets."""
    vol = np.random.default_rng(0).random((20, 24, 20)).astype(np.float32)
    good = Path(write(tmp_path / "good.nii.gz", vol))
    raw = good.read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"this is not an image"))
    (tmp_path / "plain.nii.gz").write_bytes(b"not gzip at all")
    nan = vol.copy()
    nan[3, 3, 3] = np.nan
    hdr = nib.Nifti1Header()  # an all-zero sform, the only orientation the file has
    hdr.set_data_shape(vol.shape)
    hdr.set_data_dtype(np.float32)
    hdr["sform_code"], hdr["qform_code"], hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = 2, 0, 0, 0, 0
    nib.save(nib.Nifti1Image(vol, None, header=hdr), str(tmp_path / "zero.nii.gz"))
    return {
        "truncated": (str(tmp_path / "truncated.nii.gz"), "truncated"),
        "empty": (str(tmp_path / "empty.nii.gz"), "empty (0 bytes)"),
        "not an image": (str(tmp_path / "text.nii.gz"), "not a valid NIfTI"),
        "not gzip": (str(tmp_path / "plain.nii.gz"), "corrupt or not gzip"),
        "zero affine": (str(tmp_path / "zero.nii.gz"), "degenerate voxel-to-world"),
        "NaN": (write(tmp_path / "nan.nii.gz", nan), "NaN"),
        "2D slice": (write(tmp_path / "slice.nii.gz", vol[:, :, 0]), "3D image"),
        "4D": (write(tmp_path / "4d.nii.gz", np.stack([vol] * 3, -1)), "channel"),
        "constant": (write(tmp_path / "flat.nii.gz", np.ones_like(vol)), "constant"),
        "missing": (str(tmp_path / "absent.nii.gz"), "not found"),
    }


@pytest.mark.parametrize("case", ["truncated", "empty", "not an image", "not gzip", "zero affine", "NaN", "2D slice",
                                  "4D", "constant", "missing"])
def test_a_broken_input_file_gets_a_message_naming_the_file_and_the_cause(case, brain_trained, tmp_path):
    path, says = _bad_files(tmp_path)[case]
    err = error_of(brain_trained / "model.pt", tmp_path, image=path)
    assert says in str(err) and Path(path).name in str(err), str(err)
    assert not (tmp_path / "out" / "progression.json").exists()


@pytest.mark.parametrize(("overrides", "says"), [
    ({"target_stage": "abc"}, "`target_stage` must be a number in [0, 1], got 'abc'"),
    ({"target_stage": 5}, "`target_stage` must be in [0, 1]"),
    ({"target_diagnosis": "FTD"}, "`target_diagnosis` must be one of"),
    ({"sex": 2}, "`sex` must be one of [0, 1]"),
    ({"age": "old"}, "`age` must be a finite number"),
    ({"num_rounds": 10000}, "`num_rounds` must be at most"),
    ({"guidance_scale": -1.0}, "`guidance_scale` must be a finite number >= 0"),
    ({"strength": 1.5}, "`strength` must be in [0.0, 1.0], got 1.5"),
    ({"image_size": [30, 30, 30]}, "do not round-trip through the autoencoder"),
])
def test_bad_settings_get_clear_errors(overrides, says, brain_trained, tmp_path):
    assert says in str(error_of(brain_trained / "model.pt", tmp_path, **overrides))


def test_roi_mask_errors(brain_trained, tmp_path):
    shape, affine = nib.load(EXAMPLE).shape, nib.load(EXAMPLE).affine
    cases = {"empty": (np.zeros(shape), affine), "share the voxel grid": (np.ones((10, 10, 10)), affine),
             "different affines": (np.ones(shape), affine * 1.5), "values in [0, 1]": (np.full(shape, 3.0), affine)}
    for says, (mask, aff) in cases.items():
        roi = write(tmp_path / "roi.nii.gz", mask, aff)
        assert says in str(error_of(brain_trained / "model.pt", tmp_path, roi=roi)), says


def test_suspicious_inputs_warn(brain_trained, tmp_path):
    tiny = write(tmp_path / "tiny.nii.gz", np.random.default_rng(1).random((8, 8, 8)))
    with pytest.warns(UserWarning, match="covers only"):
        progress(brain_trained / "model.pt", tmp_path / "a", image=tiny, num_rounds=1)
    with pytest.warns(UserWarning, match="outside the range the model was trained on"):
        progress(brain_trained / "model.pt", tmp_path / "b", age=120.0, num_rounds=1)


def test_weights_errors_name_the_file(brain_trained, tmp_path):
    err = error_of(brain_trained / "model.pt", tmp_path, model_path=str(tmp_path / "nope.pt"))
    assert isinstance(err, FileNotFoundError) and "nope.pt" in str(err) and "brain_mri_ldm" in str(err)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert "unreadable" in str(error_of(brain_trained / "model.pt", tmp_path, model_path=str(tmp_path / "bad.pt")))
    # the shipped weights (64-channel networks) into the tiny networks: another architecture
    err = error_of(brain_trained / "model.pt", tmp_path, model_path=str(BRAIN_LDM / "models" / "model.pt"))
    assert "do not fit this network" in str(err) and "model.pt" in str(err) and "of another shape" in str(err)


def test_the_users_error_is_the_last_line(tmp_path):
    proc = run_cli(cfg(BRAIN_PROG, "inference.json"), {"bundle_root": str(BRAIN_PROG), "output_dir": str(tmp_path),
                                                      "target_diagnosis": "FTD"})
    assert proc.returncode != 0
    assert last_line(proc) == "ValueError: `target_diagnosis` must be one of ['AD', 'CN', 'MCI'], got 'FTD'."
    no_root = run_cli(cfg(BRAIN_PROG, "inference.json"), {"output_dir": str(tmp_path)}, cwd=str(tmp_path))
    assert "--bundle_root" in last_line(no_root) and "not a bundle folder" in last_line(no_root)


def test_an_output_folder_holding_the_input_is_not_overwritten(brain_trained, tmp_path):
    image = tmp_path / "frame_00.nii.gz"
    image.write_bytes(EXAMPLE.read_bytes())
    before = image.read_bytes()
    err = error_of(brain_trained / "model.pt", tmp_path, image=str(image), output_dir=str(tmp_path))
    assert "would overwrite the input" in str(err)
    assert image.read_bytes() == before


def test_the_validation_runs_the_bundle_settings_and_the_class_keeps_pies():
    from monai_pie.validation import ProgressionSettings
    from monai_pie.validation.protocol import validation_modes

    conf = json.loads((BRAIN_PROG / "configs" / "inference.json").read_text())
    modes = validation_modes(BRAIN_PROG)
    bundle = modes["PIE, bundle defaults"]
    assert bundle == ProgressionSettings.from_config(conf)  # the bundle's own setting, stated once in its JSON
    assert (bundle.strength, bundle.blend_in, bundle.anchor) == (conf["strength"], conf["blend_in"], conf["anchor"])
    published = modes["PIE, published setting"]
    assert (published.strength, published.blend_in, published.blend_out, published.guidance_scale, published.anchor,
            published.num_rounds) == (0.5, 0.75, 0.01, 7.5, "original", 10)
    assert published == ProgressionSettings.published()  # read from ProgressionInferer's defaults, stated there


def test_both_brain_bundles_define_the_same_network():
    a = json.loads((BRAIN_LDM / "configs" / "inference.json").read_text())
    b = json.loads((BRAIN_PROG / "configs" / "inference.json").read_text())
    for k in ["autoencoder_def", "unet_def", "conditioner_def", "network_def", "noise_scheduler", "pixdim", "image_size",
              "ae_channels", "unet_channels", "latent_channels", "context_dim", "condition_keys", "condition_ranges"]:
        assert a[k] == b[k], k

