"""Chest X-ray phantoms: ground truth, reports, progression sequences and the cohort writer."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from monai_pie.data.synthetic.cxr import (
    CXR_FINDINGS,
    CXR_MASK_STRUCTURES,
    CXR_PRESENCE_THRESHOLD,
    canonical_finding,
    cxr_report,
    finding_key,
    measure_ctr,
    render_cxr_phantom,
    render_cxr_progression,
    sample_cxr_subject,
    synthesize_cxr_cohort,
)

SEVERITIES = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_render_is_deterministic_and_seed_dependent():
    sev = {"cardiomegaly": 0.6, "pleural effusion": 0.5, "consolidation": 0.4, "edema": 0.7}
    a = render_cxr_phantom(sev, seed=11)
    b = render_cxr_phantom(sev, seed=11)
    c = render_cxr_phantom(sev, seed=12)
    np.testing.assert_array_equal(a["image"], b["image"])
    for k in a["masks"]:
        np.testing.assert_array_equal(a["masks"][k], b["masks"][k])
    assert {k: v for k, v in a.items() if k not in ("image", "masks")} == {
        k: v for k, v in b.items() if k not in ("image", "masks")
    }
    assert np.abs(a["image"] - c["image"]).mean() > 0.01


@pytest.mark.parametrize("size", [32, 64, 200])
def test_image_and_mask_contract(size):
    r = render_cxr_phantom({"pleural effusion": 0.8, "consolidation": 0.8}, seed=2, size=size)
    img, m = r["image"], r["masks"]
    assert img.shape == (size, size) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert set(CXR_MASK_STRUCTURES) <= set(m)
    assert all(v.shape == (size, size) and v.dtype == bool for v in m.values())
    assert m["lungs"].any() and m["heart"].any()
    assert not (m["lungs"] & m["heart"]).any()
    assert not (m["heart"] & ~m["thorax"]).any()
    assert not (m["effusion"] & ~m["lungs"]).any() and not (m["opacity"] & ~m["lungs"]).any()
    # Radiograph look: lungs dark, heart bright, air outside the body black; heart extends to the image right.
    assert img[m["lungs"]].mean() < img[m["heart"]].mean() - 0.25
    cols = np.nonzero(m["heart"].any(axis=0))[0]
    assert cols.mean() > size / 2
    # bones (ribs, spine, clavicles) are brighter than the lung they cross, and a finding does not move them
    assert img[m["bones"] & m["lungs"]].mean() > img[m["lungs"] & ~m["bones"]].mean()
    assert m["bones"][:, size // 2].mean() > 0.5  # the spine runs down the middle
    normal = render_cxr_phantom({}, seed=2, size=size)["masks"]["bones"]
    np.testing.assert_array_equal(normal, m["bones"])


def test_measured_ctr_increases_with_cardiomegaly_and_crosses_half():
    seq = render_cxr_progression("cardiomegaly", SEVERITIES, seed=4)
    ctr = [r["ctr"] for r in seq]
    assert all(b > a for a, b in zip(ctr, ctr[1:])), ctr
    assert 0.40 <= ctr[0] < 0.5 < ctr[-1]
    for r in seq:  # truth is measured from the returned masks
        assert r["ctr"] == pytest.approx(measure_ctr(r["masks"]["heart"], r["masks"]["thorax"])[0])
    # Presence in the report tracks CTR > 0.5 away from the threshold, for several subjects.
    for seed in range(3):
        lo = render_cxr_phantom({"cardiomegaly": CXR_PRESENCE_THRESHOLD - 0.1}, seed=seed)
        hi = render_cxr_phantom({"cardiomegaly": CXR_PRESENCE_THRESHOLD + 0.1}, seed=seed)
        assert lo["ctr"] < 0.5 < hi["ctr"]
        assert "cardiomegaly" not in lo["report"] and "cardiomegaly" in hi["report"]


@pytest.mark.parametrize("side", ["right", "left", "bilateral"])
def test_effusion_height_grows_from_zero_at_the_base(side):
    seq = render_cxr_progression("pleural effusion", SEVERITIES, seed=5, effusion_side=side)
    frac = [r["effusion_fraction"] for r in seq]
    assert frac[0] == 0.0 and not seq[0]["masks"]["effusion"].any()
    assert all(b > a for a, b in zip(frac, frac[1:])), frac
    last = seq[-1]
    eff, lungs = last["masks"]["effusion"], last["masks"]["lungs"]
    half = eff.shape[1] // 2
    right_img, left_img = eff[:, :half].any(), eff[:, half:].any()  # patient's right is the image left
    assert (right_img, left_img) == {"right": (True, False), "left": (False, True), "bilateral": (True, True)}[side]
    # Fluid sits at the lung base: its lowest row is the lung's lowest row on that side.
    cols = slice(0, half) if side == "right" else slice(half, None)
    assert np.nonzero(eff[:, cols].any(axis=1))[0][-1] == np.nonzero(lungs[:, cols].any(axis=1))[0][-1]
    # Meniscus: fluid climbs the lateral wall higher than it stands medially (moderate effusion).
    mid = seq[2]["masks"]["effusion"]
    sub = mid[:, cols][:, ::-1] if side == "right" else mid[:, cols]  # columns from medial to lateral
    top_rows = [np.nonzero(sub[:, j])[0][0] for j in range(sub.shape[1]) if sub[:, j].any()]
    n = len(top_rows)
    assert top_rows[int(0.8 * n)] < top_rows[int(0.3 * n)]
    assert "pleural effusion" in last["report"] and "pleural effusion" not in seq[0]["report"]


def test_opacity_area_grows_and_regions_are_nested():
    seq = render_cxr_progression("consolidation", SEVERITIES, seed=6)
    area = [r["opacity_area_px"] for r in seq]
    assert area[0] == 0 and seq[0]["opacity_fraction"] == 0.0
    assert all(b > a for a, b in zip(area, area[1:])), area
    for a, b in zip(seq, seq[1:]):
        assert not (a["masks"]["opacity"] & ~b["masks"]["opacity"]).any()
    last = seq[-1]
    assert last["opacity_fraction"] == pytest.approx(area[-1] / last["masks"]["lungs"].sum())
    # The opacity is denser than the lung it replaces.
    base, op = seq[0]["image"], last["masks"]["opacity"]
    assert last["image"][op].mean() > base[op].mean() + 0.1


def test_edema_index_grows_from_zero():
    seq = render_cxr_progression("edema", SEVERITIES, seed=7)
    idx = [r["edema_index"] for r in seq]
    assert idx[0] == 0.0
    assert all(b > a for a, b in zip(idx, idx[1:])), idx
    peri = seq[-1]["masks"]["perihilar"]
    measured = (seq[-1]["image"] - seq[0]["image"])[peri].mean()  # same noise, so the difference is the haze
    assert measured == pytest.approx(idx[-1], abs=0.01)


def test_report_names_exactly_the_findings_above_threshold_in_canonical_order():
    thr = CXR_PRESENCE_THRESHOLD
    sev = {"edema": 0.9, "consolidation": thr, "pleural_effusion": thr + 0.01, "Cardiomegaly": thr / 2}
    r = render_cxr_phantom(sev, seed=1)
    assert r["report"] == "A chest X-ray image, pleural effusion, edema"
    assert r["labels"] == {"cardiomegaly": 0, "pleural_effusion": 1, "consolidation": 0, "edema": 1}
    assert render_cxr_phantom(seed=1)["report"] == "A chest X-ray image, no finding"
    everything = render_cxr_phantom(dict.fromkeys(CXR_FINDINGS, 1.0), seed=1)["report"]
    assert everything == "A chest X-ray image, cardiomegaly, pleural effusion, consolidation, edema"
    assert cxr_report(["edema", "cardiomegaly"]) == "A chest X-ray image, cardiomegaly, edema"
    assert cxr_report([]) == "A chest X-ray image, no finding"
    assert cxr_report(["Pleural_Effusion"]) == "A chest X-ray image, pleural effusion"
    assert canonical_finding("Pleural_Effusion") == "pleural effusion"
    assert finding_key("pleural effusion") == "pleural_effusion"


_REGION = {"cardiomegaly": "heart", "pleural effusion": "effusion", "consolidation": "opacity", "edema": "perihilar"}


@pytest.mark.parametrize("finding", CXR_FINDINGS)
def test_progression_keeps_anatomy_and_noise_fixed(finding):
    seq = render_cxr_progression(finding, [0.0, 0.5, 1.0], seed=8)
    region = np.zeros_like(seq[0]["masks"]["lungs"])
    for r in seq:
        region |= r["masks"][_REGION[finding]]
    far = ~ndimage.binary_dilation(region, iterations=8)
    assert far.mean() > 0.7
    diff = np.abs(seq[-1]["image"] - seq[0]["image"])
    assert diff[far].mean() < 2e-3 and np.quantile(diff[far], 0.995) < 0.02
    assert diff[region].mean() > 0.05  # while the finding itself does change
    if finding != "cardiomegaly":
        for r in seq:
            for k in ("lungs", "heart", "thorax"):
                np.testing.assert_array_equal(r["masks"][k], seq[0]["masks"][k])


def test_progression_with_several_findings_and_base():
    seq = render_cxr_progression(["edema", "pleural effusion"], [0.1, 0.9], base_severities={"cardiomegaly": 0.8})
    assert [r["severity"]["edema"] for r in seq] == [0.1, 0.9]
    assert all(r["severity"]["cardiomegaly"] == 0.8 for r in seq)
    assert seq[-1]["report"] == "A chest X-ray image, cardiomegaly, pleural effusion, edema"


def test_bad_arguments_raise_errors_naming_them():
    with pytest.raises(ValueError, match=r"severities\['edema'\].*\[0, 1\]"):
        render_cxr_phantom({"edema": 1.5})
    with pytest.raises(ValueError, match="severities"):
        render_cxr_phantom({"cardiomegaly": -0.1})
    with pytest.raises(ValueError, match="severities"):
        render_cxr_phantom({"cardiomegaly": float("nan")})
    with pytest.raises(ValueError, match="`severities`: unknown finding 'pneumonia'"):
        render_cxr_phantom({"pneumonia": 0.5})
    with pytest.raises(ValueError, match=r"severities\['edema'\]"):
        render_cxr_phantom({"edema": "high"})
    with pytest.raises(TypeError, match="severities"):
        render_cxr_phantom(0.5)
    with pytest.raises(ValueError, match="`size`.*>= 32"):
        render_cxr_phantom(size=16)
    with pytest.raises(ValueError, match="`size`"):
        render_cxr_phantom(size=64.5)
    with pytest.raises(ValueError, match="`effusion_side`"):
        render_cxr_phantom(effusion_side="middle")
    with pytest.raises(ValueError, match="`seed`"):
        sample_cxr_subject(-1)
    with pytest.raises(ValueError, match="`finding`: unknown finding 'pneumothorax'"):
        render_cxr_progression("pneumothorax", [0.5])
    with pytest.raises(ValueError, match="`severities`"):
        render_cxr_progression("edema", [])
    with pytest.raises(ValueError, match=r"unknown finding\(s\) \['fracture'\] in `findings`"):
        cxr_report(["edema", "fracture"])


# ------------------------------------------------------------------------------------------------- cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    summary = synthesize_cxr_cohort(out, num_images=14, size=64, seed=3, prevalence=0.5, progress=False)
    return out, summary


def test_cohort_files_and_tables(cohort):
    out, summary = cohort
    assert summary["num_images"] == 14 and summary["counts"] == {"training": 11, "validation": 2, "test": 1}
    ids = [f"cxr-{i:04d}" for i in range(14)]
    for cid in ids:
        with Image.open(out / "images" / f"{cid}.png") as im:
            assert im.mode == "L" and im.size == (64, 64)
        for s in CXR_MASK_STRUCTURES:
            assert (out / "masks" / f"{cid}_{s}.png").is_file()
    assert not [p for p in out.rglob(".*")], "temporary files left behind"

    datalist = json.loads((out / "datalist.json").read_text())
    assert set(datalist) == {"training", "validation", "test"}
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [11, 2, 1]
    split_ids = [{it["id"] for it in datalist[k]} for k in datalist]
    assert sum(len(s) for s in split_ids) == 14 and set().union(*split_ids) == set(ids)
    item = datalist["training"][0]
    assert item["image"].startswith("images/") and (out / item["image"]).is_file()
    assert all((out / p).is_file() for p in item["masks"].values())
    truth_keys = ("report", "ctr", "effusion_fraction", "opacity_fraction", "edema_index")
    for key in (*truth_keys, *map(finding_key, CXR_FINDINGS)):
        assert key in item

    # Labels, reports and images agree with a fresh render of the recorded subject seed.
    items = [it for k in datalist for it in datalist[k]]
    for it in items[:3]:
        sev = {f: it[f"severity_{finding_key(f)}"] for f in CXR_FINDINGS}
        r = render_cxr_phantom(sev, seed=it["seed"], size=64)
        assert r["report"] == it["report"]
        png = np.asarray(Image.open(out / it["image"]), dtype=np.float32) / 255
        assert np.abs(png - r["image"]).max() <= 0.5 / 255 + 1e-3
        heart = np.asarray(Image.open(out / it["masks"]["heart"])) > 127
        np.testing.assert_array_equal(heart, r["masks"]["heart"])

    with open(out / "ground_truth.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 14 and {r["id"] for r in rows} == set(ids)
    with open(out / "labels.csv", newline="") as fh:
        labels = list(csv.DictReader(fh))
    assert list(labels[0]) == ["Path", "Cardiomegaly", "Pleural Effusion", "Consolidation", "Edema", "No Finding"]
    for row in labels:
        positives = [row[c] for c in ("Cardiomegaly", "Pleural Effusion", "Consolidation", "Edema")]
        assert set(positives) <= {"1.0", "0.0"}
        assert row["No Finding"] == ("1.0" if "1.0" not in positives else "0.0")
    assert 0 < sum(r["cardiomegaly"] for r in items) < 14  # prevalence 0.5 gives a mix


def test_cohort_is_deterministic_and_refuses_non_empty_folder(cohort, tmp_path):
    out, _ = cohort
    again = tmp_path / "again"
    synthesize_cxr_cohort(again, num_images=14, size=64, seed=3, prevalence=0.5, progress=False)
    assert (again / "datalist.json").read_text() == (out / "datalist.json").read_text()
    assert (again / "images" / "cxr-0005.png").read_bytes() == (out / "images" / "cxr-0005.png").read_bytes()
    # Image i does not depend on the cohort size.
    small = tmp_path / "small"
    synthesize_cxr_cohort(small, num_images=3, size=64, seed=3, prevalence=0.5, progress=False)
    assert (small / "images" / "cxr-0002.png").read_bytes() == (out / "images" / "cxr-0002.png").read_bytes()

    with pytest.raises(FileExistsError, match="not empty"):
        synthesize_cxr_cohort(again, num_images=2, size=64, progress=False)
    synthesize_cxr_cohort(again, num_images=2, size=64, seed=9, overwrite=True, progress=False)
    assert sum(len(v) for v in json.loads((again / "datalist.json").read_text()).values()) == 2


def test_cohort_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="`split`"):
        synthesize_cxr_cohort(tmp_path / "a", num_images=4, split=(0.5, 0.5, 0.5), progress=False)
    with pytest.raises(ValueError, match="`prevalence`.*unknown finding 'fracture'"):
        synthesize_cxr_cohort(tmp_path / "b", num_images=4, prevalence={"fracture": 0.1}, progress=False)
    with pytest.raises(ValueError, match=r"`prevalence\['edema'\]`"):
        synthesize_cxr_cohort(tmp_path / "c", num_images=4, prevalence={"edema": 2.0}, progress=False)
    with pytest.raises(ValueError, match="`num_images`"):
        synthesize_cxr_cohort(tmp_path / "d", num_images=0, progress=False)
    with pytest.raises(ValueError, match="`size`"):
        synthesize_cxr_cohort(tmp_path / "e", num_images=2, size=8, progress=False)
    assert not (tmp_path / "a").exists()  # arguments are checked before anything is written
