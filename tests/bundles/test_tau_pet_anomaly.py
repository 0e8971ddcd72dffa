"""The tau_pet_anomaly bundle: trained through its own configs with tiny networks, run on a held-out subject of the
synthetic tau cohort (maps on the input's grid, zero outside the brain, regional scores, pictures), on bad inputs
(clear errors, nothing written) and under 3D Slicer's bundle runner."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.bundle_helpers import TAU, TAU_NET
from helpers.slicer import slicer_infer

from monai_pie.bundle_tools import run_bundle

FAST = {**TAU_NET, "num_inference_steps": 6, "progress": False}


def _subject(cohort, split="test", diagnosis=None):
    items = json.loads((cohort / "datalist.json").read_text())[split]
    item = next(i for i in items if diagnosis is None or i["diagnosis"] == diagnosis)
    return cohort / item["image"], item


def test_anomaly_maps_on_the_input_grid(tau_cohort, tau_trained, tmp_path):
    image, _ = _subject(tau_cohort)
    copy = tmp_path / "in" / "suvr.nii.gz"
    copy.parent.mkdir()
    shutil.copy(image, copy)
    before = copy.read_bytes()
    out = tmp_path / "out"
    run_bundle(TAU, {**FAST, "image": str(copy), "model_path": str(tau_trained / "model.pt"),
                     "output_dir": str(out), "severity_path": None})
    x = nib.load(copy)
    names = {p.name for p in out.iterdir()}
    assert {"anomaly.nii.gz", "healthy.nii.gz", "unhealthy.nii.gz", "anomaly.json", "anomaly_overlay.png"} <= names
    brain = np.asarray(nib.load(TAU / "models" / "brain_mask.nii.gz").dataobj) > 0
    for name in ("anomaly", "healthy", "unhealthy"):
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == x.shape and np.allclose(img.affine, x.affine) and np.isfinite(img.get_fdata()).all()
    amap = nib.load(out / "anomaly.nii.gz").get_fdata()
    assert amap.min() >= 0 and np.abs(amap[~brain]).max() < 1e-5  # restricted to the brain
    healthy = nib.load(out / "healthy.nii.gz").get_fdata()
    assert 0.1 < healthy[brain].mean() / x.get_fdata()[brain].mean() < 10  # in SUVR units, not [0, 1]
    summary = json.loads((out / "anomaly.json").read_text())
    assert list(summary["regional"]) == ["entorhinal", "hippocampus", "fusiform", "inferior_temporal",
                                         "parietal_precuneus", "frontal"]
    assert "severity" not in summary and summary["params"]["num_inference_steps"] == 6
    assert copy.read_bytes() == before  # the input is never touched


def test_any_orientation_and_spacing_comes_back_on_its_own_grid(tau_cohort, tau_trained, tmp_path):
    """A 2 mm LPS copy of a subject: mapped to the 2.5 mm RAS model grid (the template masks follow by world
    coordinates) and back."""
    from monai.transforms import Orientation, Spacing

    image, _ = _subject(tau_cohort)
    x = nib.load(image)
    from monai.data import MetaTensor

    t = MetaTensor(torch.as_tensor(x.get_fdata(), dtype=torch.float32)[None], affine=torch.as_tensor(x.affine))
    t = Orientation(axcodes="LPS")(Spacing(pixdim=(2.0, 2.0, 2.0), mode="bilinear")(t))
    nib.save(nib.Nifti1Image(t[0].numpy(), t.affine.numpy()), tmp_path / "lps_2mm.nii.gz")
    out = tmp_path / "out"
    run_bundle(TAU, {**FAST, "image": str(tmp_path / "lps_2mm.nii.gz"), "model_path": str(tau_trained / "model.pt"),
                     "output_dir": str(out), "severity_path": None})
    src, amap = nib.load(tmp_path / "lps_2mm.nii.gz"), nib.load(out / "anomaly.nii.gz")
    assert amap.shape == src.shape and np.allclose(amap.affine, src.affine)
    assert amap.get_fdata().min() >= 0 and np.isfinite(amap.get_fdata()).all()
    mapped, pet = amap.get_fdata() > 1e-6, src.get_fdata()
    assert mapped.any() and (pet[mapped] > 0.05 * pet.max()).mean() > 0.99  # the map sits on this input's head


def test_severity_from_a_json_model_in_the_summary(tau_cohort, tau_trained, tmp_path):
    from monai_pie.metrics.severity import SeverityModel

    names = ("entorhinal", "hippocampus", "fusiform", "inferior_temporal", "parietal_precuneus", "frontal")
    model = SeverityModel(features=names, mean=(0.0,) * 6, scale=(1.0,) * 6, coef=(1.0,) * 6, intercept=0.0,
                          platt_a=-1.0, platt_b=0.0)
    path = model.save(tmp_path / "severity.json")
    image, _ = _subject(tau_cohort)
    run_bundle(TAU, {**FAST, "image": str(image), "model_path": str(tau_trained / "model.pt"),
                     "output_dir": str(tmp_path / "out"), "severity_path": str(path)})
    summary = json.loads((tmp_path / "out" / "anomaly.json").read_text())
    scores = list(summary["regional"].values())
    assert summary["severity"]["probability"] == pytest.approx(float(model.probability(scores)[0]))


@pytest.mark.parametrize("case, words", [
    ("4d", "expected 1 channel(s), got 2"),
    ("nan", "NaN or infinite"),
    ("weights", "tau PET anomaly model weights not found"),
    ("mask", "empty"),
])
def test_bad_inputs_fail_clearly_and_write_nothing(case, words, tau_cohort, tau_trained, tmp_path):
    image, _ = _subject(tau_cohort)
    x = nib.load(image)
    overrides = {**FAST, "image": str(image), "model_path": str(tau_trained / "model.pt"),
                 "output_dir": str(tmp_path / "out"), "severity_path": None}
    if case == "4d":
        nib.save(nib.Nifti1Image(np.stack([x.get_fdata()] * 2, -1).astype(np.float32), x.affine), tmp_path / "4d.nii.gz")
        overrides["image"] = str(tmp_path / "4d.nii.gz")
    elif case == "nan":
        data = x.get_fdata().astype(np.float32)
        data[30, 40, 30] = np.nan
        nib.save(nib.Nifti1Image(data, x.affine), tmp_path / "nan.nii.gz")
        overrides["image"] = str(tmp_path / "nan.nii.gz")
    elif case == "weights":
        overrides["model_path"] = str(tmp_path / "missing.pt")
    else:
        mask = nib.load(TAU / "models" / "brain_mask.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine), tmp_path / "empty.nii.gz")
        overrides["brain_mask_path"] = str(tmp_path / "empty.nii.gz")
    with pytest.raises(Exception) as err:
        run_bundle(TAU, overrides)
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any(words in m for m in chain), chain[-3:]
    assert not list((tmp_path / "out").glob("*.nii.gz")) if (tmp_path / "out").exists() else True


def test_runs_under_slicer_and_returns_the_anomaly_map(tau_cohort, tau_trained, tmp_path):
    image, _ = _subject(tau_cohort)
    shutil.copy(image, tmp_path / "suvr.nii.gz")
    result = slicer_infer(TAU, tmp_path / "suvr.nii.gz", tmp_path / "out" / "result.nii.gz", device=torch.device("cpu"),
                          extra={**FAST, "model_path": str(tau_trained / "model.pt"), "severity_path": None})
    x, res = nib.load(tmp_path / "suvr.nii.gz"), nib.load(result)
    assert res.shape == x.shape and res.get_fdata().min() >= 0  # the map, not a reconstruction
    assert not (tmp_path / "out" / "anomaly.nii.gz").exists()  # it was the newest file, moved to the result
