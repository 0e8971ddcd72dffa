"""`validate brain --stage generation` end to end with tiny settings, through the LDM bundle's own workflow."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.bundle_helpers import BRAIN_LDM, BRAIN_NET, BRAIN_PROG

from monai_pie.validation.brain import covariate_matched, validate_brain


def test_generation_report_runs_end_to_end(brain_cohort, brain_trained, tmp_path):
    res = validate_brain(str(brain_cohort), model_path=str(brain_trained / "model.pt"), bundle=str(BRAIN_LDM),
                         progression_bundle=str(BRAIN_PROG), output_dir=str(tmp_path), num_samples=2,
                         num_inference_steps=3, overrides=BRAIN_NET)
    report = Path(res["report"]).read_text()
    assert "MS-SSIM" in report and "nearest test image" in report and "Synthetic to real caveat" in report
    data = json.loads((tmp_path / "validation" / "brain_generation.json").read_text())
    train = json.loads((brain_cohort / "datalist.json").read_text())["training"]
    assert data["params"]["num_train"] == len(train)  # memorisation searched every training image
    assert set(data["generation"]) == {"CN", "AD"}
    # diversity beside covariate-matched real images through the autoencoder (same diagnosis and sex, age +-10)
    assert "covariate-matched training images through the autoencoder" in report
    for name, stage in (("CN", 0.05), ("AD", 0.9)):  # the covariates the check generates at
        matched = covariate_matched(train, {"age": 70.0, "sex": 0, "stage": stage}, 8)
        assert data["generation"][name]["num_matched"] == len(matched)
    assert "--stage generation" in report and (tmp_path / "figures" / "brain_generated_AD.png").is_file()


def test_covariate_matched_takes_one_image_per_subject_of_the_same_diagnosis_sex_and_age():
    items = [{"subject_id": "a", "age": 70, "sex": 0, "stage": 0.9},
             {"subject_id": "a", "age": 72, "sex": 0, "stage": 0.95},  # a's later visit: the same anatomy
             {"subject_id": "b", "age": 85, "sex": 0, "stage": 0.9},  # too old
             {"subject_id": "c", "age": 66, "sex": 1, "stage": 0.9},  # the other sex
             {"subject_id": "d", "age": 65, "sex": 0, "stage": 0.05},  # CN
             {"subject_id": "e", "age": 61, "sex": 0, "stage": 0.85}]
    ad = {"age": 70.0, "sex": 0, "stage": 0.9}
    assert covariate_matched(items, ad, 8) == [0, 5] and covariate_matched(items, ad, 1) == [0]
    assert covariate_matched(items, {**ad, "stage": 0.05}, 8) == [4]
