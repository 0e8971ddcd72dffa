"""The brain validation protocol's parts: pass checks, reader choice, the linear baseline, the dose frames."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_pie.validation import brain_protocol as bp
from monai_pie.validation import protocol
from monai_pie.validation.settings import ProgressionSettings


def _row(subject, noise, ratio=1.0, null_fraction=0.0, r2=0.6, corrected=-1.0):
    row = {"subject": subject, "noise": noise, "r2": r2, "null_whole_brain_ratio": 0.1, "specificity": 0.1,
           "identity_corr": 0.5, "retrieved_self": 1.0}
    for m in bp.MARKERS:
        row.update({f"{m}_null": 0.0, f"{m}_null_fraction": null_fraction, f"{m}_corrected": corrected * ratio,
                    f"{m}_true": corrected, f"{m}_ratio": ratio, f"{m}_dose_monotone": 1.0})
    return row


def test_summarise_passes_a_good_method_and_fails_a_bad_one():
    good = bp.summarise({i: [_row(i, k, corrected=-1.0 - 0.01 * k) for k in range(3)] for i in range(6)})
    assert all(passed for _, passed in good["checks"].values()), good["checks"]
    assert good["num_subjects"] == 6 and good["num_seeds"] == 3
    bad = bp.summarise({i: [_row(i, k, ratio=0.4, null_fraction=0.5, r2=-1.0, corrected=(-1) ** k)
                            for k in range(3)] for i in range(6)})
    failed = {name for name, (_, passed) in bad["checks"].items() if not passed}
    assert {"null ventricle_ml", "size ratio ventricle_ml", "R^2", "seed CV ventricle_ml"} <= failed
    med, lo, hi = bad["stats"]["ventricle_ml_ratio"]
    assert med == pytest.approx(0.4) and lo <= med <= hi


def test_readers_are_chosen_by_their_worst_error():
    validation = {"fixed": {m: {"error": 0.3} for m in bp.MARKERS},
                  "em": {"ventricle_ml": {"error": 0.1}, "hippocampal_gm_ml": {"error": 0.5}}}
    assert bp.choose_readers(validation) == {"ventricle_ml": "em", "hippocampal_gm_ml": "fixed"}
    with pytest.raises(ValueError, match="unknown reader"):
        bp.change_reader("eyeball", np.zeros((4, 4, 4)), None)


def test_linear_baseline_recovers_the_stage_slope(tmp_path):
    rng = np.random.default_rng(0)
    slope, age_effect = rng.standard_normal((4, 5, 6)), rng.standard_normal((4, 5, 6))
    items = []
    for i in range(8):
        stage, age, sex = rng.uniform(0, 1), rng.uniform(55, 90), i % 2
        img = 1.0 + stage * slope + 0.01 * age * age_effect + 0.2 * sex
        nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), str(tmp_path / f"{i}.nii.gz"))
        items.append({"image": f"{i}.nii.gz", "stage": stage, "age": age, "sex": sex})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items}))
    got = bp.linear_baseline(tmp_path)
    np.testing.assert_allclose(got["stage"], slope, atol=1e-4)
    np.testing.assert_allclose(got["age"], 0.01 * age_effect, atol=1e-5)


def test_counterfactual_frames_are_read_as_the_dose_ladder(tmp_path):
    paths = []
    for k in range(9):
        paths.append(str(tmp_path / f"f{k}.nii.gz"))
        nib.save(nib.Nifti1Image(np.full((2, 2, 2), float(k), np.float32), np.eye(4)), paths[-1])
    subject = bp.Subject(0, 1, 0, 70.0, 0)
    frames = {(subject.key, "target"): paths, (subject.key, "null"): paths[:1]}
    base = ProgressionSettings.published()
    cf = bp.results_from_frames(frames, [subject], base.replace(edit_mode="counterfactual", num_rounds=8))
    # source 0.1 -> target 0.9 in 8 frames: frame n is stage 0.1 + 0.1 n, so 0.3, 0.5, 0.7, 0.9 are frames 2, 4, 6, 8
    loaded = cf[subject.key].loaded()  # frames stay paths until measured
    assert {st: float(f.mean()) for st, f in loaded.dose.items()} == {0.3: 2.0, 0.5: 4.0, 0.7: 6.0, 0.9: 8.0}
    assert float(loaded.null.mean()) == 0.0
    pie = bp.results_from_frames(frames, [subject], base)
    assert list(pie[subject.key].dose) == [0.9]  # PIE's rounds are not stages: only its final frame counts


def test_evaluation_needs_frozen_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="datalist"):  # the cohort is checked first
        bp.evaluate_brain(str(tmp_path / "no_cohort"), settings_file=str(tmp_path / "missing.json"))
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(tmp_path / "a.nii.gz"))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "a.nii.gz", "stage": 0.1}]}))
    with pytest.raises(FileNotFoundError, match="--stage tune"):
        bp.evaluate_brain(str(tmp_path), settings_file=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="shards"):  # checked before any work
        bp.evaluate_brain(str(tmp_path / "no_cohort"), shards=0)
    (tmp_path / "frozen.json").write_text("{}")
    with pytest.raises(FileExistsError, match="frozen"):
        bp.tune_brain(str(tmp_path), settings_file=str(tmp_path / "frozen.json"))


@pytest.mark.slow
def test_tune_then_evaluate_end_to_end(brain_cohort, brain_trained, longitudinal_trained, tmp_path, monkeypatch):
    """Tiny networks, one tuning and two evaluation subjects: the settings are frozen, then read and hashed."""
    from helpers.bundle_helpers import BRAIN_NET, BRAIN_PROG

    settings_file = tmp_path / "settings.json"
    common = dict(model_path=str(brain_trained / "model.pt"), progression_bundle=str(BRAIN_PROG), overrides=BRAIN_NET,
                  longitudinal_model_path=str(longitudinal_trained[0] / "model_longitudinal.pt"))
    tuned = bp.tune_brain(str(brain_cohort), settings_file=str(settings_file), work_dir=str(tmp_path / "tune"),
                          num_subjects=1, readers=("fixed",), candidates=({"strength": 0.3},),
                          longitudinal_candidates=({"strength": 0.5, "bounded_change_mm": 4.0},),
                          settings_overrides={"num_inference_steps": 4},
                          **common)
    frozen = json.loads(settings_file.read_text())
    assert tuned["readers"] == {m: "fixed" for m in bp.MARKERS} == frozen["readers"]
    assert set(frozen["modes"]) == {"PIE, bundle defaults", "PIE, published setting", "counterfactual (tuned)",
                                    bp.LONGITUDINAL_MODE}
    assert frozen["modes"]["PIE, published setting"]["guidance_scale"] == 7.5
    assert frozen["modes"]["counterfactual (tuned)"]["edit_mode"] == "counterfactual"
    assert "config" not in frozen["modes"]["counterfactual (tuned)"]
    assert frozen["modes"][bp.LONGITUDINAL_MODE]["config"] == bp.LONGITUDINAL_CONFIG
    assert frozen["modes"][bp.LONGITUDINAL_MODE]["num_rounds"] == bp.COUNTERFACTUAL_ROUNDS
    assert frozen["modes"][bp.LONGITUDINAL_MODE]["bounded_change_mm"] == 4.0
    assert "bounded_change_mm" not in frozen["modes"]["counterfactual (tuned)"]
    limit_jobs = []  # the autoencoder's limit rows are the same beside every method: measured once per subject
    monkeypatch.setattr(bp, "autoencoder_limit_subject",
                        lambda s, *a, f=bp.autoencoder_limit_subject: limit_jobs.append(s.key) or f(s, *a))
    res = bp.evaluate_brain(str(brain_cohort), settings_file=str(settings_file), output_dir=str(tmp_path / "docs"),
                            work_dir=str(tmp_path / "eval"), num_subjects=2, num_seeds=1, **common)
    assert len(limit_jobs) == len(set(limit_jobs)) == 2  # 2 subjects x 1 seed, not again for each of the 6 methods
    monkeypatch.undo()  # the parallel run below pickles the jobs
    report = (tmp_path / "docs" / "validation" / "brain_progression.md").read_text()
    import hashlib

    assert hashlib.sha256(settings_file.read_bytes()).hexdigest()[:16] in report
    assert "linear baseline" in report and ("PASS" in report or "FAIL" in report)
    data = json.loads((tmp_path / "docs" / "validation" / "brain_progression.json").read_text())
    cf = data["methods"]["counterfactual (tuned)"]
    # the counterfactual null edit is the identity by construction: zero change whatever the model
    assert all(abs(s[f"{m}_null"]) < 1e-9 for s in cf["subjects"].values() for m in bp.MARKERS)
    assert cf["checks"]["null whole brain"][0] == 0.0
    long = data["methods"][bp.LONGITUDINAL_MODE]
    assert long["checks"]["null whole brain"][0] == 0.0 and set(long["stats"]) == set(cf["stats"])
    assert "longitudinal model" in report
    # what the composition lets a reader see of the truth's own round trip, plain and bounded
    assert all(np.isfinite(cf["stats"][f"{m}_ratio_autoencoder_limit{b}"][0]) for m in bp.MARKERS
               for b in ("", "_bounded"))
    assert "composed bounded (limit)" in report and '"bounded_change_mm": 4.0' in report
    linear = data["methods"]["linear baseline"]["stats"]  # its map is never constant (a tiny net's edit may be)
    for key in ("retrieval_own_corr", "retrieval_other_corr", "retrieval_own_corr_autoencoder_limit",
                "truth_nearest_other_corr"):  # what retrieval decides between, beside how alike the truths are
        assert -1.0 <= linear[key][0] <= 1.0 and not abs(cf["stats"][key][0]) > 1.0, key
    assert "how alike the true changes are" in report
    # the frozen evaluation seeds: named as unseen by the tuning, no confirmation seed in the command
    assert "2 subjects unseen by the tuning (seeds 900000+)" in report and "--evaluation_seed" not in report
    assert data["methods"]["linear baseline"]["checks"]["null ventricle_ml"][1]  # and so is the linear model's
    # both baselines and every mode carry the age-only edit (own stage, AGE_YEARS older, first seeds)
    for name in (*bp.BASELINES, "counterfactual (tuned)", bp.LONGITUDINAL_MODE):
        stats = data["methods"][name]["stats"]
        assert np.isfinite(stats["ventricle_ml_age_true"][0]) and stats["ventricle_ml_age_true"][0] > 0, name
        assert np.isfinite(stats["age_r2"][0]) and np.isfinite(stats["hippocampal_gm_ml_age_ratio"][0]), name
    assert "deformation baseline" in report and "age-only edit: ventricle r" in report
    older = json.loads(next((tmp_path / "eval").glob("counterfactual__tuned__older/run.json")).read_text())
    assert [i["target_age"] - i["age"] for i in older["record"]["items"]] == pytest.approx([bp.AGE_YEARS] * 2)
    assert res["seconds"] > 0
    # the same evaluation over processes (subjects, runs side by side, measures): the same frames up to the rounding
    # of another thread count (the tiny nets' edits are near zero, so ratios of them are no test of equality)
    bp.evaluate_brain(str(brain_cohort), settings_file=str(settings_file), output_dir=str(tmp_path / "docs2"),
                      work_dir=str(tmp_path / "eval2"), num_subjects=2, num_seeds=1, workers=2, **common)
    par = json.loads((tmp_path / "docs2" / "validation" / "brain_progression.json").read_text())
    assert par["params"]["workers"] == 2 and "--workers 2" in par["params"]["command"]
    assert set(par["methods"]) == set(data["methods"])
    frames = sorted((tmp_path / "eval").glob("*/s*/frame_*.nii.gz"))
    assert len(frames) > 20
    for f in frames:
        twin = tmp_path / "eval2" / f.relative_to(tmp_path / "eval")
        np.testing.assert_allclose(nib.load(twin).get_fdata(), nib.load(f).get_fdata(), atol=1e-4)
    lin, lin_par = data["methods"]["linear baseline"]["stats"], par["methods"]["linear baseline"]["stats"]
    assert lin_par["r2"][0] == pytest.approx(lin["r2"][0], rel=1e-6)  # no model in it: measured identically


def test_settings_with_a_config_run_that_config_of_the_bundle():
    from helpers.bundle_helpers import BRAIN_PROG

    base = ProgressionSettings.published()
    assert "config" not in base.as_dict() and "bounded_change_mm" not in base.as_dict()
    assert base.bundle_overrides(BRAIN_PROG) == {**base.inferer_settings(), "bounded_change_mm": None}
    bounded = base.replace(bounded_change_mm=4.0)  # the bundle's writer applies it, not the inferer
    assert bounded.bundle_overrides(BRAIN_PROG)["bounded_change_mm"] == 4.0
    from monai.networks.schedulers import DDIMScheduler

    assert "bounded_change_mm" not in bounded.inferer_settings() and bounded.inferer(DDIMScheduler(100)) is not None
    assert ProgressionSettings(**bounded.as_dict()) == bounded
    long = base.replace(config=bp.LONGITUDINAL_CONFIG, edit_mode="counterfactual")
    overrides = long.bundle_overrides(BRAIN_PROG)
    assert overrides["model_path"].endswith("/model_longitudinal.pt'") and overrides["edit_mode"] == "counterfactual"
    assert "config" not in overrides and not any(k.startswith("_") for k in overrides)
    assert ProgressionSettings(**long.as_dict()) == long  # a frozen file reads back the same settings
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        base.replace(config="nowhere.json").bundle_overrides(BRAIN_PROG)


def test_dose_response_counts_the_truths_direction():
    stages = bp.DOSE_STAGES
    assert bp.dose_monotone(stages, [1.0, 2.0, 3.0, 4.0], true_change=10.0) == 1.0  # ventricles grow
    assert bp.dose_monotone(stages, [-0.1, -0.2, -0.3, -0.4], true_change=-1.0) == 1.0  # hippocampal GM shrinks
    assert bp.dose_monotone(stages, [-0.1, -0.2, -0.3, -0.4], true_change=10.0) == 0.0  # the wrong way
    assert bp.dose_monotone(stages, [-0.1, -0.3, -0.2, -0.4], true_change=-1.0) == 0.0  # not monotone


def test_finished_edit_runs_are_reused_until_items_settings_or_weights_change(tmp_path, monkeypatch):
    progression = tmp_path / "bundle"
    (progression / "models").mkdir(parents=True)
    (progression / "models" / "model.pt").write_bytes(b"weights v1")
    (progression / "models" / "model_longitudinal.pt").write_bytes(b"long v1")
    calls = []

    class Summary:
        def __init__(self, n):
            self.summaries = [{"frames": [f"frame_{i}.nii.gz"]} for i in range(n)]

    monkeypatch.setattr(protocol, "run_bundle", lambda bundle, overrides: calls.append(overrides) or overrides)
    monkeypatch.setattr(protocol, "find_handler", lambda overrides, kind: Summary(len(overrides["datalist"])))
    subjects = [bp.Subject(i, 0, 0, 70.0, 0, path=f"s{i}.nii.gz") for i in range(2)]
    targets = {"target": bp.TARGET_STAGE, "null": bp.SOURCE_STAGE}
    settings = ProgressionSettings.published()
    first = bp.run_edits(progression, None, settings, subjects, targets, tmp_path / "out")
    assert len(calls) == 1 and first[("s001_n0", "null")] == ["frame_3.nii.gz"]
    assert bp.run_edits(progression, None, settings, subjects, targets, tmp_path / "out") == first
    assert len(calls) == 1  # same record: nothing re-ran
    bp.run_edits(progression, None, settings.replace(strength=0.3), subjects, targets, tmp_path / "out")
    assert len(calls) == 2  # other settings: run again
    (progression / "models" / "model_longitudinal.pt").write_bytes(b"long v2")  # a config may use any models/*.pt
    bp.run_edits(progression, None, settings.replace(strength=0.3), subjects, targets, tmp_path / "out")
    assert len(calls) == 3


def test_split_items_keeps_order_and_balances_parts():
    parts = protocol.split_items(list(range(7)), 3)
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert protocol.split_items([1], 4) == [[1]]  # no empty parts


def test_sharded_runs_record_each_part_and_parallel_runs_are_reused(tmp_path, monkeypatch):
    """A mode's items in shards: same (subject, target) -> frames mapping as one run, one record per part, and runs
    recorded by ``parallel_progression_runs`` are found by the sequential pass (nothing runs twice)."""
    progression = tmp_path / "bundle"
    (progression / "models").mkdir(parents=True)
    (progression / "models" / "model.pt").write_bytes(b"weights v1")
    calls = []

    class Summary:
        def __init__(self, datalist):
            self.summaries = [{"frames": [f"{d['image']}->{d['target_stage']}"]} for d in datalist]

    monkeypatch.setattr(protocol, "run_bundle", lambda bundle, overrides: calls.append(overrides) or overrides)
    monkeypatch.setattr(protocol, "find_handler", lambda overrides, kind: Summary(overrides["datalist"]))
    subjects = [bp.Subject(i, 0, 0, 70.0, 0, path=f"s{i}") for i in range(3)]
    settings = ProgressionSettings.published()
    whole = bp.run_edits(progression, None, settings, subjects, bp.EDIT_TARGETS, tmp_path / "one")
    sharded = bp.run_edits(progression, None, settings, subjects, bp.EDIT_TARGETS, tmp_path / "sharded", shards=4)
    assert sharded == whole and len(calls) == 1 + 4
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == [f"part{k}" for k in range(4)]
    items = bp.edit_items(subjects, bp.EDIT_TARGETS)[0]
    run = {"progression": progression, "settings": settings, "items": items, "out_dir": tmp_path / "par", "shards": 2}
    assert protocol.recorded_parts(**run) == [False, False]
    protocol.parallel_progression_runs([run], workers=1, progress=False)
    assert len(calls) == 5 + 2
    assert protocol.recorded_parts(**run) == [True, True]  # what the report counts as reused
    assert protocol.recorded_parts(**{**run, "settings": settings.replace(strength=0.3)}) == [False, False]
    assert bp.run_edits(progression, None, settings, subjects, bp.EDIT_TARGETS, tmp_path / "par", shards=2) == whole
    assert len(calls) == 7  # the recorded parts were reused


def test_deformation_rates_recover_the_log_volume_slope(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["split,stage,age,sex,ventricle_volume_ml,hippocampal_gm_ml"]
    for i in range(12):
        stage, age, sex = rng.uniform(0, 1), rng.uniform(55, 90), i % 2
        vent, hip = np.exp(3.0 + 0.4 * stage + 0.01 * age), np.exp(1.6 - 0.2 * stage - 0.002 * age + 0.05 * sex)
        rows.append(f"{'training' if i < 10 else 'test'},{stage},{age},{sex},{vent},{hip}")
    rows.append("test,0.5,70,0,1000.0,1000.0")  # other splits are not read
    (tmp_path / "ground_truth.csv").write_text("\n".join(rows) + "\n")
    rates = bp.deformation_rates(tmp_path)
    assert rates["stage"] == pytest.approx({"ventricle_ml": 0.4, "hippocampal_gm_ml": -0.2}, abs=1e-9)
    assert rates["age"] == pytest.approx({"ventricle_ml": 0.01, "hippocampal_gm_ml": -0.002}, abs=1e-9)
    with pytest.raises(FileNotFoundError, match="ground_truth.csv"):
        bp.deformation_rates(tmp_path / "missing")
    (tmp_path / "ground_truth.csv").write_text("\n".join(rows[:3]) + "\n")
    with pytest.raises(ValueError, match="2 training rows whose stage, age and sex cannot separate"):
        bp.deformation_rates(tmp_path)


def test_deformation_baseline_grows_ventricles_and_shrinks_hippocampi_with_stage():
    from monai_pie.data.synthetic.brain import load_brain_template, synthesize_brain_subject

    ctx = bp.Context.build()
    x0 = synthesize_brain_subject(7, bp.SOURCE_STAGE, 70.0, 0, load_brain_template())["image"]
    rates = {"stage": {"ventricle_ml": 0.45, "hippocampal_gm_ml": -0.25},
             "age": {"ventricle_ml": 0.02, "hippocampal_gm_ml": -0.005}}
    frames, older = bp.deformation_edit(x0, rates, ctx, older=True)
    assert list(frames) == list(bp.DOSE_STAGES)
    read = bp.marker_reader({m: "fixed" for m in bp.MARKERS}, x0, ctx)
    changes = [read(frames[st]) for st in bp.DOSE_STAGES]
    vent, hip = ([c[m] for c in changes] for m in ("ventricle_ml", "hippocampal_gm_ml"))
    assert 0 < vent[0] < vent[1] < vent[2] < vent[3] and 0 > hip[0] > hip[1] > hip[2] > hip[3]
    aged = read(older)  # ten years at the age rates: a smaller change the same way
    assert 0 < aged["ventricle_ml"] < vent[-1] and 0 > aged["hippocampal_gm_ml"] > hip[-1]
    # size: the ventricle CSF region's promised growth, exp(rate x 0.8) - 1 of its volume, as the reader sees it
    from monai_pie.metrics.brain_markers import tissue_class_means, tissue_fractions

    csf = tissue_fractions(x0, tissue_class_means(x0, ctx.core))[0]
    region_ml = float(((csf > 0.5) & ctx.rois["ventricle"] & ctx.brain).sum() * ctx.voxel_ml)
    promised = region_ml * (np.exp(0.45 * (bp.TARGET_STAGE - bp.SOURCE_STAGE)) - 1.0)
    assert 0.5 * promised < vent[-1] < 1.1 * promised  # 0.70 x: partial volumes at the edge
    # resampled, not repainted: intensities stay within the input's, deep white matter far away barely moves
    top = frames[bp.TARGET_STAGE]
    assert x0.min() - 1e-6 <= top.min() and top.max() <= x0.max() + 1e-6
    far = np.abs(top - x0)[ctx.deep_wm].mean()
    near = np.abs(top - x0)[ctx.rois["ventricle"]].mean()
    assert far < 0.1 * near


def test_identity_and_retrieval_see_the_subjects_own_pattern():
    """A map that is its own truth plus a shared change is retrieved and identified; one that is only the shared change
    (what a model ignoring the subject does) is not."""
    rng = np.random.default_rng(0)
    brain = np.ones((6, 6, 6), bool)
    shared = rng.standard_normal((6, 6, 6))
    subjects = {f"s{i}_n{n}": bp.Subject(index=i, seed=i, noise=n, age=70.0, sex=0) for i in range(5) for n in (0, 1)}
    own = {k: rng.standard_normal((6, 6, 6)) for k in subjects}
    truth = {k: shared + own[k] for k in subjects}
    faithful = bp.identity_and_retrieval({k: 0.5 * truth[k] for k in subjects}, truth, subjects, brain)
    assert all(v["identity_corr"] > 0.99 and v["retrieved_self"] == 1.0 for v in faithful.values())
    assert all(v["retrieval_own_corr"] > 0.99 > v["retrieval_other_corr"] for v in faithful.values())
    generic = {k: shared + 0.01 * rng.standard_normal((6, 6, 6)) for k in subjects}
    blind = bp.identity_and_retrieval(generic, truth, subjects, brain)
    assert np.median([v["identity_corr"] for v in blind.values()]) < 0.5
    assert np.mean([v["retrieved_self"] for v in blind.values()]) < 0.6
