"""cxr_progression: PIE on radiographs at the input's resolution, ROIs, datalists, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.bundle_helpers import CXR_LDM, CXR_NET, CXR_PROG, cfg
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run
from PIL import Image
from scipy import ndimage

from monai_pie.data import load_2d_image
from monai_pie.utils.errors import root_cause


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    parser = ConfigParser()
    parser.read_config(str(CXR_PROG / "configs" / "inference.json"))
    parser.update(CXR_NET)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # MONAI zero-inits output projections; perturb so the prompt reaches the output
        for p in net.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny_cxr") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def progress(model: Path, out: Path, **overrides) -> dict:
    settings = dict(CXR_NET, bundle_root=str(CXR_PROG), model_path=str(model), output_dir=str(out), num_rounds=1,
                    num_inference_steps=4, progress=False)
    bundle_run(config_file=cfg(CXR_PROG, "inference.json"), **{**settings, **overrides})
    path = out / "progression.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def error_of(model: Path, tmp_path: Path, **overrides) -> BaseException:
    with pytest.raises(Exception) as info:
        progress(model, tmp_path / "err", **overrides)
    return root_cause(info.value)


def png(path: Path, arr: np.ndarray, mode: str = "L") -> Path:
    Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).convert(mode).save(path)
    return path


def test_progression_frames_at_input_resolution_with_roi_respected(cxr_trained, tmp_path):
    src = load_2d_image(CXR_PROG / "docs" / "example_cxr.png")
    image = png(tmp_path / "input.png", np.asarray(Image.fromarray(src).resize((40, 48))))  # non-square, not 32
    out = tmp_path / "prog"
    summary = progress(cxr_trained / "model.pt", out, image=str(image), num_rounds=2, anchor="original",
                       strength=0.5, blend_in=0.75)  # PIE's blend: a clear in/out contrast in 2 rounds
    assert len(summary["rounds"]) == 2 and summary["prompt"].startswith("A chest X-ray image")
    assert summary["params"]["anchor"] == "original" and summary["params"]["blend_in"] == 0.75  # overrides reach PIE
    f0, f2 = load_2d_image(out / "frame_00.png"), load_2d_image(out / "frame_02.png")
    assert f0.shape == f2.shape == (48, 40)
    assert np.abs(f0 - load_2d_image(image)).max() < 1e-4  # frame 0 is the input
    roi = load_2d_image(out / "roi.png") > 0.5
    change = np.abs(f2 - f0)
    far = ~ndimage.binary_dilation(roi, iterations=6)  # beyond one latent cell of the ROI's edge
    assert 0.2 < roi.mean() < 0.8 and far.sum() > 50
    assert change[roi].mean() > 2 * change[far].mean()  # edits stay in the thorax
    final = nib.load(out / "frame_02.nii.gz")  # the final frame also as a one-slice NIfTI, the newest one
    assert final.shape == (40, 48, 1) and np.allclose(final.get_fdata()[..., 0].T, f2, atol=1e-4)
    for name in ("progression_strip.png", "progression.gif"):
        assert (out / name).is_file()


def test_a_one_slice_nifti_input_comes_back_on_its_own_grid(tiny_model, tmp_path):
    x = load_2d_image(CXR_PROG / "docs" / "example_cxr.png")
    affine = np.diag([0.3, 0.3, 1.0, 1.0])
    nib.save(nib.Nifti1Image((x.T * 1000)[:, :, None].astype(np.float32), affine), tmp_path / "cxr.nii.gz")
    progress(tiny_model, tmp_path / "out", image=str(tmp_path / "cxr.nii.gz"))
    final = nib.load(tmp_path / "out" / "frame_01.nii.gz")
    assert final.shape == (128, 128, 1) and np.allclose(final.affine, affine)
    f1 = load_2d_image(tmp_path / "out" / "frame_01.png")
    assert np.allclose(final.get_fdata()[..., 0].T, f1 * 1000 * (x.max() - x.min()) + 1000 * x.min(), atol=0.05)


def test_progression_with_a_mask_file_and_its_errors(tiny_model, tmp_path):
    image = png(tmp_path / "cxr.png", np.random.default_rng(0).random((36, 36)))
    mask = np.zeros((36, 36))
    mask[4:14, 4:14] = 1
    m = png(tmp_path / "m.png", mask)
    s = progress(tiny_model, tmp_path / "out", image=str(image), roi=str(m))
    change = np.abs(load_2d_image(s["frames"][1]) - load_2d_image(s["frames"][0]))
    assert change[20:, 20:].mean() < 0.5 * change[4:14, 4:14].mean()
    pasted = progress(tiny_model, tmp_path / "pasted", image=str(image), roi=str(m), composite_background=True)
    change = np.abs(load_2d_image(pasted["frames"][1]) - load_2d_image(pasted["frames"][0]))
    assert change[20:, 20:].max() < 1e-4 < change[4:14, 4:14].max()  # outside pasted from the input
    short = png(tmp_path / "s.png", mask[:30])
    assert "draw the mask on the image" in str(error_of(tiny_model, tmp_path, image=str(image), roi=str(short)))
    empty = png(tmp_path / "z.png", mask * 0)
    assert "empty" in str(error_of(tiny_model, tmp_path, image=str(image), roi=str(empty)))
    assert "not found" in str(error_of(tiny_model, tmp_path, image=str(tmp_path / "missing.png")))
    assert "roi_region" in str(error_of(tiny_model, tmp_path, image=str(image), roi_region="kidney"))


def test_rgb_file_is_read_as_grayscale_and_progresses(tiny_model, tmp_path):
    rgb = png(tmp_path / "rgb.png", np.random.default_rng(1).random((32, 32)), mode="RGB")
    s = progress(tiny_model, tmp_path / "o", image=str(rgb))
    assert load_2d_image(s["frames"][1]).shape == (32, 32)


@pytest.mark.parametrize(("overrides", "match"), [
    ({"prompt": "A chest X-ray image, dragon scales"}, "dragon scales"),
    ({"image_size": [30, 30]}, "round-trip"),
    ({"num_rounds": 0}, "`num_rounds` must be an integer >= 1"),
    ({"anchor": "first"}, "`anchor` must be one of"),
])
def test_bad_settings_get_clear_errors(overrides, match, tiny_model, tmp_path):
    assert match in str(error_of(tiny_model, tmp_path, **overrides))


def test_missing_weights_name_the_file_and_the_fix(tmp_path):
    err = error_of(tmp_path / "nope.pt", tmp_path)
    assert isinstance(err, FileNotFoundError) and "nope.pt" in str(err) and "cxr_text_ldm" in str(err)


def test_progression_over_a_datalist_uses_per_item_prompts(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(2)
    png(data / "a.png", rng.random((32, 32)))
    png(data / "b.png", rng.random((32, 32)))
    (data / "list.json").write_text(json.dumps({"test": [
        {"image": "a.png"}, {"image": "b.png", "prompt": "A chest X-ray image, edema"}]}))
    progress(tiny_model, tmp_path / "out", datalist_file=str(data / "list.json"), dataset_dir=str(data))
    prompts = {s: json.loads((tmp_path / "out" / s / "progression.json").read_text())["prompt"] for s in "ab"}
    assert prompts == {"a": "A chest X-ray image, cardiomegaly, pleural effusion", "b": "A chest X-ray image, edema"}
    params = json.loads((tmp_path / "out" / "a" / "progression.json").read_text())["params"]
    assert params["anchor"] == "previous" and params["blend_in"] == 0.3  # the validated defaults
    err = error_of(tiny_model, tmp_path, datalist_file=str(data / "nope.json"))
    assert isinstance(err, FileNotFoundError) and "datalist" in str(err)


def test_both_cxr_bundles_define_the_same_network():
    a = json.loads((CXR_LDM / "configs" / "inference.json").read_text())
    b = json.loads((CXR_PROG / "configs" / "inference.json").read_text())
    for k in ["autoencoder_def", "unet_def", "conditioner_def", "network_def", "noise_scheduler", "image_size",
              "ae_channels", "unet_channels", "latent_channels", "context_dim", "spatial_dims"]:
        assert a[k] == b[k], k
