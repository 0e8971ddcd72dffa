"""The served task table: request parameters are parsed and checked with errors that name the problem, and every
parameter points at a setting its bundle really has (defaults and ranges come from the bundle config)."""

from __future__ import annotations

import math

import pytest
from helpers.bundle_helpers import BUNDLES

from monai_pie.bundle_tools import parse_bundle
from monai_pie.serving import TASKS, Parameter, RequestError, describe_parameters, get_task


@pytest.mark.parametrize("value, expected", [("3", 3), (3.0, 3), (7, 7)])
def test_integer_parameters_accept_whole_numbers_given_as_text_or_float(value, expected):
    assert Parameter("n", int, "", bounds=(1, 10)).parse(value) == expected


@pytest.mark.parametrize("value, words", [(0, r"in \[1, 10\]"), (11, r"in \[1, 10\]"), (2.5, "whole number"),
                                          ("many", "a number"), (True, "a number"), (math.nan, "finite"),
                                          (None, "a number")])
def test_bad_numbers_name_the_parameter_and_the_rule(value, words):
    with pytest.raises(RequestError, match=rf"`n` must be .*{words}"):
        Parameter("n", int, "", bounds=(1, 10)).parse(value)


def test_choices_nullable_and_config_bounds():
    mode = Parameter("mode", str, "", choices=("pie", "counterfactual"))
    assert mode.parse(" pie ") == "pie"
    with pytest.raises(RequestError, match=r"`mode` must be one of \['pie', 'counterfactual'\]"):
        mode.parse("linear")
    stage = Parameter("stage", float, "", bounds=(0.0, 1.0), nullable=True)
    assert stage.parse(None) is None and stage.parse("") is None and stage.parse("0.4") == 0.4
    age = Parameter("age", float, "", bounds="condition_ranges#age")
    assert age.parse(50, bounds=(40.0, 100.0)) == 50.0
    with pytest.raises(RequestError, match=r"in \[40, 100\]"):
        age.parse(30, bounds=(40.0, 100.0))


def test_unknown_task_and_parameter_suggest_the_nearest_name():
    with pytest.raises(RequestError, match="did you mean 'brain_progression'"):
        get_task("brain_progresion")
    with pytest.raises(RequestError, match="did you mean 'num_rounds'"):
        TASKS["cxr_progression"].parameter("num_round")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_parameter_is_a_setting_of_its_bundle_with_the_bundles_default(name):
    spec = TASKS[name]
    assert (BUNDLES / spec.bundle / "configs" / "inference.json").is_file()
    parser = parse_bundle(spec.bundle)
    described = describe_parameters(spec)
    for p in spec.parameters:
        if p.key is None:
            assert described[p.name]["default"] == p.default
            continue
        value = parser.get_parsed_content(p.key)  # raises if the bundle has no such setting
        assert described[p.name]["default"] == (value[0] if p.as_list else value)
        if p.choices is None and p.kind is not str:
            low, high = described[p.name]["range"]
            default = described[p.name]["default"]
            assert default is None or low <= default <= high, f"{name}.{p.name}: the bundle default is out of range"
