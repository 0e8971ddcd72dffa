"""Synthetic brain cohort: determinism, effect directions, ground truth, files and argument checks (CPU, < 30 s)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nilearn")
nib = pytest.importorskip("nibabel")

from monai_pie.data.synthetic.brain import (  # noqa: E402
    GROUND_TRUTH_COLUMNS,
    BrainRecipe,
    _split_counts,
    diagnosis_from_stage,
    load_brain_template,
    synthesize_brain_cohort,
    synthesize_brain_subject,
)

SEED = 7
STAGES = (0.0, 0.3, 0.5, 0.8, 1.0)


@pytest.fixture(scope="module")
def template():
    return load_brain_template()


@pytest.fixture(scope="module")
def stage_series(template):
    """One subject (fixed seed: same deformation, bias and noise) at increasing disease stage, age 70."""
    return [synthesize_brain_subject(SEED, s, 70.0, 1, template) for s in STAGES]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, template):
    out = tmp_path_factory.mktemp("cohort") / "brain"
    summary = synthesize_brain_cohort(
        out, num_subjects=4, num_longitudinal=1, visits=3, seed=3, split=(0.5, 0.25, 0.25), progress=False
    )
    return out, summary


def test_template(template):
    assert template.shape == (99, 117, 95)
    np.testing.assert_allclose(np.diag(template.affine), [2.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(template.gm + template.wm + template.csf, template.mask, atol=1e-6)
    assert 950 < template.gm.sum() * template.voxel_ml < 1070  # the data card's 1008 ml
    assert template.hippocampal_roi.sum() > 0 and template.ventricle_roi.sum() > 0
    assert not (template.hippocampal_roi & template.ventricle_roi).any()
    with pytest.raises(ValueError):
        template.gm[50, 50, 50] = 0.0  # cached and shared: must be read-only


def test_subject_is_deterministic_under_seed(template, stage_series):
    a = stage_series[2]
    b = synthesize_brain_subject(SEED, 0.5, 70.0, 1, template)
    c = synthesize_brain_subject(SEED + 1, 0.5, 70.0, 1, template)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["tissue"], b["tissue"])
    assert a["truth"] == b["truth"]
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["tissue"], c["tissue"])
    # Another visit of the same subject: same anatomy, fresh noise.
    v1 = synthesize_brain_subject(SEED, 0.5, 70.0, 1, template, visit=1)
    np.testing.assert_array_equal(a["tissue"], v1["tissue"])
    assert not np.array_equal(a["image"], v1["image"])
    # A Generator is accepted, and consumed: it is not reset to a fixed stream.
    rng = np.random.default_rng(SEED)
    synthesize_brain_subject(rng, 0.4, 72.0, 0, template)
    assert rng.random() != np.random.default_rng(SEED).random()


def test_outputs_and_truth_are_consistent(stage_series, template):
    res = stage_series[2]
    image, tissue = res["image"], res["tissue"]
    assert image.shape == template.shape and image.dtype == np.float32 and np.isfinite(image).all()
    assert tissue.shape == (3, *template.shape) and tissue.min() >= 0.0
    assert tissue.sum(0).max() <= 1.0 + 1e-5
    np.testing.assert_allclose(tissue * 255, np.rint(tissue * 255), atol=1e-3)  # quantised truth
    ml = template.voxel_ml
    truth = res["truth"]
    assert truth["gm_volume_ml"] == pytest.approx(tissue[0].sum(dtype=np.float64) * ml, abs=1e-2)
    assert truth["hippocampal_gm_ml"] == pytest.approx(tissue[0][template.hippocampal_roi].sum() * ml, abs=1e-2)
    assert truth["ventricle_volume_ml"] == pytest.approx(tissue[2][template.ventricle_roi].sum() * ml, abs=1e-2)
    assert truth["diagnosis"] == "MCI" and truth["stage"] == 0.5 and truth["sex"] == 1
    assert truth["min_jacobian"] > 0.5  # the random deformation does not fold
    # Brighter where the tissue is WM: the intensity model is applied.
    wm, gm, csf = (image[tissue[k] > 0.9].mean() for k in (1, 0, 2))
    assert wm > gm > csf, (wm, gm, csf)


def _check_volumes_move_with_stage(series, min_gm_loss, min_hip_ratio, min_vent_ratio):
    gm = [r["truth"]["gm_volume_ml"] for r in series]
    hip = [r["truth"]["hippocampal_gm_ml"] for r in series]
    vent = [r["truth"]["ventricle_volume_ml"] for r in series]
    icv = {r["truth"]["icv_ml"] for r in series}
    assert all(a > b for a, b in zip(gm, gm[1:])), gm
    assert all(a > b for a, b in zip(hip, hip[1:])), hip
    assert all(a < b for a, b in zip(vent, vent[1:])), vent
    assert len(icv) == 1  # lost tissue becomes CSF; the intracranial volume is the subject's
    # Measurable effects, hippocampal loss relatively larger than whole-brain loss.
    gm_loss, hip_loss = 1 - gm[-1] / gm[0], 1 - hip[-1] / hip[0]
    assert gm_loss > min_gm_loss and hip_loss > min_hip_ratio * gm_loss, (gm_loss, hip_loss)
    assert vent[-1] / vent[0] > min_vent_ratio


@pytest.fixture(scope="module")
def partial_volume_series(template):
    recipe = BrainRecipe(atrophy="partial_volume")
    return [synthesize_brain_subject(SEED, s, 70.0, 1, template, recipe=recipe) for s in STAGES]


def test_partial_volume_atrophy_is_monotonic_in_stage(partial_volume_series):
    _check_volumes_move_with_stage(partial_volume_series, 0.03, 3, 1.4)
    with pytest.raises(ValueError, match="log_jacobian"):  # fading tissue has no Jacobian
        synthesize_brain_subject(SEED, 0.5, 70.0, 1, recipe=BrainRecipe(atrophy="partial_volume"), log_jacobian=True)
    # Pointwise: GM never grows, CSF never shrinks with stage.
    for a, b in zip(partial_volume_series, partial_volume_series[1:]):
        assert (b["tissue"][0] <= a["tissue"][0]).all()
        assert (b["tissue"][2] >= a["tissue"][2]).all()


def test_deformation_atrophy_moves_tissue(stage_series, template):
    _check_volumes_move_with_stage(stage_series, 0.01, 5, 1.3)
    first, last = stage_series[0], stage_series[-1]
    # Tissue moves instead of fading: pure voxels stay pure. In-place GM -> CSF replacement would create
    # intermediate (partial-volume) voxels; here their count barely changes while tissue volume falls.
    def mixed(r):
        g, c = r["tissue"][0], r["tissue"][2]
        return int(((g > 0.2) & (c > 0.2)).sum())

    assert mixed(last) < 1.15 * mixed(first), (mixed(first), mixed(last))


def test_deformation_truth_jacobian(template):
    recipe = BrainRecipe()
    base = synthesize_brain_subject(SEED, 0.0, 50.0, 1, template, log_jacobian=True)  # no atrophy below age_ref
    np.testing.assert_allclose(base["log_jacobian"], 0.0, atol=1e-6)
    sick = synthesize_brain_subject(SEED, 1.0, 85.0, 1, template, log_jacobian=True)
    lj = sick["log_jacobian"]
    assert lj.shape == template.shape and np.isfinite(lj).all()
    brain = template.mask > 0
    hip = template.hippocampal_roi
    vent = template.ventricles
    assert lj[vent].mean() > 0.2  # ventricles expand
    assert lj[hip].mean() < -0.05  # hippocampi shrink
    # The Jacobian predicts the tissue change: a visit voxel y holds tissue from a baseline region exp(-logJ(y)) its
    # size, so the change is the sum of T_visit (1 - exp(-logJ)).
    tissue1 = sick["tissue"][0] + sick["tissue"][1]
    predicted = float((tissue1 * (1.0 - np.exp(-lj)))[brain].sum() * template.voxel_ml)
    measured = (sick["truth"]["gm_volume_ml"] + sick["truth"]["wm_volume_ml"]
                - base["truth"]["gm_volume_ml"] - base["truth"]["wm_volume_ml"])
    assert measured < 0 and predicted < 0
    assert abs(predicted - measured) < 0.35 * abs(measured), (predicted, measured)
    with pytest.raises(RuntimeError, match="folds"):
        from monai_pie.data.synthetic._brain_atrophy import log_jacobian_of_pullback

        log_jacobian_of_pullback(template, 1.0, 70.0, BrainRecipe(ventricle_expansion_at_ad=2.5))
    with pytest.raises(ValueError, match="atrophy"):
        BrainRecipe(atrophy="melting")
    assert recipe.atrophy == "deformation"


def test_age_causes_mild_atrophy(template, stage_series):
    young = stage_series[0]["truth"]  # age 70, stage 0
    old = synthesize_brain_subject(SEED, 0.0, 88.0, 1, template)["truth"]
    assert old["gm_volume_ml"] < young["gm_volume_ml"]
    assert old["hippocampal_gm_ml"] < young["hippocampal_gm_ml"]
    assert old["ventricle_volume_ml"] > young["ventricle_volume_ml"]
    assert 1 - old["gm_volume_ml"] / young["gm_volume_ml"] < 0.15  # mild


def test_diagnosis_thresholds():
    assert [diagnosis_from_stage(s) for s in (0.0, 0.3299, 0.33, 0.6599, 0.66, 1.0)] == [
        "CN",
        "CN",
        "MCI",
        "MCI",
        "AD",
        "AD",
    ]
    for bad in (-0.01, 1.01, math.nan):
        with pytest.raises(ValueError, match="stage"):
            diagnosis_from_stage(bad)


def test_split_counts():
    assert _split_counts(40, (0.7, 0.15, 0.15)) == [28, 6, 6]
    assert _split_counts(4, (0.5, 0.25, 0.25)) == [2, 1, 1]
    assert _split_counts(3, (0.7, 0.15, 0.15)) == [1, 1, 1]
    assert _split_counts(1, (0.7, 0.15, 0.15)) == [1, 0, 0]
    assert _split_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]


def _entries(out: Path) -> list[tuple[str, dict]]:
    datalist = json.loads((out / "datalist.json").read_text())
    assert set(datalist) == {"training", "validation", "test"}
    return [(split, e) for split, items in datalist.items() for e in items]


def test_cohort_datalist_and_files(cohort, template):
    out, summary = cohort
    entries = _entries(out)
    assert summary["num_images"] == len(entries) == 4 + 2  # one subject with 3 visits
    splits_of: dict[str, set[str]] = {}
    for split, e in entries:
        splits_of.setdefault(e["subject_id"], set()).add(split)
        assert {"image", "tissue", "age", "sex", "stage", "diagnosis", "subject_id", "visit"} <= set(e)
        assert e["diagnosis"] == diagnosis_from_stage(e["stage"])
    assert len(splits_of) == 4
    assert all(len(s) == 1 for s in splits_of.values()), splits_of  # split by subject
    assert {next(iter(s)) for s in splits_of.values()} == {"training", "validation", "test"}

    rows = list(csv.DictReader((out / "ground_truth.csv").open()))
    assert tuple(rows[0]) == GROUND_TRUTH_COLUMNS and len(rows) == len(entries)
    by_image = {r["image"]: r for r in rows}
    for split, e in entries:
        img = nib.load(out / e["image"])
        assert img.shape == template.shape and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, template.affine)
        tis = nib.load(out / e["tissue"])
        assert tis.shape == (*template.shape, 3)
        np.testing.assert_allclose(tis.affine, template.affine)
        row = by_image[e["image"]]
        assert row["split"] == split and float(row["gm_volume_ml"]) == e["gm_volume_ml"]
        gm = np.asarray(tis.dataobj[..., 0])
        assert float(gm.sum()) * template.voxel_ml == pytest.approx(e["gm_volume_ml"], rel=1e-5)
    for name in ("brain_mask", "hippocampal_roi", "ventricle_roi"):
        roi = nib.load(out / "rois" / f"{name}.nii.gz")
        np.testing.assert_allclose(roi.affine, template.affine)
    np.testing.assert_array_equal(
        np.asarray(nib.load(out / "rois/hippocampal_roi.nii.gz").dataobj) > 0, template.hippocampal_roi
    )
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["seed"] == 3 and meta["parameters"]["num_subjects"] == 4 and "licence" in meta["template"]


def test_cohort_longitudinal_visits(cohort):
    out, _ = cohort
    by_subject: dict[str, list[dict]] = {}
    for _, e in _entries(out):
        by_subject.setdefault(e["subject_id"], []).append(e)
    series = [sorted(v, key=lambda e: e["visit"]) for v in by_subject.values() if len(v) > 1]
    assert len(series) == 1 and len(series[0]) == 3
    visits = series[0]
    assert [e["visit"] for e in visits] == [0, 1, 2]
    assert all(a["age"] < b["age"] for a, b in zip(visits, visits[1:]))
    assert all(a["stage"] <= b["stage"] for a, b in zip(visits, visits[1:]))
    assert len({e["sex"] for e in visits}) == 1 and len({e["icv_ml"] for e in visits}) == 1
    assert visits[-1]["gm_volume_ml"] < visits[0]["gm_volume_ml"]


def test_cohort_image_is_reproducible_in_memory(cohort, template):
    """cohort.json's per-subject seed regenerates the image on disk exactly."""
    out, _ = cohort
    meta = json.loads((out / "cohort.json").read_text())
    split, e = _entries(out)[-1]
    subj = next(s for s in meta["subjects"] if s["subject_id"] == e["subject_id"])
    ss = np.random.SeedSequence(subj["seed"]["entropy"], spawn_key=tuple(subj["seed"]["spawn_key"]))
    res = synthesize_brain_subject(ss, e["stage"], e["age"], e["sex"], template, visit=e["visit"])
    np.testing.assert_array_equal(np.asarray(nib.load(out / e["image"]).dataobj), res["image"])


