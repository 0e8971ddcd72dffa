"""CXR readers and metrics (monai_pie.metrics.cxr_readers) and the `validate cxr` report, with tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from monai_pie.data.synthetic import render_cxr_phantom, synthesize_cxr_cohort
from monai_pie.data.synthetic.generalist import brain_slice_cohort, merge_datalists
from monai_pie.metrics.cxr_readers import (
    MASK_CHANNELS,
    CXRMaskNet,
    FindingClassifier,
    embedding_cosine,
    fid_from_features,
    fit,
    measure_from_masks,
    prompt_adherence,
)
from monai_pie.validation.cxr import load_cxr_split, validate_cxr

ROOT = Path(__file__).resolve().parents[2]
LDM = ROOT / "bundles" / "cxr_text_ldm"
NET = {"image_size": [32, 32], "ae_channels": [16, 16, 16], "unet_channels": [32, 32, 32], "context_dim": 16}


@pytest.mark.parametrize("severities", [{}, {"cardiomegaly": 0.9}, {"pleural effusion": 0.8}])
def test_measure_from_true_masks_matches_the_phantom_truth(severities):
    r = render_cxr_phantom(severities, seed=5, size=96)
    m = measure_from_masks(np.stack([r["masks"][k] for k in MASK_CHANNELS]))
    assert m["ctr"] == pytest.approx(r["ctr"], abs=0.02)
    assert m["effusion_fraction"] == pytest.approx(r["effusion_fraction"], abs=0.05)


def test_prompt_adherence_counts_exact_and_per_finding_matches():
    probs = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.1], [0.1, 0.9]])
    want = np.array([[1, 0], [1, 0], [0, 0], [1, 1]])
    a = prompt_adherence(probs, want)
    assert a["exact"] == pytest.approx(0.5)  # rows 0 and 2
    assert a["present"] == pytest.approx([2 / 3, 1.0])
    assert a["absent"] == pytest.approx([1.0, 2 / 3])
    with pytest.raises(ValueError, match="shape"):
        prompt_adherence(probs, want[:, :1])


def test_embedding_cosine_and_fid():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert embedding_cosine(a, a) == pytest.approx([1.0, 1.0])
    assert embedding_cosine(a, np.array([[0.0, 2.0], [-1.0, -1.0]])) == pytest.approx([0.0, -1.0])
    with pytest.raises(ValueError, match="shape"):
        embedding_cosine(a, a[:1])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    assert fid_from_features(x, y) < 0.5 < fid_from_features(x, y + 2.0)


def test_fit_lowers_the_loss_and_rejects_mismatched_targets():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 32, 32)
    masks = (x > 0.5).float().repeat(1, 4, 1, 1)
    net = CXRMaskNet(channels=(4, 8))
    losses = fit(net, x, masks, F.binary_cross_entropy_with_logits, steps=40, batch_size=8, lr=1e-2, progress=False,
                 augment=False)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    with pytest.raises(ValueError, match="differ in number"):
        fit(net, x, masks[:3], F.binary_cross_entropy_with_logits, steps=1, progress=False)


def test_classifier_predicts_probabilities_and_features():
    clf = FindingClassifier(["a", "b", "c"])
    probs, feats = clf.predict(torch.rand(5, 1, 32, 32), batch_size=2)
    assert probs.shape == (5, 3) and feats.shape == (5, 1024) and ((probs > 0) & (probs < 1)).all()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cxr") / "cohort"
    synthesize_cxr_cohort(out, num_images=16, size=32, seed=4, split=(0.6, 0.2, 0.2), prevalence=0.5, progress=False)
    return out


def test_load_cxr_split_reads_images_labels_and_masks(cohort, tmp_path):
    split = load_cxr_split(cohort, "training", (32, 32))
    n = len(split["items"])
    assert split["images"].shape == (n, 1, 32, 32) and split["labels"].shape == (n, 4)
    assert split["masks"].shape == (n, 4, 32, 32) and set(split["masks"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(FileNotFoundError, match="synth cxr"):
        load_cxr_split(tmp_path, "training", (32, 32))


def test_validate_cxr_writes_the_report_with_every_section(cohort, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(LDM / "configs" / "inference.json"))
    parser.update(NET)
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), model)
    brain = tmp_path / "brain_slices"  # stand-in "second modality": the cohort re-listed; the check only needs images
    merge_datalists({"x": cohort}, brain / "datalist.json")
    out = tmp_path / "docs"
    result = validate_cxr(str(cohort), brain_slices_dir=str(brain), model_path=str(model), bundle=str(LDM),
                          output_dir=str(out), num_inference_steps=2, num_samples=2,
                          classifier_steps=2, mask_steps=2, utility_real=4, utility_synthetic=4, utility_steps=1,
                          overrides=NET)
    text = Path(result["report"]).read_text()
    for section in ("## The readers", "## Generation", "Generalist", "## Utility", "cxr_progression.md"):
        assert section in text
    assert "## PIE progression" not in text  # progression has its own protocol (cxr_protocol)
    report = json.loads((out / "validation" / "cxr.json").read_text())
    assert "progression" not in report and report["params"]["num_inference_steps"] == 2
    assert report["generation"]["num_samples"] == 12 and np.isfinite(report["generation"]["fid"])
    # memorisation against the test split as well as the training split; diversity beside reconstructions
    gen = report["generation"]
    assert 0.0 <= gen["nn_test_train_min"] <= gen["nn_test_train_mean"]
    for g in gen["prompts"].values():
        assert 0.0 <= g["nn_test_min"] <= g["nn_test_mean"]
        assert (g["ms_ssim_real_reconstructed"] is None) == (g["ms_ssim_real"] is None)
    assert "nearest test image" in text and "through the autoencoder" in text
    for fig in ("cxr_generated.png", "cxr_generalist_brain.png"):
        assert (out / "figures" / fig).is_file()
    recipe = json.loads((out / "validation" / "cxr_work" / "finding_classifier.json").read_text())
    assert recipe["steps"] == 2 and recipe["n_train"] == len(load_cxr_split(cohort, "training", (32, 32))["items"])


def test_brain_slice_cohort_refuses_a_non_cohort_and_its_own_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="brain cohort"):
        brain_slice_cohort(tmp_path, tmp_path / "out")
    (tmp_path / "datalist.json").write_text("{}")
    with pytest.raises(ValueError, match="differ"):
        brain_slice_cohort(tmp_path, tmp_path)
