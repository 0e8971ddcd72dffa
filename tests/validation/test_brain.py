"""`validate brain --stage generation` end to end with tiny settings, through the LDM bundle's own workflow."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.bundle_helpers import BRAIN_LDM, BRAIN_NET, BRAIN_PROG

from monai_pie.validation.brain import validate_brain


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
    for g in data["generation"].values():
        assert 0 <= g["num_matched"] <= max(2, 8)
        assert g["ms_ssim_matched_reconstructed"] is None or 0.0 < g["ms_ssim_matched_reconstructed"] <= 1.0
    assert "--stage generation" in report and (tmp_path / "figures" / "brain_generated_AD.png").is_file()
