"""monai-pie validate tau end to end on a tiny cohort with a tiny trained bundle: the start level is frozen on the
validation split (and never overwritten), then every method is scored on the test split and the preclinical cohort;
the scoring functions on hand-made maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.bundle_helpers import TAU_NET

from monai_pie.validation import tau

RUNS = ({"start": "ddim_inversion", "t0": 0.3, "guidance_scale": 1.0},
        {"start": "partial_noise", "t0": 0.5, "guidance_scale": 2.0})


def test_auprc_and_the_off_target_share_on_hand_made_maps():
    positive = np.zeros((4, 4, 4), bool)
    positive[0] = True
    brain = np.ones_like(positive)
    perfect = positive.astype(float)
    assert tau.auprc(perfect, positive, brain) == 1.0
    assert tau.auprc(1.0 - perfect, positive, brain) < 0.3  # the map of the wrong voxels
    assert np.isnan(tau.auprc(perfect, np.zeros_like(positive), brain))  # no positive voxel: undefined, not 0


def test_pooled_auprc_penalises_a_map_that_marks_subjects_without_tau():
    """Per subject, a location prior (the same map for everyone) and a subject-aware map score alike; pooled over
    subjects, only the map that stays dark in the subject without tau scores 1."""
    rng = np.random.default_rng(0)
    region = np.zeros((6, 6, 6), bool)
    region[:2] = True
    brain = np.ones_like(region)
    positives = [region, region, np.zeros_like(region)]  # two subjects with tau, one without
    prior = region + 0.01 * rng.random(region.shape)
    aware = [region + 0.01 * rng.random(region.shape), region + 0.01 * rng.random(region.shape),
             0.01 * rng.random(region.shape)]
    assert tau.auprc(prior, region, brain) == tau.auprc(aware[0], region, brain) == 1.0
    point, low, high = tau.pooled_auprc(aware, positives, brain, num_resamples=50, stride=1)
    assert point == 1.0 and low <= point <= high
    assert tau.pooled_auprc([prior] * 3, positives, brain, num_resamples=50)[0] < 0.8
    assert np.isnan(tau.pooled_auprc([prior], [np.zeros_like(region)], brain)[0])


@pytest.mark.slow
def test_tune_then_evaluate(tau_cohort, tau_trained, tmp_path):
    settings = tmp_path / "tau_settings.json"
    model = str(tau_trained / "model.pt")
    frozen = tau.tune_tau(str(tau_cohort), settings_file=str(settings), model_path=model, work_dir=str(tmp_path / "w"),
                          num_inference_steps=4, candidates=RUNS, maps=("complementary", "difference"),
                          overrides=TAU_NET)
    assert {k: frozen[k] for k in ("start", "t0", "guidance_scale")} in RUNS
    assert frozen["anomaly_map"] in ("complementary", "difference")
    tuning = json.loads(settings.read_text())["tuning"]
    assert len(tuning) == 4 and all(0.0 <= t["pooled_auprc"] <= 1.0 for t in tuning)
    with pytest.raises(FileExistsError, match="frozen once tuned"):
        tau.tune_tau(str(tau_cohort), settings_file=str(settings), model_path=model)
    report = tau.evaluate_tau(str(tau_cohort), settings_file=str(settings), model_path=model,
                              work_dir=str(tmp_path / "w"), output_dir=str(tmp_path / "docs"), speed_subjects=1,
                              reference_steps=8, overrides=TAU_NET)
    md = (tmp_path / "docs" / "validation" / "tau_pet.md").read_text()
    assert report["settings_sha256"][:16] in md and "Z-score vs CN" in md and "Welch t" in md
    assert "location prior" in md and "pooled" in md and "## Tuning" in md
    for method in tau.METHODS:
        auprc, pooled = report["methods"][method]["auprc"][0], report["methods"][method]["pooled_auprc"]
        assert 0.0 <= auprc <= 1.0 and 0.0 <= pooled[0] <= 1.0 and pooled[1] <= pooled[2]
    z = report["methods"]["Z-score vs CN"]
    assert z["num_null"] + z["num_diseased"] <= report["num_test"]
    assert set(report["speed"]) == {"bundle steps", "reference: 8 steps"}
    saved = json.loads((tmp_path / "docs" / "validation" / "tau_pet.json").read_text())
    assert len(saved["subjects"]) == report["num_test"]
    assert (tmp_path / "docs" / "validation" / "tau_severity.json").is_file()
    again = tau.evaluate_tau(str(tau_cohort), settings_file=str(settings), model_path=model,
                             work_dir=str(tmp_path / "w"), output_dir=str(tmp_path / "docs2"), speed_subjects=1,
                             reference_steps=8, overrides=TAU_NET)
    assert again["methods"] == report["methods"]  # resumed from the runs' records, same numbers


def test_a_missing_cohort_or_settings_file_fails_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="monai-pie synth tau"):
        tau.evaluate_tau(str(tmp_path / "nothing"))


def test_settings_frozen_by_the_old_protocol_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="--stage tune --overwrite True"):
        tau.frozen_run_settings({"protocol": "tau_pet_anomaly v1", "t0": 0.5})
    frozen = {"protocol": "tau_pet_anomaly v2", "start": "partial_noise", "t0": 0.8, "guidance_scale": 3.0,
              "anomaly_map": "supported_difference", "num_inference_steps": None}
    assert tau.frozen_run_settings(frozen) == {k: frozen[k] for k in ("start", "t0", "guidance_scale", "anomaly_map")}
