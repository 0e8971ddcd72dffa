"""The `validate brain` report end to end with tiny settings, run through the bundles' own workflows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.bundle_helpers import BRAIN_LDM, BRAIN_NET, BRAIN_PROG

from monai_pie.validation import SWEEP_SETTINGS, ProgressionSettings
from monai_pie.validation.brain import validate_brain


def test_validation_report_runs_end_to_end(brain_cohort, brain_trained, tmp_path):
    res = validate_brain(str(brain_cohort), model_path=str(brain_trained / "model.pt"), bundle=str(BRAIN_LDM),
                         progression_bundle=str(BRAIN_PROG), output_dir=str(tmp_path), num_subjects=1, num_rounds=2,
                         num_inference_steps=3, num_samples=2, overrides=BRAIN_NET)
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
    assert f"--output_dir {tmp_path} --num_subjects 1 --num_rounds 2 --num_inference_steps 3 --num_samples 2" in report
    assert (tmp_path / "figures" / "brain_progression_strip.png").is_file()


def test_a_missing_cohort_fails_before_anything_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        validate_brain(str(tmp_path / "nope"), output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # no working files left behind


def test_settings_come_from_the_bundle_once_and_make_the_inferer():
    from monai.networks.schedulers import DDPMScheduler

    config = json.loads((BRAIN_PROG / "configs" / "inference.json").read_text())
    s = ProgressionSettings.from_config(config, strength=0.4, num_rounds=3, anchor=None)
    assert s.blend_in == config["blend_in"] and s.anchor == config["anchor"] == "previous"  # None: the bundle's
    with pytest.raises(ValueError, match="unknown PIE settings"):
        ProgressionSettings.from_config(config, strenght=0.4)
    with pytest.raises(AttributeError):
        s.strength = 0.5  # frozen
    inferer = s.inferer(DDPMScheduler(1000))
    assert inferer.num_rounds == 3 and inferer.strength == 0.4 and inferer.anchor == "previous"
    assert s.with_edit(0.5, 0.75, "original").edit == (0.5, 0.75, "original") and s.edit == (0.4, 0.3, "previous")
