"""brain_mri_ldm: training through monai.bundle with tiny overrides (model-zoo CI style), exact resume, generation."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.bundle_helpers import BRAIN_LDM, BRAIN_NET, BRAIN_PROG, BRAIN_TINY, cfg, torchrun_training
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run


def train(stage: str, cohort: Path, ckpt: Path, **overrides) -> None:
    common = dict(BRAIN_TINY, dataset_dir=str(cohort), ckpt_dir=str(ckpt), tf_dir=str(ckpt.parent / "runs"),
                  bundle_root=str(BRAIN_LDM), val_interval=1)
    bundle_run(config_file=cfg(BRAIN_LDM, "inference.json", f"train_{stage}.json"), **{**common, **overrides})


def test_training_writes_final_best_and_resume_checkpoints(brain_trained):
    names = {p.name for p in brain_trained.iterdir()}
    assert {"autoencoder.pt", "autoencoder_best.pt", "model.pt", "model_best.pt", "diffusion_checkpoint_last.pt"} <= names
    state = torch.load(brain_trained / "model.pt", weights_only=True)
    assert "scale_factor" in state and float(state["scale_factor"]) != 1.0  # computed from the data
    assert any(k.startswith("conditioner.") for k in state) and any(k.startswith("autoencoder.") for k in state)
    assert not any(p.name.endswith(".tmp") for p in brain_trained.iterdir())  # atomic writes leave no temp files
    ckpt = torch.load(brain_trained / "diffusion_checkpoint_last.pt", weights_only=True)  # plain state only
    assert {"model", "optimizer", "trainer", "best", "rng"} <= set(ckpt)


def test_training_never_writes_into_the_shipped_models_folder():
    for stage in ("autoencoder", "diffusion"):
        parser = ConfigParser()
        parser.read_config(cfg(BRAIN_LDM, "inference.json", f"train_{stage}.json"))
        parser["bundle_root"] = str(BRAIN_LDM)
        assert Path(parser.get_parsed_content("ckpt_dir")) == BRAIN_LDM / "runs" / "checkpoints"
        assert parser["checkpoint"]["save_dir"] == parser["best_checkpoint"]["save_dir"] == "@ckpt_dir"


@pytest.mark.parametrize(("stage", "final"), [("autoencoder", "autoencoder.pt"), ("diffusion", "model.pt")])
def test_a_resumed_run_equals_the_uninterrupted_run(stage, final, brain_cohort, brain_trained, tmp_path):
    """Stopped after epoch 1 and resumed to 3, training gives the very weights of 3 epochs straight: the optimiser,
    the counters, the random-number states (shuffles, noise, timesteps, crops) and the best metric all resume."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for d in (straight, resumed):
        d.mkdir()
        shutil.copy(brain_trained / "autoencoder.pt", d / "autoencoder.pt")
    train(stage, brain_cohort, straight, max_epochs=3, adv_start_epoch=0)
    train(stage, brain_cohort, resumed, max_epochs=1, adv_start_epoch=0)
    train(stage, brain_cohort, resumed, max_epochs=3, adv_start_epoch=0, resume=True)
    a, b = torch.load(straight / final, weights_only=True), torch.load(resumed / final, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = torch.load(resumed / f"{stage}_checkpoint_last.pt", weights_only=True)["best"]["best_value"]
    assert best == torch.load(straight / f"{stage}_checkpoint_last.pt", weights_only=True)["best"]["best_value"]


def test_resume_says_where_it_resumes_and_refuses_what_it_cannot(brain_cohort, brain_trained, tmp_path, capfd):
    from monai_pie.utils.errors import root_cause

    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(brain_trained / "autoencoder.pt", ckpt / "autoencoder.pt")
    with pytest.raises(Exception) as info:
        train("diffusion", brain_cohort, ckpt, max_epochs=1, resume=True)
    assert "no checkpoint at" in str(root_cause(info.value))  # not a silent fresh start
    train("diffusion", brain_cohort, ckpt, max_epochs=1)
    (ckpt / ".diffusion_checkpoint_last.pt.x1y2.tmp").write_bytes(b"half a write")  # a killed write's leftover
    capfd.readouterr()
    train("diffusion", brain_cohort, ckpt, max_epochs=2, resume=True)
    log = "".join(capfd.readouterr())
    assert re.search(r"SupervisedTrainer - INFO - Engine run resuming from iteration [1-9]\d*, epoch 1 ", log), log[-3000:]
    state = torch.load(ckpt / "diffusion_checkpoint_last.pt", weights_only=True)["trainer"]
    assert state["iteration"] == 2 * state["epoch_length"]  # one more epoch, not two
    assert not list(ckpt.glob(".*.tmp"))  # cleaned up
    with pytest.raises(Exception) as info:
        train("diffusion", brain_cohort, ckpt, max_epochs=2, resume=True)
    assert "nothing to resume" in str(root_cause(info.value))


def test_a_checkpoint_holding_code_is_never_loaded(tmp_path):
    from monai_pie.engines import load_checkpoint

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match="never loaded"):
        load_checkpoint(tmp_path / "evil.pt", {"model": torch.nn.Linear(1, 1)})


