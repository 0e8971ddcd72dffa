"""The brain bundles' rectified-flow switch (configs/rectified_flow.json): trained by the same training config, its
own checkpoint names, few-step generation and progression, strengths carried between schedules."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.bundle_helpers import BRAIN_LDM, BRAIN_NET, BRAIN_PROG, BRAIN_TINY, cfg
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run
from monai.networks.schedulers import RFlowScheduler

from monai_pie.bundle_tools import load_bundle_model, parse_bundle
from monai_pie.schedules import NoiseSchedule

OVERLAY = "rectified_flow.json"


def overlay(bundle) -> dict:
    return {k: v for k, v in json.loads((bundle / "configs" / OVERLAY).read_text()).items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def rflow_trained(brain_cohort, brain_trained, tmp_path_factory):
    """The diffusion stage trained one epoch with the overlay, in a folder that already holds a DDPM run."""
    ckpt = tmp_path_factory.mktemp("rflow_run") / "models"
    shutil.copytree(brain_trained, ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    bundle_run(config_file=cfg(BRAIN_LDM, "inference.json", "train_diffusion.json", OVERLAY),
               **dict(BRAIN_TINY, dataset_dir=str(brain_cohort), ckpt_dir=str(ckpt), tf_dir=str(ckpt.parent / "runs"),
                      bundle_root=str(BRAIN_LDM), max_epochs=1, val_interval=1))
    return ckpt, before


def test_the_switch_trains_a_flow_model_beside_the_ddpm_run_without_touching_it(rflow_trained):
    ckpt, before = rflow_trained
    names = {p.name for p in ckpt.iterdir()}
    assert {"model_rflow.pt", "model_rflow_best.pt", "model_rflow_checkpoint_last.pt"} <= names
    for name, data in before.items():  # the DDPM run's weights and resume state are left as they were
        assert (ckpt / name).read_bytes() == data, name
    flow, ddpm = (torch.load(ckpt / n, weights_only=True) for n in ("model_rflow.pt", "model.pt"))
    assert not torch.equal(flow["unet.out.2.conv.weight"], ddpm["unet.out.2.conv.weight"])


def test_the_default_training_keeps_its_checkpoint_names():
    parser = ConfigParser()
    parser.read_config(cfg(BRAIN_LDM, "inference.json", "train_diffusion.json"))
    parser["bundle_root"] = str(BRAIN_LDM)
    assert parser.get_parsed_content("checkpoint#final_filename") == "model.pt"
    assert parser.get_parsed_content("checkpoint#last_filename") == "diffusion_checkpoint_last.pt"
    assert parser.get_parsed_content("resumer#path").endswith("/diffusion_checkpoint_last.pt")
    assert parser.get_parsed_content("best_checkpoint#best_filename") == "model_best.pt"


def test_flow_weights_generate_and_progress_in_few_steps(rflow_trained, tmp_path):
    ckpt, _ = rflow_trained
    gen = tmp_path / "gen"
    bundle_run(config_file=cfg(BRAIN_LDM, "inference.json", OVERLAY), bundle_root=str(BRAIN_LDM), ckpt_dir=str(ckpt),
               output_dir=str(gen), num_samples=2, progress=False, **BRAIN_NET)
    summary = json.loads((gen / "generation.json").read_text())
    assert len(summary["samples"]) == 2 and np.isfinite(nib.load(summary["samples"][0]).get_fdata()).all()
    prog = tmp_path / "prog"
    bundle_run(config_file=cfg(BRAIN_PROG, "inference.json", OVERLAY), bundle_root=str(BRAIN_PROG), ckpt_dir=str(ckpt),
               output_dir=str(prog), num_rounds=2, progress=False, **BRAIN_NET)
    frames = json.loads((prog / "progression.json").read_text())["frames"]
    assert len(frames) == 3
    first, last = (nib.load(f).get_fdata() for f in (frames[0], frames[-1]))
    assert np.isfinite(last).all() and not np.allclose(first, last)


def test_bundles_read_the_weights_the_overlay_names(tmp_path):
    for bundle in (BRAIN_LDM, BRAIN_PROG):
        parser = parse_bundle(bundle, overlay(bundle))
        assert parser.get_parsed_content("model_path").endswith("/models/model_rflow.pt")
        assert isinstance(parser.get_parsed_content("noise_scheduler"), RFlowScheduler)
        assert parser["num_inference_steps"] <= 10
    with pytest.raises(Exception, match="model_rflow.pt"):  # a missing file is named, not silently replaced
        load_bundle_model(BRAIN_LDM, overrides={**overlay(BRAIN_LDM), "ckpt_dir": str(tmp_path)})


def test_progression_overlay_strength_matches_the_default_noise_level():
    default = parse_bundle(BRAIN_PROG)
    flow = parse_bundle(BRAIN_PROG, overlay(BRAIN_PROG))
    ref = NoiseSchedule.from_scheduler(default.get_parsed_content("noise_scheduler"))
    sched = NoiseSchedule.from_scheduler(flow.get_parsed_content("noise_scheduler"))
    assert flow["strength"] == pytest.approx(sched.matching_strength(default["strength"], ref), abs=1e-3)
    assert overlay(BRAIN_PROG)["noise_scheduler"] == overlay(BRAIN_LDM)["noise_scheduler"]  # one model, one schedule


@pytest.mark.parametrize("bundle", [BRAIN_LDM, BRAIN_PROG])
def test_shipped_flow_weights_load_and_share_the_default_autoencoder(bundle):
    loaded = load_bundle_model(bundle, overrides=overlay(bundle))
    assert loaded["model_path"].endswith("model_rflow.pt")
    default = torch.load(bundle / "models" / "model.pt", weights_only=True)
    state = loaded["network"].state_dict()
    ae = [k for k in default if k.startswith("autoencoder.")]
    assert ae and all(torch.equal(state[k], default[k].float()) for k in ae)  # one autoencoder, frozen in training
    assert not torch.equal(state["unet.out.2.conv.weight"], default["unet.out.2.conv.weight"].float())
