"""monai-pie validate tau end to end on a tiny cohort with a tiny trained bundle: the start level is frozen on the
validation split (and never overwritten), then every method is scored on the test split and the preclinical cohort;
the scoring functions on hand-made maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.bundle_helpers import TAU_NET

from monai_pie.validation import tau


def test_auprc_and_the_off_target_share_on_hand_made_maps():
    positive = np.zeros((4, 4, 4), bool)
    positive[0] = True
    brain = np.ones_like(positive)
    perfect = positive.astype(float)
    assert tau.auprc(perfect, positive, brain) == 1.0
    assert tau.auprc(1.0 - perfect, positive, brain) < 0.3  # the map of the wrong voxels
    assert np.isnan(tau.auprc(perfect, np.zeros_like(positive), brain))  # no positive voxel: undefined, not 0


@pytest.mark.slow
def test_tune_then_evaluate(tau_cohort, tau_trained, tmp_path):
    settings = tmp_path / "tau_settings.json"
    model = str(tau_trained / "model.pt")
    frozen = tau.tune_tau(str(tau_cohort), settings_file=str(settings), model_path=model, work_dir=str(tmp_path / "w"),
                          num_inference_steps=4, candidates=(0.3, 0.5), overrides=TAU_NET)
    assert frozen["t0"] in (0.3, 0.5) and set(frozen["tuning_median_auprc"]) == {"0.3", "0.5"}
    with pytest.raises(FileExistsError, match="frozen once tuned"):
        tau.tune_tau(str(tau_cohort), settings_file=str(settings), model_path=model)
    report = tau.evaluate_tau(str(tau_cohort), settings_file=str(settings), model_path=model,
                              work_dir=str(tmp_path / "w"), output_dir=str(tmp_path / "docs"), speed_subjects=1,
                              reference_steps=8, overrides=TAU_NET)
    md = (tmp_path / "docs" / "validation" / "tau_pet.md").read_text()
    assert report["settings_sha256"][:16] in md and "Z-score vs CN" in md and "Welch t" in md
    for method in tau.METHODS:
        auprc = report["methods"][method]["auprc"][0]
        assert 0.0 <= auprc <= 1.0
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