def test_training_datalist_errors_name_the_file(tmp_path):
    from monai_pie.utils.errors import root_cause

    def error() -> str:
        with pytest.raises(Exception) as info:
            train("autoencoder", tmp_path, tmp_path / "m", max_epochs=1)
        return str(root_cause(info.value))

    assert "datalist.json" in error() and "not found" in error()
    (tmp_path / "datalist.json").write_text('{"training": [}')
    assert "datalist.json is not valid JSON" in error()
    (tmp_path / "datalist.json").write_text('{"training": [], "validation": [{"image": "a.nii.gz"}]}')
    assert "'training' list of datalist" in error()
    (tmp_path / "datalist.json").write_text('{"training": [{"label": "x"}]}')
    assert "lacks ['image']" in error()


def test_generation_writes_volumes_on_the_model_grid(brain_trained, tmp_path):
    out = tmp_path / "gen"
    bundle_run(config_file=cfg(BRAIN_LDM, "inference.json"), bundle_root=str(BRAIN_LDM),
               model_path=str(brain_trained / "model.pt"), output_dir=str(out), num_samples=3, batch_size=2,
               num_inference_steps=3, progress=False, **BRAIN_NET)
    summary = json.loads((out / "generation.json").read_text())
    assert len(summary["samples"]) == 3 and summary["covariates"]["stage"] == 0.0
    vol = nib.load(summary["samples"][0])
    assert vol.shape == (32, 32, 32) and np.isfinite(vol.get_fdata()).all()
    assert np.allclose(np.abs(np.diag(vol.affine)[:3]), json.loads((BRAIN_LDM / "configs" / "inference.json").read_text())["pixdim"])


def test_generation_rejects_impossible_covariates(brain_trained, tmp_path):
    with pytest.raises(Exception) as info:
        bundle_run(config_file=cfg(BRAIN_LDM, "inference.json"), bundle_root=str(BRAIN_LDM),
                   model_path=str(brain_trained / "model.pt"), output_dir=str(tmp_path), num_inference_steps=2,
                   covariates={"age": 70, "sex": 2, "stage": 0.5}, progress=False, **BRAIN_NET)
    from monai_pie.utils.errors import root_cause

    assert "`sex` must be one of [0, 1]" in str(root_cause(info.value))


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_multi_gpu_training_configs_run_with_torchrun_on_cpu(stage, brain_cohort, brain_trained, tmp_path):
    ckpt = torchrun_training(BRAIN_LDM, stage, BRAIN_TINY, brain_cohort, brain_trained, tmp_path)
    assert (ckpt / ("autoencoder.pt" if stage == "autoencoder" else "model.pt")).is_file()


@pytest.mark.parametrize(("stage", "module"), [("autoencoder", "autoencoder_def"), ("diffusion", "network_def")])
def test_sparse_backprop_is_switchable_from_the_training_configs(stage, module):
    from monai_pie.networks import sparse_backprop_modules

    for enabled in (False, True):
        parser = ConfigParser()
        parser.read_config(cfg(BRAIN_LDM, "inference.json", f"train_{stage}.json"))
        parser.update(dict(BRAIN_TINY, sparse_backprop=enabled, bundle_root=str(BRAIN_LDM)))
        handler = parser.get_parsed_content("sparse_backprop_handler")
        net = parser.get_parsed_content(module)
        assert (handler is not None) == enabled
        assert bool(sparse_backprop_modules(net)) == enabled  # converted only when switched on


@pytest.mark.parametrize("bundle, configs", [
    (BRAIN_LDM, ("inference.json", "train_autoencoder.json")),
    (BRAIN_LDM, ("inference.json", "train_diffusion.json")),
    (BRAIN_PROG, ("inference.json",)),
])
def test_1mm_overlay_gives_a_consistent_1mm_network(bundle, configs):
    parser = ConfigParser()
    parser.read_config(cfg(bundle, *configs, "pixdim_1mm.json"))
    parser["bundle_root"] = str(bundle)
    assert parser["pixdim"] == [1.0, 1.0, 1.0]
    size = parser["image_size"]
    assert all(s >= f for s, f in zip(size, (160, 200, 160)))  # at least the 2.5 mm grid's field of view (mm)
    net = parser.get_parsed_content("network_def").eval()
    latent = torch.randn(1, parser["latent_channels"], *(s // 4 for s in size))
    context = torch.randn(1, 1, parser["context_dim"])
    with torch.no_grad():  # the U-Net's two down/up-samplings fit the 1 mm latent (a size not divisible by 4 fails)
        out = net.unet(latent, torch.tensor([500]), context)
    assert out.shape == latent.shape
