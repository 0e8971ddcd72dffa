"""The few-step parity rule: a sampler holds parity unless a measure falls short of the reference by more than the
stated margin; each shortfall is named."""

from __future__ import annotations

import copy

import pytest

from monai_pie.validation.few_step import PARITY, PARITY_MODES, Sampler, parity


def row() -> dict:
    mode = {"ventricle_ml_ratio": 0.9, "hippocampal_gm_ml_ratio": 1.1, "r2": 0.2, "identity_corr": 0.3,
            "null_whole_brain_ratio": 0.1}
    gen = {"conditioning_gap": {"hippocampal_gm_ml": -0.5, "ventricle_ml": 4.0}, "ms_ssim": 0.95, "fd": 2.0,
           "fd_real_floor": 0.5}
    return {"progression": {m: dict(mode) for m in PARITY_MODES}, "generation": gen}


@pytest.mark.parametrize("path, value, named", [
    (("progression", PARITY_MODES[0], "ventricle_ml_ratio"), 0.9 - PARITY["ratio_gap"] - 0.01, "ventricle_ml size"),
    (("progression", PARITY_MODES[1], "r2"), 0.2 - PARITY["r2_gap"] - 0.01, "R^2"),
    (("progression", PARITY_MODES[0], "identity_corr"), 0.2, "identity"),
    (("progression", PARITY_MODES[1], "null_whole_brain_ratio"), 0.2, "null whole brain"),
    (("generation", "ms_ssim"), 0.97, "diversity"),
    (("generation", "fd"), 3.1, "Frechet"),
    (("generation", "conditioning_gap", "ventricle_ml"), 2.9, "conditioning gap ventricle_ml"),
])
def test_a_shortfall_beyond_the_margin_is_named(path, value, named):
    ref, worse = row(), row()
    target = worse
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert parity(copy.deepcopy(ref), ref) == []
    short = parity(worse, ref)
    assert len(short) == 1 and named in short[0]


def test_within_the_margin_or_better_holds_parity():
    ref, close = row(), row()
    close["progression"][PARITY_MODES[0]]["ventricle_ml_ratio"] = 0.95  # closer to 1 than the reference
    close["progression"][PARITY_MODES[1]]["r2"] = 0.2 - PARITY["r2_gap"] / 2
    close["generation"]["fd"] = 2.0 * PARITY["fd_factor"] - 0.01
    assert parity(close, ref) == []


def test_a_sampler_names_a_missing_overlay():
    with pytest.raises(FileNotFoundError, match="no_such.json"):
        Sampler("x", 10, "no_such.json").overrides("brain_mri_ldm")


def test_the_default_sampler_runs_as_the_bundle_so_its_recorded_edits_are_reused():
    assert Sampler("default", 50).run_overrides("brain_mri_progression") is None  # the evaluation's own run
    assert Sampler("fast", 10).run_overrides("brain_mri_progression") == {"num_inference_steps": 10}
    flow = Sampler("flow", 50, "rectified_flow.json").run_overrides("brain_mri_progression")
    assert "num_inference_steps" not in flow and "model_path" in flow  # the overlay's weights differ, steps do not


def test_parity_is_told_per_use():
    from monai_pie.validation.few_step import parity_by_scope

    short = ["PIE, bundle defaults: R^2"]
    assert parity_by_scope(short, PARITY_MODES) == {PARITY_MODES[0]: False, PARITY_MODES[1]: True, "generation": True}
    assert parity_by_scope(["generation: diversity"], PARITY_MODES)["generation"] is False


@pytest.mark.parametrize("sampler, modes, match", [
    (Sampler("flow", 10, "rectified_flow.json"), ("longitudinal counterfactual (tuned)",), "weights of their own"),
    (Sampler("fast", 10), ("no such mode",), "not in"),
])
def test_a_run_that_cannot_be_measured_fails_before_anything_runs(sampler, modes, match, tmp_path):
    from monai_pie.validation.few_step import compare_samplers

    with pytest.raises(ValueError, match=match):
        compare_samplers(str(tmp_path), [sampler], modes=modes, work_dir=str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_the_default_sampler_reuses_the_evaluation_folder_only_when_it_holds_this_very_run(tmp_path):
    import json

    from monai_pie.bundle_tools import bundle_dir, parse_bundle
    from monai_pie.validation import few_step
    from monai_pie.validation.brain_protocol import EDIT_TARGETS, Subject, edit_run
    from monai_pie.validation.protocol import _run_record, weights_digest
    from monai_pie.validation.settings import ProgressionSettings

    bundle = bundle_dir("brain_mri_progression")
    settings = ProgressionSettings.from_config(parse_bundle(bundle).config)
    subjects = [Subject(0, 900000, 0, 70.0, 1, path=str(tmp_path / "s000_n0.nii.gz"))]
    mode, default = PARITY_MODES[0], Sampler("DDIM 50 (default)", 50)
    shared = tmp_path / "PIE__bundle_defaults"

    def where(subs):
        return few_step._edit_run(bundle, settings, subs, tmp_path, default, mode, None, 1)[0]["out_dir"]

    assert where(subjects) != shared  # nothing recorded there: the sampler's own folder
    run = edit_run(bundle, None, settings, subjects, EDIT_TARGETS, shared)[0]
    shared.mkdir()
    record = _run_record(settings, run["items"], None, weights_digest(bundle, None))
    (shared / "run.json").write_text(json.dumps({"record": record, "frames": [["a"], ["b"]]}))
    assert where(subjects) == shared  # the evaluation's record of this very run: reused
    other = [Subject(1, 900001, 0, 71.0, 0, path=str(tmp_path / "s001_n0.nii.gz"))]
    assert where(other) != shared  # another run would overwrite the evaluation's record: kept apart
