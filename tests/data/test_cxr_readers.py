"""Readers for users' chest X-ray data: CheXpert CSVs, image + report pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_pie.data.synthetic.cxr import synthesize_cxr_cohort
from monai_pie.data.cxr_readers import (
    read_chexpert_csv,
    read_image_report_pairs,
    report_to_labels,
    report_to_prompt,
)



def _write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path)
    return path


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


# --------------------------------------------------------------------------------------------- CheXpert CSV


def test_labels_csv_round_trips_to_the_cohort_reports(tmp_path):
    out = tmp_path / "cohort"
    synthesize_cxr_cohort(out, num_images=10, size=48, seed=5, prevalence=0.5, progress=False)
    datalist = json.loads((out / "datalist.json").read_text())
    expected = {str((out / it["image"]).resolve()): it for k in datalist for it in datalist[k]}
    items = read_chexpert_csv(out / "labels.csv")
    assert len(items) == 10
    for it in items:
        ref = expected[it["image"]]
        assert Path(it["image"]).is_absolute()
        assert it["report"] == ref["report"]
        for key in ("cardiomegaly", "pleural_effusion", "consolidation", "edema"):
            assert it[key] == ref[key]
    assert {it["report"] for it in items} != {"A chest X-ray image, no finding"}


@pytest.fixture
def chexpert(tmp_path):
    for name in ("a", "b", "c"):
        _write_png(tmp_path / f"{name}.png", np.zeros((8, 8), np.uint8))
    csv_path = _write_csv(
        tmp_path / "train.csv",
        """