def test_cohort_over_processes_is_the_same_cohort(cohort, tmp_path):
    """``workers`` renders subjects in other processes; the files and records are those of the serial run."""
    out, _ = cohort
    par = tmp_path / "par"
    synthesize_brain_cohort(par, num_subjects=4, num_longitudinal=1, visits=3, seed=3, split=(0.5, 0.25, 0.25),
                            progress=False, workers=2)
    for name in ("datalist.json", "ground_truth.csv"):
        assert (par / name).read_text() == (out / name).read_text()
    assert json.loads((par / "cohort.json").read_text())["subjects"] == json.loads(
        (out / "cohort.json").read_text())["subjects"]
    for _, e in _entries(out):
        for key in ("image", "tissue"):
            np.testing.assert_array_equal(np.asarray(nib.load(par / e[key]).dataobj),
                                          np.asarray(nib.load(out / e[key]).dataobj))


def test_refuses_non_empty_folder(tmp_path, cohort):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("keep me")
    with pytest.raises(FileExistsError, match="output_dir"):
        synthesize_brain_cohort(tmp_path, num_subjects=1, num_longitudinal=0, progress=False)
    assert user_file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(NotADirectoryError, match="output_dir"):
        synthesize_brain_cohort(user_file, num_subjects=1, num_longitudinal=0, progress=False)
    summary = synthesize_brain_cohort(tmp_path, num_subjects=1, num_longitudinal=0, overwrite=True, progress=False)
    assert summary["num_images"] == 1 and user_file.read_text() == "keep me"
    assert not list(tmp_path.rglob(".*.tmp*"))  # no temporary files left behind


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_subjects": 0}, "num_subjects"),
        ({"num_subjects": 2.5}, "num_subjects"),
        ({"split": (0.5, 0.2, 0.2)}, "split"),
        ({"split": (0.8, 0.2)}, "split"),
        ({"split": (1.2, -0.1, -0.1)}, "split"),
        ({"num_subjects": 2, "num_longitudinal": 3}, "num_longitudinal"),
        ({"visits": 0}, "visits"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_cohort_bad_arguments(tmp_path, kwargs, name):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=name):
        synthesize_brain_cohort(out, **{"progress": False, **kwargs})
    assert not out.exists()  # checked before anything is written


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"stage": 1.5}, "stage"),
        ({"stage": -0.2}, "stage"),
        ({"stage": math.nan}, "stage"),
        ({"age": math.inf}, "age"),
        ({"sex": 2}, "sex"),
        ({"rng_or_seed": -3}, "rng_or_seed"),
    ],
)
def test_subject_bad_arguments(template, kwargs, name):
    args = {"rng_or_seed": 0, "stage": 0.5, "age": 70.0, "sex": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        synthesize_brain_subject(template=template, **args)
