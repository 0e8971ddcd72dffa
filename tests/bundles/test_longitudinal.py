"""The brain bundles' longitudinal switch (configs/longitudinal.json): a scan-conditioned model trained on pairs of
a subject's visits, warm-started from the cross-sectional weights, and run by the progression bundle."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.bundle_helpers import BRAIN_LDM, BRAIN_NET, BRAIN_PROG, BRAIN_TINY, cfg
from monai.bundle import run as bundle_run

from monai_pie.bundle_tools import load_bundle_model, parse_bundle
from monai_pie.utils.errors import root_cause

OVERLAY = "longitudinal.json"
EXAMPLE = BRAIN_PROG / "docs" / "example_t1.nii.gz"


def overlay(bundle) -> dict:
    return {k: v for k, v in json.loads((bundle / "configs" / OVERLAY).read_text()).items() if not k.startswith("_")}


def test_pair_training_writes_its_own_weights_from_the_cross_sectional_start(longitudinal_trained):
    ckpt, before = longitudinal_trained
    assert {"model_longitudinal.pt", "model_longitudinal_best.pt",
            "model_longitudinal_checkpoint_last.pt"} <= {p.name for p in ckpt.iterdir()}
    for name, data in before.items():  # the cross-sectional run's files are left as they were
        assert (ckpt / name).read_bytes() == data, name
    long, cross = (torch.load(ckpt / n, weights_only=True) for n in ("model_longitudinal.pt", "model.pt"))
    w_long, w_cross = long["unet.conv_in.conv.weight"], cross["unet.conv_in.conv.weight"]
    assert w_long.shape[1] == 2 * w_cross.shape[1]  # the scan latent's channels were added
    assert w_long[:, w_cross.shape[1]:].abs().max() > 0  # and trained from their zero start
    ae = [k for k in cross if k.startswith("autoencoder.")]
    assert ae and all(torch.equal(long[k], cross[k]) for k in ae)  # one frozen autoencoder
    assert float(long["scale_factor"]) == float(cross["scale_factor"])


def test_the_progression_bundle_runs_the_longitudinal_weights(longitudinal_trained, tmp_path):
    ckpt, _ = longitudinal_trained
    common = dict(BRAIN_NET, bundle_root=str(BRAIN_PROG), ckpt_dir=str(ckpt), num_rounds=2, num_inference_steps=4,
                  progress=False, age=70.0, source_stage=0.2, output_dtype="float32")
    runs, summaries = {}, {}
    for name, stage, extra in (("ad", 0.9, {}), ("null", 0.2, {}), ("older", 0.2, {"target_age": 80.0})):
        bundle_run(config_file=cfg(BRAIN_PROG, "inference.json", OVERLAY), output_dir=str(tmp_path / name),
                   target_stage=stage, **common, **extra)
        summaries[name] = json.loads((tmp_path / name / "progression.json").read_text())
        runs[name] = [nib.load(f).get_fdata() for f in summaries[name]["frames"]]
    x0 = nib.load(EXAMPLE).get_fdata()
    assert all(np.array_equal(f, runs["null"][0]) for f in runs["null"])  # toward its own stage: the input itself
    assert np.allclose(runs["null"][0], x0, atol=1e-4 * np.abs(x0).max())
    # toward AD the frames move (a tiny one-epoch net barely responds to the stage, so only "moves" is asserted here;
    # the size of the response is the validation's business)
    assert np.isfinite(runs["ad"][-1]).all() and np.abs(runs["ad"][-1] - runs["ad"][0]).max() > 0
    # the age-only edit: own stage, ten years older, is no longer the identity
    assert summaries["older"]["target"]["age"] == 80.0 and summaries["null"]["target"]["age"] == 70.0
    assert np.abs(runs["older"][-1] - runs["older"][0]).max() > 0


def test_the_longitudinal_edit_needs_the_inputs_own_stage(longitudinal_trained, tmp_path):
    ckpt, _ = longitudinal_trained
    with pytest.raises(Exception) as info:
        bundle_run(config_file=cfg(BRAIN_PROG, "inference.json", OVERLAY), bundle_root=str(BRAIN_PROG),
                   ckpt_dir=str(ckpt), output_dir=str(tmp_path / "out"), progress=False, num_inference_steps=4,
                   **BRAIN_NET)
    assert "source_stage" in str(root_cause(info.value))


def test_both_overlays_describe_one_model():
    ldm, prog = overlay(BRAIN_LDM), overlay(BRAIN_PROG)
    for key in ("condition_keys", "condition_ranges", "conditioner_def", "unet_def#in_channels"):
        assert ldm[key] == prog[key], key
    parser = parse_bundle(BRAIN_PROG, prog)
    assert parser.get_parsed_content("model_path").endswith("/models/model_longitudinal.pt")
    assert parser["edit_mode"] == "counterfactual"


def test_shipped_longitudinal_weights_load_and_share_the_default_autoencoder():
    loaded = load_bundle_model(BRAIN_PROG, overrides=overlay(BRAIN_PROG))
    assert loaded["model_path"].endswith("model_longitudinal.pt")
    default = torch.load(BRAIN_PROG / "models" / "model.pt", weights_only=True)
    state = loaded["network"].state_dict()
    ae = [k for k in default if k.startswith("autoencoder.")]
    assert ae and all(torch.allclose(state[k], default[k].float(), atol=1e-3, rtol=1e-3) for k in ae)
    assert state["unet.conv_in.conv.weight"].shape[1] == 2 * default["unet.conv_in.conv.weight"].shape[1]


def test_the_overlay_edits_with_the_validated_settings():
    """The overlay's edit is the frozen validation mode (strength, guidance, rounds, mode, composition) of the settings
    the published report was made with, at the step count whose parity with it was measured, so a user gets what the
    report validated (settings tuned since, and not yet evaluated, do not reach the bundle)."""
    import hashlib
    from pathlib import Path

    from monai_pie.validation.settings import ProgressionSettings

    docs = Path(__file__).resolve().parents[2] / "docs" / "validation"
    sha = json.loads((docs / "brain_progression.json").read_text())["params"]["settings_sha256"]
    evaluated = [p for p in docs.glob("brain_settings*.json") if hashlib.sha256(p.read_bytes()).hexdigest() == sha]
    assert len(evaluated) == 1, "the report's settings file is missing from docs/validation"
    frozen = json.loads(evaluated[0].read_text())["modes"]["longitudinal counterfactual (tuned)"]
    got = ProgressionSettings.from_config(parse_bundle(BRAIN_PROG, overlay(BRAIN_PROG)).config).as_dict()
    want = {k: v for k, v in frozen.items() if k not in ("config", "num_inference_steps")}
    assert {k: got.get(k) for k in want} == want and got.get("bounded_change_mm") == frozen.get("bounded_change_mm")
    assert got["num_inference_steps"] == 10  # benchmarks/results/few_step.md: parity with the frozen 50