Path,Sex,No Finding,Cardiomegaly,Lung Opacity,Edema,Pleural Effusion,Consolidation
a.png,F,,1.0,,-1.0,0.0,
b.png,M,1.0,0.0,,,,
c.png,F,,-1.0,1.0,1.0,1.0,0.0
""",
    )
    return tmp_path, csv_path


def test_read_chexpert_csv_values_and_uncertainty_policies(chexpert):
    root, csv_path = chexpert
    zero = read_chexpert_csv(csv_path)
    assert [it["report"] for it in zero] == [
        "A chest X-ray image, cardiomegaly",
        "A chest X-ray image, no finding",
        "A chest X-ray image, pleural effusion, edema",
    ]
    assert zero[0] == {
        "image": str((root / "a.png").resolve()),
        "report": "A chest X-ray image, cardiomegaly",
        "cardiomegaly": 1,
        "pleural_effusion": 0,
        "consolidation": 0,
        "edema": 0,
    }
    one = read_chexpert_csv(csv_path, uncertain="one")
    assert one[0]["report"] == "A chest X-ray image, cardiomegaly, edema"
    assert one[2]["report"] == "A chest X-ray image, cardiomegaly, pleural effusion, edema"
    ignored = read_chexpert_csv(csv_path, uncertain="ignore")
    assert [Path(it["image"]).name for it in ignored] == ["b.png"]
    # Any CheXpert column, any spelling; prompt order follows `findings`.
    custom = read_chexpert_csv(csv_path, findings=["edema", "lung_opacity"])
    assert custom[2]["report"] == "A chest X-ray image, edema, lung opacity"
    assert set(custom[2]) == {"image", "report", "edema", "lung_opacity"}
    # image_root overrides the CSV folder.
    moved = read_chexpert_csv(csv_path, image_root=root, check_files=True)
    assert moved[1]["image"] == str((root / "b.png").resolve())


def test_read_chexpert_csv_errors(chexpert, tmp_path):
    root, csv_path = chexpert
    no_path = _write_csv(tmp_path / "nopath.csv", "Image,Cardiomegaly\na.png,1")
    with pytest.raises(ValueError, match="no path column 'Path'.*columns are \\['Image', 'Cardiomegaly'\\]"):
        read_chexpert_csv(no_path)
    with pytest.raises(ValueError, match=r"\['Pneumonia', 'fracture'\].*not in"):
        read_chexpert_csv(csv_path, findings=["cardiomegaly", "Pneumonia", "fracture"])
    with pytest.raises(ValueError, match="No Finding"):
        read_chexpert_csv(csv_path, findings=["No Finding"])
    with pytest.raises(ValueError, match="`uncertain`"):
        read_chexpert_csv(csv_path, uncertain="maybe")
    bad_value = _write_csv(tmp_path / "bad.csv", "Path,Cardiomegaly,Edema,Pleural Effusion,Consolidation\na.png,2,,,")
    with pytest.raises(ValueError, match="line 2, column 'Cardiomegaly'.*'2'"):
        read_chexpert_csv(bad_value, image_root=root)
    rows = "\n".join(f"missing_{i}.png,1,0,0,0" for i in range(8))
    missing = _write_csv(tmp_path / "missing.csv", "Path,Cardiomegaly,Edema,Pleural Effusion,Consolidation\n" + rows)
    with pytest.raises(FileNotFoundError, match=r"8 image file\(s\).*missing_0\.png.*missing_4\.png.* and 3 more"):
        read_chexpert_csv(missing)
    assert len(read_chexpert_csv(missing, check_files=False)) == 8
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_chexpert_csv(tmp_path / "nothere.csv")


# ------------------------------------------------------------------------------------ free-text reports


@pytest.mark.parametrize(
    ("text", "prompt"),
    [
        ("No pleural effusion. Mild cardiomegaly.", "A chest X-ray image, cardiomegaly"),
        ("Lungs are clear without consolidation or edema.", "A chest X-ray image, no finding"),
        ("Negative for edema; no effusion.", "A chest X-ray image, no finding"),
        ("NO EFFUSION. Right lower lobe consolidation.", "A chest X-ray image, consolidation"),
        ("No pneumothorax, but a small left pleural effusion.", "A chest X-ray image, pleural effusion"),
        ("Small pericardial effusion.", "A chest X-ray image, no finding"),
        (
            "Pulmonary edema. The heart is enlarged.\nBilateral pleural effusions.",
            "A chest X-ray image, cardiomegaly, pleural effusion, edema",
        ),
        ("Consolidations without effusion", "A chest X-ray image, consolidation"),
        ("", "A chest X-ray image, no finding"),
    ],
)
def test_report_to_prompt_handles_negation(text, prompt):
    assert report_to_prompt(text) == prompt


def test_report_to_labels_custom_keywords():
    keywords = {"atelectasis": ["atelectasis"], "pneumothorax": ["pneumothorax"]}
    labels = report_to_labels("Left basilar atelectasis. No pneumothorax.", keywords)
    assert labels == {"atelectasis": 1, "pneumothorax": 0}
    with pytest.raises(TypeError, match="text"):
        report_to_labels(None)


def test_read_image_report_pairs_from_folder(tmp_path):
    img = np.zeros((6, 6), np.uint8)
    _write_png(tmp_path / "x1.png", img)
    text = "FINDINGS:  Heart size is enlarged.\n\nIMPRESSION: no effusion.  \n"
    (tmp_path / "x1.txt").write_text(text)
    # MIMIC-CXR layout: files/p10/p100/s500/view.png with the report in files/p10/p100/s500.txt
    study = tmp_path / "p10" / "p100" / "s500"
    study.mkdir(parents=True)
    _write_png(study / "view.png", img)
    (study.parent / "s500.txt").write_text("Small right pleural effusion.")
    items = read_image_report_pairs(tmp_path, to_prompt=True)
    assert [Path(it["image"]).name for it in items] == ["view.png", "x1.png"]
    assert items[1]["report"] == text  # kept exactly as stored
    assert items[1]["prompt"] == "A chest X-ray image, cardiomegaly" and items[1]["cardiomegaly"] == 1
    assert items[0]["prompt"] == "A chest X-ray image, pleural effusion" and items[0]["pleural_effusion"] == 1
    plain = read_image_report_pairs(tmp_path)
    assert set(plain[0]) == {"image", "report"}
    custom = read_image_report_pairs(tmp_path, to_prompt=lambda t: t.upper()[:5])
    assert custom[0]["prompt"] == "SMALL"
    assert len(read_image_report_pairs(tmp_path, recursive=False)) == 1

    _write_png(tmp_path / "orphan.png", img)
    with pytest.raises(FileNotFoundError, match="1 image\\(s\\).*orphan.png.*missing_report"):
        read_image_report_pairs(tmp_path)
    assert len(read_image_report_pairs(tmp_path, missing_report="skip")) == 2
    with pytest.raises(ValueError, match="`missing_report`"):
        read_image_report_pairs(tmp_path, missing_report="warn")


def test_read_image_report_pairs_from_csv(tmp_path):
    _write_png(tmp_path / "a.png", np.zeros((6, 6), np.uint8))
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text('dicom_path,findings\na.png,"No edema, no effusion.  Enlarged cardiac silhouette."\n')
    items = read_image_report_pairs(csv_path, to_prompt=True)
    assert items[0]["image"] == str((tmp_path / "a.png").resolve())
    assert items[0]["report"] == "No edema, no effusion.  Enlarged cardiac silhouette."
    assert items[0]["prompt"] == "A chest X-ray image, cardiomegaly"
    with pytest.raises(ValueError, match="`report_column` 'text' is not a column"):
        read_image_report_pairs(csv_path, report_column="text")
    (tmp_path / "bad.csv").write_text("name,notes\na.png,x\n")
    with pytest.raises(ValueError, match="none of the columns.*`image_column`"):
        read_image_report_pairs(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("image,report\nnope.png,x\n")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image_report_pairs(tmp_path / "gone.csv")
    with pytest.raises(FileNotFoundError, match="`source`"):
        read_image_report_pairs(tmp_path / "absent")
