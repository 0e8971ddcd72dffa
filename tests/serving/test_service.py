"""A task loaded once and run per request, on the shipped weights and example images with tiny settings: results
on the input's grid, every frame as a 4D NIfTI, errors that name the problem, nothing left behind, inputs untouched."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.bundle_helpers import BRAIN_LDM, BRAIN_PROG, CXR_PROG, TAU

from monai_pie.data import load_2d_image
from monai_pie.serving import RequestError, TaskService

FAST = {"num_inference_steps": 4, "num_rounds": 2}


@pytest.fixture(scope="module")
def brain_progression():
    return TaskService("brain_progression", device="cpu")


@pytest.fixture(scope="module")
def cxr_progression():
    return TaskService("cxr_progression", device="cpu")


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _leftovers(task: str) -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"monai_pie_{task}_*")}


def test_brain_progression_final_frame_and_all_frames_on_the_input_grid(brain_progression, tmp_path):
    image = tmp_path / "t1.nii.gz"
    shutil.copy(BRAIN_PROG / "docs" / "example_t1.nii.gz", image)
    before, runs_before = _digest(image), _leftovers("brain_progression")
    final = brain_progression.run(image, {**FAST, "target_diagnosis": "AD"})
    every = brain_progression.run(image, {**FAST, "target_diagnosis": "AD", "frames": "all"})
    x = nib.load(image)
    out = nib.load(final.path)
    assert out.shape == x.shape and np.allclose(out.affine, x.affine)
    assert final.frames is None and final.path == final.final
    change = np.abs(out.get_fdata() - x.get_fdata())
    assert np.isfinite(change).all() and change.max() > 0.01 * np.ptp(x.get_fdata())
    stack = nib.load(every.path)
    assert stack.shape == (*x.shape, FAST["num_rounds"] + 1) and np.allclose(stack.affine, x.affine)
    assert np.allclose(stack.get_fdata()[..., -1], nib.load(every.final).get_fdata(), atol=1e-4)  # same seed
    assert np.allclose(stack.get_fdata()[..., -1], out.get_fdata(), atol=1e-4)
    first = brain_progression.run(image, {**FAST, "target_diagnosis": "AD", "frames": "1"})
    assert np.allclose(nib.load(first.path).get_fdata(), stack.get_fdata()[..., 1], atol=1e-4)  # a chosen frame
    assert not np.allclose(stack.get_fdata()[..., 1], stack.get_fdata()[..., 2], atol=1e-4)
    first.path.unlink()
    assert final.info["params"]["target_diagnosis"] == "AD" and final.info["summary"]["target"]["stage"] == 0.9
    assert "frames" not in final.info["summary"]  # no paths into the removed run folder
    assert _digest(image) == before and _leftovers("brain_progression") == runs_before
    for result in (final, every):
        for f in result.files():
            f.unlink()


def test_the_network_is_loaded_once_and_reused(brain_progression, monkeypatch, tmp_path):
    from monai_pie.engines import weights

    calls = []
    monkeypatch.setattr(weights, "load_weights", lambda *a, **k: calls.append(a) or {})
    network = brain_progression.network
    params_before = {k: v.clone() for k, v in network.state_dict().items()}
    result = brain_progression.run(BRAIN_PROG / "docs" / "example_t1.nii.gz", {**FAST, "num_rounds": 1})
    assert calls == [] and brain_progression.network is network  # no weight file read per request
    assert all(torch.equal(v, params_before[k]) for k, v in network.state_dict().items())
    result.final.unlink()


@pytest.mark.parametrize("params, words", [
    ({"num_rounds": 0}, r"`num_rounds` must be in \[1, 50\]"),
    ({"age": 20}, r"`age` must be in \[40, 100\]"),  # the conditioner's trained range
    ({"target_diagnosis": "dementia"}, r"`target_diagnosis` must be one of \['CN', 'MCI', 'AD'\]"),
    ({"num_round": 2}, "did you mean 'num_rounds'"),
    ({"colour": "red"}, "has no parameter 'colour'"),
    ({"frames": "last"}, r"`frames` must be one of \['final', 'all'\] or a whole number >= 0"),
    ({"frames": 3, "num_rounds": 2}, "`frames` 3 does not exist: 2 rounds give frames 0 to 2"),
])
def test_bad_parameters_are_request_errors(brain_progression, params, words):
    with pytest.raises(RequestError, match=words):
        brain_progression.run(BRAIN_PROG / "docs" / "example_t1.nii.gz", params)


def test_lenient_parsing_ignores_foreign_keys_but_not_typos(brain_progression):
    values = brain_progression.parse({"model": "x", "client_id": "y", "num_rounds": "3"}, strict=False)
    assert values["num_rounds"] == 3
    with pytest.raises(RequestError, match="did you mean 'strength'"):
        brain_progression.parse({"strenght": 0.5}, strict=False)


def test_bad_images_are_request_errors(brain_progression, tmp_path):
    with pytest.raises(RequestError, match="not found"):
        brain_progression.run(tmp_path / "missing.nii.gz", FAST)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(RequestError, match="broken.nii.gz"):
        brain_progression.run(broken, FAST)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40), np.float32), np.eye(4)), flat)
    with pytest.raises(RequestError):
        brain_progression.run(flat, FAST)


def test_cxr_progression_on_a_png_and_its_frames(cxr_progression):
    image = CXR_PROG / "docs" / "example_cxr.png"
    result = cxr_progression.run(image, {**FAST, "frames": "all", "prompt": "A chest X-ray image, pleural effusion"})
    x = load_2d_image(image)
    final = load_2d_image(result.final)
    assert result.final.suffix == ".png" and final.shape == x.shape and 0 < np.abs(final - x).max()
    stack = nib.load(result.frames).get_fdata()
    assert stack.shape == (x.shape[1], x.shape[0], 1, FAST["num_rounds"] + 1)
    assert np.allclose(stack[..., 0, -1].T, final, atol=1e-4) and np.allclose(stack[..., 0, 0].T, x, atol=1e-4)
    with pytest.raises(RequestError, match="unknown finding 'fracture'"):
        cxr_progression.run(image, {**FAST, "prompt": "A chest X-ray image, fracture"})
    for f in result.files():
        f.unlink()


def test_generation_tasks():
    brain = TaskService("brain_generation", device="cpu")
    result = brain.run(BRAIN_LDM / "docs" / "example_t1.nii.gz", {"num_inference_steps": 3, "age": 80, "stage": 0.9})
    img = nib.load(result.path)
    assert img.shape == (64, 80, 64) and np.isfinite(img.get_fdata()).all() and img.get_fdata().std() > 0.01
    assert result.info["summary"]["covariates"] == {"age": 80.0, "sex": 0, "stage": 0.9}
    cxr = TaskService("cxr_text_to_image", device="cpu")
    a = cxr.run(None, {"num_inference_steps": 3, "prompt": "A chest X-ray image, cardiomegaly", "seed": 1})
    b = cxr.run(None, {"num_inference_steps": 3, "prompt": "A chest X-ray image, cardiomegaly", "seed": 1})
    c = cxr.run(None, {"num_inference_steps": 3, "prompt": "A chest X-ray image, cardiomegaly", "seed": 2})
    xa, xb, xc = (load_2d_image(r.path) for r in (a, b, c))
    assert xa.shape == (64, 64) and np.array_equal(xa, xb) and not np.array_equal(xa, xc)  # the seed decides
    for r in (result, a, b, c):
        r.path.unlink()


def test_tau_anomaly_map_on_the_input_grid():
    service = TaskService("tau_anomaly", device="cpu")
    image = TAU / "docs" / "example_tau_suvr.nii.gz"
    result = service.run(image, {"num_inference_steps": 5, "t0": 0.4})
    pet, amap = nib.load(image), nib.load(result.path)
    assert amap.shape == pet.shape and np.allclose(amap.affine, pet.affine)
    assert amap.get_fdata().min() >= 0 and np.isfinite(amap.get_fdata()).all() and amap.get_fdata().max() > 0
    assert set(result.info["summary"]["regional"]) >= {"entorhinal", "frontal"}
    with pytest.raises(RequestError, match="`anomaly_map` must be one of"):
        service.run(image, {"anomaly_map": "zscore"})
    result.path.unlink()


def test_a_compiled_server_asks_the_bundle_for_its_compiled_denoiser(brain_progression, monkeypatch):
    """``compile_denoiser`` reaches the bundle of every request where the bundle has the switch, and a bundle without
    it is served uncompiled with a warning that says so."""
    from monai_pie.serving import service as service_module

    compiled = TaskService("brain_progression", device="cpu", compile_denoiser=True)
    seen = []

    def capture(root, overrides):
        seen.append(dict(overrides))
        raise RuntimeError("stop after parsing")

    monkeypatch.setattr(service_module, "parse_bundle", capture)
    image = BRAIN_PROG / "docs" / "example_t1.nii.gz"
    for served in (compiled, brain_progression):
        with pytest.raises(RuntimeError, match="stop after parsing"):
            served.run(image, FAST)
    assert seen[0]["compile_denoiser"] is True and "compile_denoiser" not in seen[1]
    monkeypatch.undo()
    parse = service_module.parse_bundle

    def without_switch(root, overrides=None):  # a bundle of the user's own that predates the switch
        parser = parse(root, overrides)
        parser.config.pop("compile_denoiser")
        return parser

    monkeypatch.setattr(service_module, "parse_bundle", without_switch)
    with pytest.warns(UserWarning, match="no `compile_denoiser` switch"):
        plain = TaskService("cxr_progression", device="cpu", compile_denoiser=True)
    assert not plain.compile_denoiser


def test_the_label_apps_compile_option_must_be_a_yes_or_no():
    pytest.importorskip("monailabel")
    from monai_pie.serving.label import _flag

    assert _flag("true", "compile_denoiser") and _flag("Yes", "x") and not _flag("false", "x") and not _flag("0", "x")
    with pytest.raises(ValueError, match="--conf compile_denoiser must be true or false, got 'fast'"):
        _flag("fast", "compile_denoiser")
