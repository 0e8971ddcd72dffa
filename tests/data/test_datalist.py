"""Datalists: ``load_datalist`` errors that name the file, ``as_items`` output folders, ``output_names``,
``generation_items``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from monai_pie.data.datalist import as_items, generation_items, load_datalist, longitudinal_pairs, output_names


def _write(tmp_path: Path, content: object, name: str = "datalist.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# ------------------------------------------------------------------------------------------------ load_datalist
def test_load_datalist_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="datalist not found: " + re.escape(str(path))):
        load_datalist(path)


def test_load_datalist_folder_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        load_datalist(tmp_path)


def test_load_datalist_invalid_json_gives_line_and_column(tmp_path):
    path = _write(tmp_path, '{\n  "training": [\n    {"image": "a.png",}\n  ]\n}')
    message = re.escape(f"datalist {path} is not valid JSON") + r": .* at line 3, column \d+"
    with pytest.raises(ValueError, match=message):
        load_datalist(path)


def test_load_datalist_binary_file(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(ValueError, match=re.escape(f"datalist {path} is not a text (JSON) file")):
        load_datalist(path)


def test_load_datalist_list_instead_of_object(tmp_path):
    path = _write(tmp_path, [{"image": "a.png"}])
    with pytest.raises(ValueError, match=re.escape(f"datalist {path} must hold a JSON object") + r".*got a list"):
        load_datalist(path)


def test_load_datalist_missing_split_lists_the_splits_it_has(tmp_path):
    path = _write(tmp_path, {"name": "toy", "training": [{"image": "a.png"}], "test": [{"image": "b.png"}]})
    with pytest.raises(ValueError, match=re.escape(f"datalist {path} has no 'validation' list; it has "
                                                   "['test', 'training']")):
        load_datalist(path, "validation")


def test_load_datalist_missing_split_and_no_lists(tmp_path):
    path = _write(tmp_path, {"name": "toy"})
    with pytest.raises(ValueError, match="has no 'training' list; it has no lists"):
        load_datalist(path)


@pytest.mark.parametrize("value", [[], {"image": "a.png"}, "a.png"])
def test_load_datalist_empty_or_non_list_split(tmp_path, value):
    path = _write(tmp_path, {"training": value})
    with pytest.raises(ValueError, match=re.escape(f"the 'training' list of datalist {path} is empty")):
        load_datalist(path)


def test_load_datalist_item_that_is_a_number(tmp_path):
    path = _write(tmp_path, {"training": [{"image": "a.png"}, 3]})
    with pytest.raises(ValueError, match=re.escape(f"item 1 of 'training' in datalist {path} must be a path or an "
                                                   "object, got 3")):
        load_datalist(path)


@pytest.mark.parametrize("item", [{"label": "a_seg.png"}, {"image": ""}, {"image": None}])
def test_load_datalist_item_without_image(tmp_path, item):
    path = _write(tmp_path, {"training": [item]})
    with pytest.raises(ValueError, match=re.escape(f"item 0 of 'training' in datalist {path} lacks ['image']")):
        load_datalist(path)


def test_load_datalist_custom_required_keys(tmp_path):
    path = _write(tmp_path, {"training": [{"image": "a.png"}]})
    with pytest.raises(ValueError, match=r"lacks \['age'\]"):
        load_datalist(path, required_keys=("image", "age"))


def test_load_datalist_resolves_relative_paths_against_base_dir(tmp_path):
    data = tmp_path / "data"
    (data / "rois").mkdir(parents=True)
    (data / "rois" / "r.nii.gz").write_bytes(b"x")
    path = _write(tmp_path, {"training": [{"image": "img/a.png", "roi": "rois/r.nii.gz", "age": 70,
                                           "note": "no/such/file"},
                                          {"image": "/abs/b.png"}]})
    items = load_datalist(path, base_dir=data)
    assert items == [{"image": str(data / "img" / "a.png"), "roi": str(data / "rois" / "r.nii.gz"), "age": 70,
                      "note": "no/such/file"},
                     {"image": "/abs/b.png"}]


def test_load_datalist_default_base_dir_is_the_datalist_folder(tmp_path):
    path = _write(tmp_path, {"validation": [{"image": "a.png"}]})
    assert load_datalist(str(path), "validation") == [{"image": str(tmp_path / "a.png")}]


# ------------------------------------------------------------------------------------------------ as_items
def test_as_items_bare_paths_become_image_dicts_with_subfolders(tmp_path):
    items = as_items(["/d/a.png", "/d/b.nii.gz"], tmp_path / "out")
    assert items == [{"image": "/d/a.png", "output_dir": str(tmp_path / "out" / "a")},
                     {"image": "/d/b.nii.gz", "output_dir": str(tmp_path / "out" / "b")}]


def test_as_items_one_item_goes_to_output_dir_itself(tmp_path):
    assert as_items([Path("/d/a.png")], tmp_path) == [{"image": "/d/a.png", "output_dir": str(tmp_path)}]


def test_as_items_subfolders_flag(tmp_path):
    assert as_items(["/d/a.png"], tmp_path, subfolders=True)[0]["output_dir"] == str(tmp_path / "a")
    several = as_items(["/d/a.png", "/d/b.png"], tmp_path, subfolders=False)
    assert [it["output_dir"] for it in several] == [str(tmp_path)] * 2


def test_as_items_drops_none_values_and_copies_items(tmp_path):
    entry = {"image": "/d/a.png", "roi": None, "target_stage": 0.9}
    items = as_items([entry], tmp_path)
    assert items == [{"image": "/d/a.png", "target_stage": 0.9, "output_dir": str(tmp_path)}]
    assert entry == {"image": "/d/a.png", "roi": None, "target_stage": 0.9}  # the caller's dict is not changed


def test_as_items_resolves_relative_paths_against_dataset_dir(tmp_path):
    items = as_items(["imgs/a.png", {"image": "imgs/b.png"}, "/abs/c.png"], tmp_path / "out",
                     dataset_dir=tmp_path / "data")
    assert [it["image"] for it in items] == [str(tmp_path / "data" / "imgs" / "a.png"),
                                             str(tmp_path / "data" / "imgs" / "b.png"), "/abs/c.png"]


def test_as_items_custom_image_key(tmp_path):
    items = as_items(["/d/a.png"], tmp_path, image_key="img")
    assert items == [{"img": "/d/a.png", "output_dir": str(tmp_path)}]


def test_as_items_subfolder_names_use_the_path_under_dataset_dir(tmp_path):
    root = tmp_path / "data"
    items = as_items(["p1/s1/view1.jpg", "p2/s1/view1.jpg"], tmp_path / "out", dataset_dir=root)
    assert [it["output_dir"] for it in items] == [str(tmp_path / "out" / "p1__s1__view1"),
                                                  str(tmp_path / "out" / "p2__s1__view1")]


def test_as_items_empty_list_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="`datalist` is empty: nothing to run"):
        as_items([], tmp_path)


@pytest.mark.parametrize("bad", ["/d/a.png", Path("/d/a.png"), {"image": "/d/a.png"}, None])
def test_as_items_string_or_non_list_is_an_error(tmp_path, bad):
    with pytest.raises(ValueError, match="`datalist` must be a list of image paths or of dicts with 'image'"):
        as_items(bad, tmp_path)


@pytest.mark.parametrize("entry", [{"label": "x.png"}, {"image": None}, {"image": ""}])
def test_as_items_item_without_image_is_an_error(tmp_path, entry):
    with pytest.raises(ValueError, match=r"datalist item 1 has no 'image'"):
        as_items(["/d/a.png", entry], tmp_path)


def test_as_items_item_of_the_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="datalist item 0 must be an image path or a dict, got 3"):
        as_items([3], tmp_path)


# ------------------------------------------------------------------------------------------------ output_names
def test_output_names_strip_extensions():
    assert output_names(["/d/a.png", "/d/b.nii.gz"]) == ["a", "b"]
    assert output_names(["/d/A.JPG", "/d/scan.dcm", "/d/vol.nii"]) == ["A", "scan", "vol"]


def test_output_names_same_name_in_different_folders_uses_the_path_under_root(tmp_path):
    root = tmp_path / "chexpert"
    images = [str(root / "p1" / "s1" / "view1.jpg"), str(root / "p2" / "s1" / "view1.jpg"),
              str(root / "p2" / "s1" / "view2.jpg")]
    assert output_names(images, root) == ["p1__s1__view1", "p2__s1__view1", "view2"]


def test_output_names_same_name_without_root_uses_the_whole_path():
    assert output_names(["/a/x.png", "/b/x.png"]) == ["a__x", "b__x"]


def test_output_names_same_file_twice_gets_a_suffix():
    assert output_names(["/d/x.png", "/d/x.png"]) == ["x", "x_2"]
    assert output_names(["/d/x.png", "/d/./x.png", "/d/x.png"]) == ["x", "x_2", "x_3"]


def test_output_names_dicom_uid_keeps_its_dots():
    assert output_names(["/d/1.2.840.1", "/d/1.2.840.2.dcm"]) == ["1.2.840.1", "1.2.840.2"]


def test_output_names_are_distinct():
    images = ["/r/a/x.png", "/r/b/x.png", "/r/a/x.png", "/r/x.png"]
    names = output_names(images, "/r")
    assert len(set(names)) == len(names)
    assert names[:2] == ["a__x", "b__x"]


# ------------------------------------------------------------------------------------------------ generation_items
def test_generation_items_covariate_dict_is_repeated():
    items = generation_items({"age": 70, "sex": 1}, 3)
    assert items == [{"age": 70, "sex": 1, "output_name": "sample_000"},
                     {"age": 70, "sex": 1, "output_name": "sample_001"},
                     {"age": 70, "sex": 1, "output_name": "sample_002"}]
    items[0]["age"] = 1
    assert items[1]["age"] == 70  # independent copies


def test_generation_items_prompts_are_grouped():
    prompts = ["A chest X-ray image, edema", "A chest X-ray image, no finding"]
    items = generation_items(prompts, 2)
    assert items == [
        {"prompt": prompts[0], "group": 0, "output_name": "prompt_00/sample_000"},
        {"prompt": prompts[0], "group": 0, "output_name": "prompt_00/sample_001"},
        {"prompt": prompts[1], "group": 1, "output_name": "prompt_01/sample_000"},
        {"prompt": prompts[1], "group": 1, "output_name": "prompt_01/sample_001"},
    ]


def test_generation_items_single_prompt_string_and_custom_key():
    items = generation_items("A brain MRI image, no finding", 1, prompt_key="text")
    assert items == [{"text": "A brain MRI image, no finding", "group": 0, "output_name": "prompt_00/sample_000"}]
    assert len(generation_items(("a", "b", "c"), 2.0)) == 6  # an integral float is accepted


@pytest.mark.parametrize("num", [0, -1, 1.5, True, "3"])
def test_generation_items_bad_number_of_samples(num):
    with pytest.raises(ValueError, match=r"the number of samples must be an integer >= 1, got " + re.escape(repr(num))):
        generation_items({"age": 70}, num)


def test_generation_items_empty_prompt_list():
    with pytest.raises(ValueError, match="give at least one prompt"):
        generation_items([], 2)


def test_bare_paths_work_in_every_split_and_other_fields_resolve_only_when_they_exist(tmp_path):
    (tmp_path / "mask.nii.gz").write_bytes(b"x")
    (tmp_path / "list.json").write_text(json.dumps({"training": ["a.png", {"image": "b.png", "roi": "mask.nii.gz",
                                                                            "prompt": "edema"}]}))
    items = load_datalist(tmp_path / "list.json", "training", tmp_path)
    assert items[0] == {"image": str(tmp_path / "a.png")}
    assert items[1] == {"image": str(tmp_path / "b.png"), "roi": str(tmp_path / "mask.nii.gz"), "prompt": "edema"}


def _visit(subject, visit, stage):
    return {"image": f"{subject}_{visit}.nii.gz", "subject_id": subject, "visit": visit, "age": 70.0 + 2 * visit,
            "stage": stage}


def test_longitudinal_pairs_pair_every_visit_of_a_subject_both_ways():
    items = [_visit("a", 1, 0.3), _visit("a", 0, 0.1), _visit("b", 0, 0.5), _visit("a", 2, 0.6)]
    pairs = longitudinal_pairs(items)
    a = [(p["source_image"], p["image"]) for p in pairs if p["subject_id"] == "a"]
    assert len(a) == 9 and len(set(a)) == 9  # 3 x 3 ordered pairs, self-pairs included
    assert [p for p in pairs if p["subject_id"] == "b"] == [{**items[2], "source_image": "b_0.nii.gz",
                                                              "source_age": 70.0, "source_stage": 0.5}]
    forward = next(p for p in pairs if p["source_image"] == "a_0.nii.gz" and p["image"] == "a_2.nii.gz")
    assert (forward["source_stage"], forward["stage"], forward["source_age"], forward["age"]) == (0.1, 0.6, 70.0, 74.0)
    assert len(longitudinal_pairs(items, include_same=False)) == 6
    assert items[0] == _visit("a", 1, 0.3)  # the input items are not modified


def test_longitudinal_pairs_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"item 1 lacks \['visit'\]"):
        longitudinal_pairs([_visit("a", 0, 0.1), {"image": "x", "subject_id": "a", "age": 1, "stage": 0.2}])
    with pytest.raises(ValueError, match="no subject has two visits"):
        longitudinal_pairs([_visit("a", 0, 0.1), _visit("b", 0, 0.2)])
