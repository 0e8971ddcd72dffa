"""The CXR validation protocol's parts: pass checks, truth markers, ROIs, the linear baseline, the frames, and the
tune -> evaluate run end to end with tiny networks."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from monai_pie.data.io import save_png16
from monai_pie.metrics.cxr_readers import MASK_CHANNELS, soft_ctr
from monai_pie.validation import cxr_protocol as cp
from monai_pie.validation import protocol
from monai_pie.validation.settings import ProgressionSettings


def _row(subject, seed, ratio=1.0, r2=0.6, corrected=0.2, null_pass=1.0, off_target=0.02, side=1.0):
    row = {"subject": subject, "seed": seed, "null_ctr_max": 0.0, "null_probability_max": 0.01,
           "null_pass": null_pass, "effusion_other_side": 0.0, "effusion_side_correct": side}
    for t in cp.TARGETS:
        slug = t.split()[-1]
        row.update({f"{slug}_true": corrected, f"{slug}_corrected": corrected * ratio, f"{slug}_null": 0.0,
                    f"{slug}_ratio": ratio, f"{slug}_r2": r2, f"{slug}_off_target": off_target,
                    f"{slug}_specificity": 0.1, f"{slug}_identity_corr": 0.5, f"{slug}_retrieved_self": 1.0,
                    f"{slug}_probability": 0.9, f"{slug}_thorax_width_change_px": 0.0,
                    f"{slug}_null_whole_image": 0.1})
    return row


def test_summarise_passes_a_good_method_and_fails_a_bad_one():
    good = cp.summarise({i: [_row(i, k, corrected=0.2 + 0.001 * k) for k in range(3)] for i in range(6)})
    assert all(passed for _, passed in good["checks"].values()), good["checks"]
    assert good["num_subjects"] == 6 and good["num_seeds"] == 3
    # one failing seed fails the subject's null check; a wrong size, a poor map, off-target findings, the wrong side
    bad = cp.summarise({i: [_row(i, k, ratio=0.4, r2=-1.0, corrected=(-1) ** k * 0.2, null_pass=float(k != 1),
                                 off_target=0.5, side=0.0) for k in range(3)] for i in range(6)})
    failed = {name for name, (_, passed) in bad["checks"].items() if not passed}
    assert {"null (every round, every seed)", "size ratio cardiomegaly", "R^2 effusion", "seed CV cardiomegaly",
            "off-target P effusion", "effusion on the side asked for"} <= failed
    assert bad["checks"]["null (every round, every seed)"][0] == 0.0


def test_subjects_truth_is_the_same_phantom_with_the_finding_on_the_side_asked_for(tmp_path):
    subjects = cp.make_subjects(123, 2, 64, tmp_path, ladder=True)
    assert [s.side for s in subjects] == ["right", "left"]
    for s in subjects:
        assert s.true_change("cardiomegaly") > 0.1  # the heart grows
        assert s.true_change("pleural effusion") > 0.3
        other = "left" if s.side == "right" else "right"
        assert s.truth["pleural effusion"][f"effusion_fraction_{other}"] == 0.0
        ladder = [s.true_change("cardiomegaly", f"cardiomegaly@{v}") for v in cp.LADDER[:-1]]
        assert ladder == sorted(ladder) and ladder[-1] < s.true_change("cardiomegaly")
        assert np.array(Image.open(s.path)).dtype == np.uint16  # the source is written losslessly enough (16 bit)
        assert s.bones.shape == (64, 64) and 0.05 < s.bones.mean() < 0.5  # the source's ribs, spine, clavicles
    assert subjects[0].seed == 123 and subjects[1].seed == 124


def test_rois_split_the_thorax_at_the_midline(tmp_path):
    rois = {k: np.array(Image.open(p)) > 0 for k, p in cp.write_rois(64, tmp_path).items()}
    assert (rois["right"] | rois["left"]).sum() == rois["thorax"].sum() and not (rois["right"] & rois["left"]).any()
    assert rois["right"][:, 32:].sum() == 0 and rois["left"][:, :32].sum() == 0  # patient right = image left


def test_soft_ctr_moves_with_a_sub_pixel_border_and_matches_binary_masks():
    masks = np.zeros((len(MASK_CHANNELS), 20, 40), np.float32)
    masks[MASK_CHANNELS.index("thorax"), 5:15, 5:35] = 1.0
    masks[MASK_CHANNELS.index("heart"), 10:14, 15:27] = 1.0
    assert soft_ctr(masks) == pytest.approx((12 / 30, 30.0))
    masks[MASK_CHANNELS.index("heart"), 10:14, 27] = 0.4  # a border pixel 40 % heart
    assert soft_ctr(masks)[0] == pytest.approx(12.4 / 30)


def test_linear_baseline_recovers_the_finding_slopes(tmp_path):
    rng = np.random.default_rng(0)
    slopes = {t: rng.uniform(-0.1, 0.1, (16, 16)) for t in ("cardiomegaly", "pleural effusion", "consolidation",
                                                             "edema")}
    (tmp_path / "images").mkdir()
    items = []
    for i in range(12):
        sev = {t: rng.uniform(0, 1) for t in slopes}
        img = 0.5 + sum(sev[t] * slopes[t] for t in slopes)
        save_png16(img, tmp_path / "images" / f"{i}.png")
        items.append({"image": f"images/{i}.png", "report": "x",
                      **{f"severity_{t.replace(' ', '_')}": v for t, v in sev.items()},
                      **{t.replace(" ", "_"): 0 for t in slopes}})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items}))
    got = cp.linear_baseline(tmp_path, size=16)
    for t in cp.TARGETS:
        np.testing.assert_allclose(got[t], slopes[t], atol=1e-3)


def test_frames_become_final_frames_and_every_null_round(tmp_path):
    paths = []
    for k in range(4):
        paths.append(str(save_png16(np.full((8, 8), k / 4), tmp_path / f"f{k}.png")))
    res = cp.results_from_frames({("s000", 0, "cardiomegaly"): paths, ("s000", 0, "pleural effusion"): paths[:2],
                                  ("s000", 0, "null"): paths})
    r = res[("s000", 0)]
    assert float(r.final["cardiomegaly"].mean()) == pytest.approx(0.75, abs=1e-4)
    assert float(r.final["pleural effusion"].mean()) == pytest.approx(0.25, abs=1e-4)
    assert len(r.null_frames) == 4


def test_evaluation_needs_a_cohort_and_frozen_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="datalist"):  # the cohort is checked first
        cp.evaluate_cxr(str(tmp_path / "no_cohort"), settings_file=str(tmp_path / "missing.json"))
    save_png16(np.zeros((8, 8)), tmp_path / "a.png")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "a.png", "report": "x"}]}))
    with pytest.raises(FileNotFoundError, match="--stage tune"):
        cp.evaluate_cxr(str(tmp_path), settings_file=str(tmp_path / "missing.json"))
    (tmp_path / "frozen.json").write_text("{}")
    with pytest.raises(FileExistsError, match="frozen"):
        cp.tune_cxr(str(tmp_path), settings_file=str(tmp_path / "frozen.json"))


def test_a_confirmation_split_takes_unseen_seeds_and_says_so():
    frozen = {"splits": {"tuning_seed": 810_000, "evaluation_seed": 910_000, "tuning_subjects": 8}}
    assert protocol.split_seed(frozen, None, 32) == 910_000
    assert protocol.split_seed(frozen, 950_000, 32) == 950_000
    for bad in (809_990, 810_007):  # 32 seeds from 809990 reach into the tuning seeds; 810007 is one
        with pytest.raises(ValueError, match="overlap the tuning split"):
            protocol.split_seed(frozen, bad, 32)
    with pytest.raises(ValueError, match="overlap the evaluation split"):  # earlier evaluations saw those
        protocol.split_seed(frozen, 910_016, 32)
    assert protocol.split_seed(frozen, 810_008, 32) == 810_008 and protocol.split_seed(frozen, 809_968, 32) == 809_968
    assert protocol.split_seed(frozen, 910_032, 32) == 910_032  # the boundaries are open
    with pytest.raises(ValueError, match="non-negative integer"):
        protocol.split_seed(frozen, -1, 32)
    assert protocol.split_description(frozen, 910_000, "phantoms") == "phantoms unseen by the tuning (seeds 910000+)"
    assert "confirmation split (seeds 950000+" in protocol.split_description(frozen, 950_000, "phantoms")


@pytest.mark.slow
def test_tune_then_evaluate_end_to_end(generalist, cxr_trained, tmp_path):
    """Tiny networks and readers, two tuning and two evaluation phantoms: settings frozen, then read and hashed."""
    from helpers.bundle_helpers import CXR_NET, CXR_PROG

    settings_file = tmp_path / "settings.json"
    common = dict(model_path=str(cxr_trained / "model.pt"), progression_bundle=str(CXR_PROG), overrides=CXR_NET)
    cohort = str(generalist / "cxr")
    cp.tune_cxr(cohort, settings_file=str(settings_file), work_dir=str(tmp_path / "tune"), num_subjects=2,
                classifier_steps=2, mask_steps=2,
                candidates=({"strength": 0.3},
                            {"strength": 0.3, "noise_mode": "ddim_inversion", "guidance_scale": 5.0}),
                settings_overrides={"num_inference_steps": 4, "num_rounds": 2}, **common)
    frozen = json.loads(settings_file.read_text())
    assert set(frozen["modes"]) == {"PIE, bundle defaults", "PIE, published setting", "counterfactual (tuned)"}
    assert frozen["modes"]["PIE, published setting"]["guidance_scale"] == 7.5
    assert set(frozen["tuning"]["reader_validation"]) == set(cp.TARGETS)
    tried = [c["settings"] for c in frozen["tuning"]["counterfactual_candidates"]]
    assert [(c["noise_mode"], c["guidance_scale"]) for c in tried] == [("stochastic", 3.0), ("ddim_inversion", 5.0)]
    cp.evaluate_cxr(cohort, settings_file=str(settings_file), output_dir=str(tmp_path / "docs"),
                    work_dir=str(tmp_path / "eval"), num_subjects=2, num_seeds=2, evaluation_seed=950_000, **common)
    report = (tmp_path / "docs" / "validation" / "cxr_progression.md").read_text()
    assert hashlib.sha256(settings_file.read_bytes()).hexdigest()[:16] in report
    assert "2 phantoms of a confirmation split (seeds 950000+" in report  # not called the frozen evaluation split
    assert "--evaluation_seed 950000" in report
    assert "linear baseline" in report and ("PASS" in report or "FAIL" in report)
    # every candidate is named by its start and guidance, not by its strength alone
    assert "- strength 0.3, from forward noise, guidance 3:" in report
    assert "- strength 0.3, from the DDIM inversion, guidance 5:" in report
    data = json.loads((tmp_path / "docs" / "validation" / "cxr_progression.json").read_text())
    cf = data["methods"]["counterfactual (tuned)"]
    # the counterfactual null edit is the identity by construction: no change whatever the model and readers
    assert all(s["null_ctr_max"] < 1e-4 and abs(s["cardiomegaly_null"]) < 1e-4 for s in cf["subjects"].values())
    assert data["methods"]["counterfactual (tuned)"]["num_seeds"] == 2
    # bones and the autoencoder's retrieval limit are measured for every method, the linear baseline included
    for m in data["methods"].values():
        assert all(np.isfinite(m["stats"][f"{t.split()[-1]}_bone_change"][0]) for t in cp.TARGETS)
        assert 0.0 <= m["stats"]["effusion_retrieval_autoencoder_limit"][0] <= 1.0
        assert 0.0 < m["stats"]["cardiomegaly_truth_nearest_other_corr"][0] <= 1.0  # the truths, whatever the method
        for key in ("retrieval_own_corr", "retrieval_other_corr"):  # NaN where a tiny net's edit map is constant
            assert not abs(m["stats"][f"cardiomegaly_{key}"][0]) > 1.0
    linear = data["methods"]["linear baseline"]["stats"]  # its map is never constant: both correlations exist
    assert all(-1.0 <= linear[f"{t.split()[-1]}_retrieval_{k}_corr"][0] <= 1.0
               for t in cp.TARGETS for k in ("own", "other"))
    assert "bones in the ROI where the truth is still" in report and "how alike the true changes are" in report
    assert (tmp_path / "docs" / "figures" / "cxr_progression_methods.png").is_file()


def test_finished_runs_are_reused_until_the_items_settings_or_weights_change(tmp_path, monkeypatch):
    progression = tmp_path / "bundle"
    (progression / "models").mkdir(parents=True)
    (progression / "models" / "model.pt").write_bytes(b"weights v1")
    calls = []

    class Summary:
        def __init__(self, n):
            self.summaries = [{"frames": [f"frame_{i}.png"]} for i in range(n)]

    monkeypatch.setattr(protocol, "run_bundle", lambda bundle, overrides: calls.append(overrides) or overrides)
    monkeypatch.setattr(protocol, "find_handler", lambda overrides, kind: Summary(len(overrides["datalist"])))
    subjects = [cp.Subject(0, 1, "right", path="s.png"), cp.Subject(1, 2, "left", path="t.png")]
    rois = {"thorax": "t.png", "right": "r.png", "left": "l.png"}
    settings = ProgressionSettings.published()
    first = cp.run_edits(progression, None, settings, subjects, 2, rois, tmp_path / "out")
    assert len(calls) == 2 and len(first) == 2 * 2 * 3  # one bundle run per seed; 3 runs per subject
    assert first[("s001", 1, "null")] == ["frame_5.png"]
    tally = {}
    assert cp.run_edits(progression, None, settings, subjects, 2, rois, tmp_path / "out", tally=tally) == first
    assert len(calls) == 2 and tally == {"reused": 2}  # nothing re-ran
    cp.run_edits(progression, None, settings.replace(strength=0.3), subjects, 2, rois, tmp_path / "out")
    assert len(calls) == 4  # other settings: run again
    (progression / "models" / "model.pt").write_bytes(b"weights v2")
    cp.run_edits(progression, None, settings.replace(strength=0.3), subjects, 1, rois, tmp_path / "out")
    assert len(calls) == 5  # other weights: run again
    assert all(c["dataloader#batch_size"] == 16 for c in calls)
    # --workers: the seed runs recorded side by side first are the ones run_edits then finds
    runs = [run for run, _ in cp.seed_runs(progression, None, settings, subjects, 2, rois, tmp_path / "par")]
    assert protocol.parallel_progression_runs(runs, workers=1, progress=False) == [False, False]
    tally = {}
    assert cp.run_edits(progression, None, settings, subjects, 2, rois, tmp_path / "par", tally=tally) == first
    assert len(calls) == 7 and tally == {"reused": 2}
