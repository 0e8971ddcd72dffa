"""brain_mri_ldm and brain_mri_progression driven through monai.bundle with tiny overrides (model-zoo CI style)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import cfg, cli_overrides, torchrun_bundle
from monai.bundle import run as bundle_run

from monai_pie.apps.brain_io import load_to_model_grid
from monai_pie.data import synthesize_brain_cohort

ROOT = Path(__file__).resolve().parents[1]
LDM = ROOT / "bundles" / "brain_mri_ldm"
PROG = ROOT / "bundles" / "brain_mri_progression"
TINY = {"image_size": [32, 32, 32], "ae_channels": [16, 16, 16], "unet_channels": [16, 16, 32],
        "ae_patch_size": [32, 32, 32], "num_workers": 0}



@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "brain"
    synthesize_brain_cohort(out, num_subjects=8, num_longitudinal=0, split=(0.5, 0.25, 0.25), seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory) -> Path:
    """Both stages trained for one epoch with tiny networks; returns the checkpoint folder."""
    ckpt = tmp_path_factory.mktemp("run") / "models"
    common = dict(TINY, dataset_dir=str(cohort), ckpt_dir=str(ckpt), tf_dir=str(ckpt.parent / "runs"),
                  bundle_root=str(LDM), max_epochs=1, val_interval=1)
    bundle_run(config_file=cfg(LDM, "inference.json", "train_autoencoder.json"), **common)
    assert (ckpt / "autoencoder.pt").is_file() and (ckpt / "autoencoder_checkpoint_last.pt").is_file()
    bundle_run(config_file=cfg(LDM, "inference.json", "train_diffusion.json"), **common)
    return ckpt


def test_training_writes_final_best_and_resume_checkpoints(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"autoencoder.pt", "autoencoder_best.pt", "model.pt", "model_best.pt", "diffusion_checkpoint_last.pt"} <= names
    state = torch.load(trained / "model.pt", weights_only=True)
    assert "scale_factor" in state and float(state["scale_factor"]) != 1.0  # computed from the data
    assert any(k.startswith("conditioner.") for k in state) and any(k.startswith("autoencoder.") for k in state)
    assert not any(p.name.endswith(".tmp") for p in trained.iterdir())  # atomic writes leave no temp files


def test_generation_writes_volumes_on_the_model_grid(trained, tmp_path):
    out = tmp_path / "gen"
    bundle_run(config_file=cfg(LDM, "inference.json"), bundle_root=str(LDM), model_path=str(trained / "model.pt"),
               output_dir=str(out), num_samples=2, num_inference_steps=3, **TINY)
    summary = json.loads((out / "generation.json").read_text())
    assert len(summary["samples"]) == 2
    vol = nib.load(summary["samples"][0])
    assert vol.shape == (32, 32, 32) and np.isfinite(vol.get_fdata()).all()
    assert np.allclose(np.abs(np.diag(vol.affine)[:3]), json.loads((LDM / "configs" / "inference.json").read_text())["pixdim"])


def test_progression_bundle_outputs_on_the_input_grid(trained, tmp_path):
    out = tmp_path / "prog"
    bundle_run(config_file=cfg(PROG, "inference.json"), bundle_root=str(PROG), model_path=str(trained / "model.pt"),
               output_dir=str(out), num_rounds=2, num_inference_steps=4, anchor="previous", blend_in=0.4,
               **{k: TINY[k] for k in ("image_size", "ae_channels", "unet_channels")})
    summary = json.loads((out / "progression.json").read_text())
    assert len(summary["rounds"]) == 2 and summary["target"]["diagnosis"] == "AD"
    assert summary["params"]["anchor"] == "previous" and summary["params"]["blend_in"] == 0.4  # overrides reach PIE
    example = nib.load(PROG / "docs" / "example_t1.nii.gz")
    f0, f2 = nib.load(out / "frame_00.nii.gz"), nib.load(out / "frame_02.nii.gz")
    assert f2.shape == example.shape and np.allclose(f2.affine, example.affine)
    assert np.allclose(f0.get_fdata(), example.get_fdata(), atol=1e-5)  # frame 0 is the input
    changed = np.abs(f2.get_fdata() - example.get_fdata()) > 1e-6
    assert 0 < changed.mean() < 0.5  # the model-grid field of view changed, the rest of the head did not
    for name in ("progression_strip.png", "progression.gif", "change_01.nii.gz"):
        assert (out / name).is_file()


def test_interrupted_training_resumes_from_the_last_checkpoint(cohort, tmp_path):
    ckpt = tmp_path / "models"
    args = cli_overrides(dict(TINY, dataset_dir=str(cohort), ckpt_dir=str(ckpt), tf_dir=str(tmp_path / "runs"),
                              bundle_root=str(LDM)))
    base = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
            json.dumps(cfg(LDM, "inference.json", "train_autoencoder.json"))] + args
    first = subprocess.run(base + ["--max_epochs", "1"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(base + ["--max_epochs", "2", "--resume", "True"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stdout + second.stderr
    assert "Epoch: 2/2" in log and "Epoch: 1/2" not in log  # continued at epoch 2 instead of starting over
    ckpt_state = torch.load(ckpt / "autoencoder_checkpoint_last.pt", weights_only=False)
    assert ckpt_state["trainer"]["iteration"] == 2 * ckpt_state["trainer"]["epoch_length"]


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_multi_gpu_configs_run_with_torchrun_on_cpu(stage, cohort, trained, tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(trained / "autoencoder.pt", ckpt / "autoencoder.pt")
    configs = cfg(LDM, "inference.json", f"train_{stage}.json", f"multi_gpu_train_{stage}.json")
    proc = torchrun_bundle(configs, dict(TINY, dataset_dir=str(cohort), ckpt_dir=str(ckpt), tf_dir=str(tmp_path / "runs"),
                                      bundle_root=str(LDM), max_epochs=1, val_interval=1))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    final = "autoencoder.pt" if stage == "autoencoder" else "model.pt"
    assert (ckpt / final).is_file()


def test_both_bundles_define_the_same_network():
    a = json.loads((LDM / "configs" / "inference.json").read_text())
    b = json.loads((PROG / "configs" / "inference.json").read_text())
    keys = ["autoencoder_def", "unet_def", "conditioner_def", "network_def", "noise_scheduler", "pixdim", "image_size",
            "ae_channels", "unet_channels", "latent_channels", "context_dim", "condition_keys", "condition_ranges"]
    for k in keys:
        assert a[k] == b[k], k


# ----------------------------------------------------------------------------------------------- bad input
def write(path: Path, data: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4) * 2 if affine is None else affine), str(path))
    return str(path)


def test_bad_inputs_get_clear_errors(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.random((20, 24, 20))
    good = write(tmp_path / "t1.nii.gz", vol)
    with pytest.raises(ValueError, match="3D image"):
        load_to_model_grid(write(tmp_path / "slice.nii.gz", vol[:, :, 0]), (2, 2, 2), (16, 16, 16))
    with pytest.raises(ValueError, match="channel"):
        load_to_model_grid(write(tmp_path / "multi.nii.gz", rng.random((20, 24, 20, 3))), (2, 2, 2), (16, 16, 16))
    nan = vol.copy()
    nan[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_to_model_grid(write(tmp_path / "nan.nii.gz", nan), (2, 2, 2), (16, 16, 16))
    with pytest.raises(ValueError, match="empty"):
        load_to_model_grid(good, (2, 2, 2), (16, 16, 16), roi_path=write(tmp_path / "roi0.nii.gz", np.zeros_like(vol)))
    with pytest.raises(ValueError, match="share the voxel grid"):
        load_to_model_grid(good, (2, 2, 2), (16, 16, 16), roi_path=write(tmp_path / "roi1.nii.gz", np.ones((10, 10, 10))))
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_to_model_grid(tmp_path / "missing.nii.gz", (2, 2, 2), (16, 16, 16))
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="cannot read image"):
        load_to_model_grid(tmp_path / "corrupt.nii.gz", (2, 2, 2), (16, 16, 16))


def test_missing_or_corrupt_weights_get_clear_errors(tmp_path):
    from monai_pie.engines import load_weights

    with pytest.raises(Exception) as exc:  # monai.bundle wraps it; the cause names the file and what to do
        bundle_run(config_file=cfg(PROG, "inference.json"), bundle_root=str(PROG),
                   model_path=str(tmp_path / "nope.pt"), output_dir=str(tmp_path / "o"))
    err = exc.value
    while err.__cause__ is not None and not isinstance(err, FileNotFoundError):
        err = err.__cause__
    assert isinstance(err, FileNotFoundError) and "weights not found" in str(err) and "nope.pt" in str(err)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="unreadable"):
        load_weights(tmp_path / "bad.pt", "model")


def test_progression_target_validation():
    from monai_pie.apps.brain import target_stage

    assert target_stage(diagnosis="ad") == 0.9 and target_stage(stage=0.3) == 0.3
    with pytest.raises(ValueError, match="target_diagnosis"):
        target_stage(diagnosis="FTD")
    with pytest.raises(ValueError, match="target_stage"):
        target_stage(stage=1.5)


def test_validation_report_runs_end_to_end(cohort, trained, tmp_path):
    from monai_pie.apps.brain_validation import validate_brain
    from monai_pie.inferers.progression import SWEEP_SETTINGS

    res = validate_brain(str(cohort), model_path=str(trained / "model.pt"), bundle_dir=str(LDM), output_dir=str(tmp_path),
                         num_subjects=1, num_rounds=2, num_inference_steps=3, num_samples=2,
                         overrides={k: TINY[k] for k in ("image_size", "ae_channels", "unet_channels")})
    report = Path(res["report"]).read_text()
    assert "Markers per round" in report and "MS-SSIM" in report and "| 2 |" in report
    data = json.loads((tmp_path / "validation" / "brain_progression.json").read_text())
    assert len(data["progression"]["subjects"][0]["markers"]) == 3
    sweep = data["progression"]["sweep"]
    assert [(r["strength"], r["blend_in"], r["anchor"]) for r in sweep] == [tuple(s) for s in SWEEP_SETTINGS]
    assert all(set(r["rho_median"]) == set(data["progression"]["subjects"][0]["rho"]) for r in sweep)
    assert "PIE settings" in report and report.count("| previous |") >= 2
    work = tmp_path / "validation" / "brain_work"
    assert (work / "sweep_0.5_0.75_original").is_dir() and not (work / "sweep_0.3_0.3_previous").exists()  # reused
    assert "--num_rounds 2 --num_inference_steps 3 --num_samples 2" in report  # the command reproduces the run
    assert (tmp_path / "figures" / "brain_progression_strip.png").is_file()


@pytest.mark.parametrize("stage, module", [("autoencoder", "autoencoder_def"), ("diffusion", "network_def")])
def test_sparse_backprop_is_switchable_from_the_training_configs(stage, module):
    from monai.bundle import ConfigParser

    from monai_pie.networks import sparse_backprop_modules

    for enabled in (False, True):
        parser = ConfigParser()
        parser.read_config(cfg(LDM, "inference.json", f"train_{stage}.json"))
        parser.update(dict(TINY, sparse_backprop=enabled, bundle_root=str(LDM)))
        handler = parser.get_parsed_content("sparse_backprop_handler")
        net = parser.get_parsed_content(module)
        assert (handler is not None) == enabled
        assert bool(sparse_backprop_modules(net)) == enabled  # converted only when switched on


def test_progression_defaults_are_the_validated_settings():
    import inspect

    from monai_pie.apps.brain import run_brain_progression
    from monai_pie.apps.brain_validation import validate_brain

    conf = json.loads((PROG / "configs" / "inference.json").read_text())
    for fn in (run_brain_progression, validate_brain):
        defaults = inspect.signature(fn).parameters
        assert {k: defaults[k].default for k in ("strength", "blend_in", "anchor")} == \
            {k: conf[k] for k in ("strength", "blend_in", "anchor")}
    # the setting with monotone markers in docs/validation/brain_progression.md (PIE's 0.5 / 0.75 / original is not)
    assert (conf["strength"], conf["blend_in"], conf["anchor"]) == (0.3, 0.3, "previous")
