"""Synthetic tau-PET cohort: truth, Braak spread, off-target, diagnosis, files, determinism, argument checks (CPU)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nilearn")
nib = pytest.importorskip("nibabel")

from monai_pie.data.synthetic.brain import load_brain_template
from monai_pie.data.synthetic.tau import (
    TAU_GRID_PIXDIM,
    TAU_GRID_SHAPE,
    TAU_GROUND_TRUTH_COLUMNS,
    TauRecipe,
    braak_roi_labels,
    braak_weights,
    synthesize_tau_cohort,
    synthesize_tau_subject,
    tau_diagnosis,
    tau_grid_affine,
)
from monai_pie.vocabulary import TAU_BRAAK_REGIONS

SEED = 11
TIMES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def template():
    return load_brain_template()


@pytest.fixture(scope="module")
def labels(template):
    return braak_roi_labels(template)


@pytest.fixture(scope="module")
def time_series(template):
    """One subject (fixed seed: same anatomy, uptake, off-target and noise) at increasing Braak time."""
    return [synthesize_tau_subject(SEED, t, template) for t in TIMES]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, template):
    out = tmp_path_factory.mktemp("tau") / "cohort"
    summary = synthesize_tau_cohort(out, num_subjects=6, num_preclinical=3, seed=5, progress=False)
    return out, summary


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "ground_truth.csv").open()))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_grid_is_the_brain_bundles_grid_centred_on_the_template(template):
    config = json.loads((REPO / "bundles/brain_mri_ldm/configs/inference.json").read_text())
    assert list(TAU_GRID_PIXDIM) == config["pixdim"] and list(TAU_GRID_SHAPE) == config["image_size"]
    affine = tau_grid_affine(template)
    np.testing.assert_allclose(affine[:3, :3], np.diag(TAU_GRID_PIXDIM))  # RAS, 2.5 mm
    centre = affine @ np.array([*((np.array(TAU_GRID_SHAPE) - 1) / 2), 1.0])
    template_centre = template.affine @ np.array([*((np.array(template.shape) - 1) / 2), 1.0])
    np.testing.assert_allclose(centre, template_centre, atol=1e-9)


def test_subject_is_deterministic_under_seed(template, time_series):
    a = time_series[3]
    b = synthesize_tau_subject(SEED, TIMES[3], template)
    c = synthesize_tau_subject(SEED + 1, TIMES[3], template)
    for key in ("suvr", "load", "off_target"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["truth"] == b["truth"]
    assert not np.array_equal(a["suvr"], c["suvr"]) and not np.array_equal(a["load"], c["load"])
    # Another visit: same subject and truth, fresh noise.
    v1 = synthesize_tau_subject(SEED, TIMES[3], template, visit=1)
    np.testing.assert_array_equal(a["load"], v1["load"])
    assert not np.array_equal(a["suvr"], v1["suvr"])
    rng = np.random.default_rng(SEED)  # a Generator is accepted and consumed
    synthesize_tau_subject(rng, 1.0, template)
    assert rng.random() != np.random.default_rng(SEED).random()


def test_outputs_are_on_the_model_grid(time_series, template):
    res = time_series[4]
    for key, dtype in (("suvr", np.float32), ("load", np.float32), ("off_target", np.uint8)):
        assert res[key].shape == TAU_GRID_SHAPE and res[key].dtype == dtype, key
    np.testing.assert_allclose(res["affine"], tau_grid_affine(template))
    assert np.isfinite(res["suvr"]).all() and res["load"].min() >= 0.0


def test_no_tau_at_time_zero(template, time_series, labels):
    zero = time_series[0]
    assert not zero["load"].any() and zero["truth"]["cortical_load"] == 0.0
    assert all(zero["truth"][f"load_{r}"] == 0.0 for r in TAU_BRAAK_REGIONS)
    # The same subject with the tau term switched off: not one voxel differs.
    tau_free = synthesize_tau_subject(SEED, 0.0, template, recipe=TauRecipe(load_suvr=0.0))
    np.testing.assert_array_equal(zero["suvr"], tau_free["suvr"])
    # With independent noise the Braak-ROI SUVR agrees within noise (5 % per voxel over thousands of voxels) ...
    other_noise = synthesize_tau_subject(SEED, 0.0, template, visit=1, recipe=TauRecipe(load_suvr=0.0))
    roi = labels > 0
    ratio = zero["suvr"][roi].mean() / other_noise["suvr"][roi].mean()
    assert abs(ratio - 1.0) < 0.005, ratio
    # ... while an early-Braak subject shows a clear entorhinal excess.
    entorhinal = labels == 1
    early = time_series[1]["suvr"][entorhinal].mean() / zero["suvr"][entorhinal].mean()
    assert early > 1.1, early


def test_braak_weights():
    np.testing.assert_array_equal(braak_weights(0.0), np.zeros(6))
    grid = np.linspace(0, 6, 25)
    w = np.stack([braak_weights(t) for t in grid])  # (times, stages)
    assert (np.diff(w, axis=0) > 0).all()  # every stage grows with t
    assert (np.diff(w[1:], axis=1) < 0).all()  # an earlier stage always leads
    np.testing.assert_allclose(w[:, 0], np.tanh(grid), atol=1e-12)  # stage 0 with k = 2
    assert w.max() < 1.0


def test_load_grows_with_time_in_braak_order(time_series, template, labels):
    regional = np.array([[r["truth"][f"load_{name}"] for name in TAU_BRAAK_REGIONS] for r in time_series])
    assert (np.diff(regional, axis=0) > 0).all(), regional  # monotonic in every region
    cortical = [r["truth"]["cortical_load"] for r in time_series]
    assert (np.diff(cortical) > 0).all(), cortical
    # Spread order: relative to its final load, an earlier region is always further along (entorhinal first).
    relative = regional / regional[-1]
    for t, row in zip(TIMES[1:-1], relative[1:-1]):
        assert (np.diff(row) < 0).all(), (t, row)
    assert relative[1, 0] > 0.5 and relative[1, -1] < 0.01  # t = 1: entorhinal well under way, frontal not started
    # The image carries it: SUVR in each Braak ROI rises with t.
    suvr = np.array([[r["suvr"][labels == k + 1].mean() for k in range(6)] for r in time_series])
    assert (np.diff(suvr, axis=0) > 0).all(), suvr
    # Measured cortical load equals the mean of the load map over the ROI labels.
    last = time_series[-1]
    assert last["truth"]["cortical_load"] == pytest.approx(float(last["load"][labels > 0].mean()), abs=1e-5)


def test_off_target_is_in_every_subject_and_not_in_the_truth(template, time_series, labels):
    quiet = TauRecipe(off_target_range=(0.0, 0.0))
    full = time_series[-1]
    without = synthesize_tau_subject(SEED, TIMES[-1], template, recipe=quiet)
    np.testing.assert_array_equal(full["load"], without["load"])  # off-target never enters the truth
    assert full["truth"]["cortical_load"] == without["truth"]["cortical_load"]
    mask = full["off_target"] > 0
    assert not without["off_target"].any() and mask.sum() > 1000
    assert full["suvr"][mask].mean() > without["suvr"][mask].mean() + 0.1
    # Off-target sites lie outside the Braak load: what leaks into the mask (interpolation, spread tails) is tiny.
    assert np.percentile(full["load"][mask], 99) < 0.05
    assert full["load"][labels > 0].mean() > 0.5
    for r in time_series:
        assert r["off_target"].any()
        assert all(0.3 <= r["truth"][f"off_target_{s}"] <= 1.0 for s in ("choroid_plexus", "basal_ganglia", "meninges"))


def test_diagnosis_thresholds_and_calibration(template):
    recipe = TauRecipe()
    lo, hi = recipe.diagnosis_thresholds
    values = (0.0, lo - 1e-6, lo, hi - 1e-6, hi, 1.0)
    assert [tau_diagnosis(v) for v in values] == ["CN", "CN", "MCI", "MCI", "AD", "AD"]
    with pytest.raises(ValueError, match="cortical_load"):
        tau_diagnosis(math.nan)
    # The thresholds are the undeformed template subject's cortical load at the recipe's Braak-time bands.
    flat = replace(recipe, displacement_mm=0.0, head_scale_sd=0.0, male_head_scale=0.0)
    for band, threshold in zip(recipe.time_bands, recipe.diagnosis_thresholds):
        measured = synthesize_tau_subject(0, band, template, sex=0, recipe=flat)["truth"]["cortical_load"]
        assert measured == pytest.approx(threshold, abs=2e-3), (band, measured, threshold)


def test_cohort_truth_columns(cohort):
    out, summary = cohort
    rows = _rows(out)
    assert tuple(rows[0]) == TAU_GROUND_TRUTH_COLUMNS and len(rows) == 6 + 3
    for r in rows:
        assert r["diagnosis"] == tau_diagnosis(float(r["cortical_load"]))
        assert int(r["label"]) == (r["diagnosis"] != "CN")
    main = [r for r in rows if r["cohort"] == "main"]
    # Braak times by band: 50 / 25 / 25 % of 6 is 3 CN (here all t = 0 null controls: one per split at least), 2 MCI,
    # 1 AD; diagnoses follow the measured load, so a subject near a band edge may fall into the class below.
    b0, b1 = TauRecipe().time_bands
    times = sorted(float(r["braak_time"]) for r in main)
    assert times[:3] == [0.0] * 3 and all(b0 <= t < b1 for t in times[3:5]) and b1 <= times[5] <= 6.0, times
    assert {"CN", "MCI"} <= {r["diagnosis"] for r in main}
    assert summary["diagnoses"]["main"] == {d: sum(r["diagnosis"] == d for r in main) for d in ("CN", "MCI", "AD")}
    load = np.array([float(r["cortical_load"]) for r in rows])
    cognition = np.array([float(r["cognition"]) for r in rows])
    assert np.corrcoef(load, cognition)[0, 1] < -0.8  # cognition falls with cortical load
    assert all(0.0 <= c <= 30.0 for c in cognition)


def test_preclinical_subjects_are_cn_with_low_varied_load(cohort):
    out, _ = cohort
    pre = [r for r in _rows(out) if r["cohort"] == "preclinical"]
    recipe = TauRecipe()
    assert len(pre) == 3 and all(r["diagnosis"] == "CN" and r["split"] == "preclinical" for r in pre)
    times = [float(r["braak_time"]) for r in pre]
    assert all(recipe.preclinical_time_range[0] <= t <= recipe.preclinical_time_range[1] for t in times)
    load = [float(r["cortical_load"]) for r in pre]
    assert max(load) < recipe.diagnosis_thresholds[0] and max(load) - min(load) > 0.05, load


def test_datalist_is_split_by_subject_with_null_controls(cohort):
    out, summary = cohort
    datalist = json.loads((out / "datalist.json").read_text())
    assert set(datalist) == {"training", "validation", "test", "preclinical"}
    seen: dict[str, str] = {}
    for split, items in datalist.items():
        for e in items:
            assert {"image", "load", "label", "diagnosis", "subject"} <= set(e)
            assert e["subject"] not in seen, (e["subject"], seen.get(e["subject"]), split)
            seen[e["subject"]] = split
            assert e["label"] == int(e["diagnosis"] != "CN")
            assert not Path(e["image"]).is_absolute() and (out / e["image"]).is_file() and (out / e["load"]).is_file()
        if split != "preclinical":  # a t = 0 null control in every split of the main cohort
            assert any(e["braak_time"] == 0.0 for e in items), split
    assert len(seen) == 9 and summary["subjects_per_split"] == {k: len(v) for k, v in datalist.items()}


def test_files_on_the_grid_and_reproducible(cohort, template):
    out, _ = cohort
    affine = tau_grid_affine(template)
    rows = _rows(out)
    for r in rows:
        for key, dtype in (("image", np.float32), ("load", np.float32), ("off_target", np.uint8)):
            img = nib.load(out / r[key])
            assert img.shape == TAU_GRID_SHAPE and img.get_data_dtype() == dtype, (r[key], img.shape)
            np.testing.assert_allclose(img.affine, affine)
        assert np.asarray(nib.load(out / r["off_target"]).dataobj).any()  # off-target in every subject
    rois = nib.load(out / "rois/braak_rois.nii.gz")
    np.testing.assert_allclose(rois.affine, affine)
    assert set(np.unique(np.asarray(rois.dataobj)).tolist()) == set(range(7))
    names = json.loads((out / "rois/braak_rois.json").read_text())
    assert [names[str(k + 1)]["name"] for k in range(6)] == list(TAU_BRAAK_REGIONS)
    assert nib.load(out / "rois/brain_mask.nii.gz").shape == TAU_GRID_SHAPE
    # cohort.json's seed regenerates a subject's files exactly.
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["seed"] == 5 and "licence" in meta["template"] and meta["grid"]["shape"] == list(TAU_GRID_SHAPE)
    r = rows[-1]
    subj = next(s for s in meta["subjects"] if s["subject"] == r["subject"])
    ss = np.random.SeedSequence(subj["seed"]["entropy"], spawn_key=tuple(subj["seed"]["spawn_key"]))
    res = synthesize_tau_subject(ss, float(r["braak_time"]), template)
    np.testing.assert_array_equal(np.asarray(nib.load(out / r["image"]).dataobj), res["suvr"])
    np.testing.assert_array_equal(np.asarray(nib.load(out / r["load"]).dataobj), res["load"])


def test_cohort_is_byte_identical_under_a_seed(tmp_path, template):
    kwargs = {"num_subjects": 2, "num_preclinical": 1, "progress": False}
    synthesize_tau_cohort(tmp_path / "a", seed=3, **kwargs)
    synthesize_tau_cohort(tmp_path / "b", seed=3, **kwargs)
    synthesize_tau_cohort(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (_digest(tmp_path / k) for k in "abc")
    assert a == b and len(a) == 3 * 3 + 3 + 3  # 3 files per subject, 3 ROI files, 3 cohort files
    differ = {k for k in a if a[k] != c[k]}
    assert {"images/sub-000_suvr.nii.gz", "truth/pre-000_load.nii.gz", "masks/sub-001_off_target.nii.gz"} <= differ


def test_refuses_to_overwrite_a_cohort(cohort, tmp_path):
    out, _ = cohort
    before = _digest(out)
    with pytest.raises(FileExistsError, match="output_dir"):
        synthesize_tau_cohort(out, num_subjects=1, num_preclinical=0, progress=False)
    assert _digest(out) == before
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="output_dir"):
        synthesize_tau_cohort(tmp_path, num_subjects=1, num_preclinical=0, progress=False)
    with pytest.raises(NotADirectoryError, match="output_dir"):
        synthesize_tau_cohort(tmp_path / "notes.txt", num_subjects=1, num_preclinical=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_subjects": -1}, "num_subjects"),
        ({"num_subjects": 0}, "num_subjects"),
        ({"num_subjects": 2.5}, "num_subjects"),
        ({"num_preclinical": -1}, "num_preclinical"),
        ({"split": (0.5, 0.2, 0.2)}, "split"),
        ({"split": (0.8, 0.2)}, "split"),
        ({"seed": -1}, "seed"),
    ],
)
def test_cohort_bad_arguments(tmp_path, kwargs, name):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=name):
        synthesize_tau_cohort(out, **{"progress": False, **kwargs})
    assert not out.exists()  # checked before anything is written


def test_cli_reports_a_bad_argument_in_one_line(capsys, tmp_path):
    from monai_pie.apps.cli import main

    with pytest.raises(SystemExit) as err:
        main(["synth", "tau", str(tmp_path / "never"), "--num_subjects", "-2"])
    assert err.value.code == 2
    assert "num_subjects" in capsys.readouterr().err and not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"braak_time": -0.1}, "braak_time"),
        ({"braak_time": 6.5}, "braak_time"),
        ({"braak_time": math.nan}, "braak_time"),
        ({"braak_time": "3"}, "braak_time"),
        ({"sex": 2}, "sex"),
        ({"rng_or_seed": -3}, "rng_or_seed"),
    ],
)
def test_subject_bad_arguments(template, kwargs, name):
    args = {"rng_or_seed": 0, "braak_time": 3.0, **kwargs}
    with pytest.raises(ValueError, match=name):
        synthesize_tau_subject(template=template, **args)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"time_bands": (4.0, 2.0)}, "time_bands"),
        ({"diagnosis_thresholds": (0.5, 0.2)}, "diagnosis_thresholds"),
        ({"cohort_fractions": (0.5, 0.5, 0.5)}, "cohort_fractions"),
        ({"preclinical_time_range": (0.0, 7.0)}, "preclinical_time_range"),
        ({"off_target_range": (1.0, 0.3)}, "off_target_range"),
    ],
)
def test_recipe_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TauRecipe(**kwargs)
