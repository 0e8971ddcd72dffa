"""Vocabulary: stage thresholds and diagnoses, target stages, CXR report prompts and finding spellings."""

from __future__ import annotations

import math
import re

import pytest

from monai_pie.vocabulary import (
    CXR_FINDINGS,
    DIAGNOSES,
    DIAGNOSIS_STAGE,
    FINDINGS,
    SYNONYMS,
    canonical_finding,
    check_stage,
    cxr_report,
    diagnosis_from_stage,
    finding_key,
    normalize_term,
    target_stage,
)


@pytest.mark.parametrize(
    ("stage", "diagnosis"),
    [(0.0, "CN"), (0.3299, "CN"), (0.33, "MCI"), (0.6599, "MCI"), (0.66, "AD"), (1.0, "AD")],
)
def test_diagnosis_from_stage_at_and_around_thresholds(stage, diagnosis):
    assert diagnosis_from_stage(stage) == diagnosis


def test_diagnosis_from_stage_accepts_numeric_strings_and_ints():
    assert diagnosis_from_stage("0.5") == "MCI"
    assert diagnosis_from_stage(1) == "AD"
    assert diagnosis_from_stage(0) == "CN"


@pytest.mark.parametrize("stage", [-0.01, 1.01, math.nan, math.inf])
def test_diagnosis_from_stage_rejects_values_outside_unit_interval(stage):
    with pytest.raises(ValueError, match=r"`stage` must be in \[0, 1\]"):
        diagnosis_from_stage(stage)


@pytest.mark.parametrize("stage", ["abc", True, False, None, [0.5]])
def test_diagnosis_from_stage_rejects_non_numbers(stage):
    with pytest.raises(ValueError, match=r"`stage` must be a number in \[0, 1\], got " + re.escape(repr(stage))):
        diagnosis_from_stage(stage)


def test_target_stage_prefers_stage_over_diagnosis():
    assert target_stage(0.2, "AD") == 0.2
    assert target_stage(0, "AD") == 0.0  # a stage of 0 is given, not "missing"
    assert target_stage("0.75") == 0.75


@pytest.mark.parametrize("diagnosis", ["AD", "ad", " Ad ", "mci", "Cn"])
def test_target_stage_diagnosis_is_case_insensitive(diagnosis):
    assert target_stage(diagnosis=diagnosis) == DIAGNOSIS_STAGE[diagnosis.strip().upper()]


def test_target_stage_unknown_diagnosis_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"`target_diagnosis` must be one of \['AD', 'CN', 'MCI'\], got 'dementia'"):
        target_stage(diagnosis="dementia")


def test_target_stage_without_anything_asks_for_a_target():
    with pytest.raises(ValueError, match=r"give a target: `target_stage` in \[0, 1\] or `target_diagnosis`"):
        target_stage()


def test_target_stage_non_numeric_stage_names_the_argument():
    with pytest.raises(ValueError, match=r"`target_stage` must be a number in \[0, 1\], got 'abc'"):
        target_stage("abc", "AD")


def test_target_stage_out_of_range_stage_is_not_replaced_by_the_diagnosis():
    with pytest.raises(ValueError, match=r"`target_stage` must be in \[0, 1\], got 1.5"):
        target_stage(1.5, "AD")


def test_check_stage_returns_float_and_uses_the_given_name():
    value = check_stage("0.25")
    assert value == 0.25 and isinstance(value, float)
    assert check_stage(1) == 1.0
    with pytest.raises(ValueError, match=r"`age_stage` must be in \[0, 1\], got -1"):
        check_stage(-1, "age_stage")
    with pytest.raises(ValueError, match=r"`stage` must be a number in \[0, 1\], got True"):
        check_stage(True)


def test_cxr_report_uses_canonical_order_whatever_the_input_order():
    expected = "A chest X-ray image, cardiomegaly, pleural effusion, edema"
    assert cxr_report(["edema", "cardiomegaly", "pleural effusion"]) == expected
    assert cxr_report(["Pleural_Effusion", "EDEMA", "  cardiomegaly "]) == expected
    assert cxr_report(reversed(CXR_FINDINGS)) == "A chest X-ray image, " + ", ".join(CXR_FINDINGS)


def test_cxr_report_duplicates_collapse():
    assert cxr_report(["edema", "Edema", "edema"]) == "A chest X-ray image, edema"


def test_cxr_report_empty_set_is_no_finding():
    assert cxr_report([]) == "A chest X-ray image, no finding"
    assert cxr_report(set()) == "A chest X-ray image, no finding"


def test_cxr_report_follows_a_custom_order():
    assert cxr_report(["b", "a"], order=("b", "a")) == "A chest X-ray image, b, a"


def test_cxr_report_unknown_finding_is_an_error():
    with pytest.raises(ValueError, match=r"unknown finding\(s\) \['fracture'\] in `findings`"):
        cxr_report(["edema", "fracture"])


@pytest.mark.parametrize("name", ["Pleural_Effusion", "pleural-effusion", "PLEURAL EFFUSION", "  pleural   effusion "])
def test_canonical_finding_spelling_variants(name):
    assert canonical_finding(name) == "pleural effusion"


def test_canonical_finding_unknown_name_and_custom_vocabulary():
    with pytest.raises(ValueError, match=r"unknown finding 'pneumothorax'; expected one of"):
        canonical_finding("pneumothorax")
    assert canonical_finding("Alzheimer's_Disease", FINDINGS) == "alzheimer's disease"
    with pytest.raises(ValueError, match="unknown finding"):
        canonical_finding("alzheimer's disease")  # not a CXR finding


def test_finding_key():
    assert finding_key("Pleural Effusion") == "pleural_effusion"
    assert finding_key("  pleural_effusion ") == "pleural_effusion"
    assert finding_key("Cardiomegaly") == "cardiomegaly"


def test_normalize_term():
    assert normalize_term("  Pleural__Effusion\t ") == "pleural effusion"
    assert normalize_term("A\n B") == "a b"
    assert normalize_term("") == ""


def test_every_synonym_target_is_a_finding():
    for variant, term in SYNONYMS.items():
        assert term in FINDINGS, (variant, term)
        assert normalize_term(variant) == variant  # keys are stored normalised


def test_every_diagnosis_stage_maps_back_to_its_diagnosis():
    assert set(DIAGNOSIS_STAGE) == set(DIAGNOSES)
    for diagnosis, stage in DIAGNOSIS_STAGE.items():
        assert diagnosis_from_stage(stage) == diagnosis
