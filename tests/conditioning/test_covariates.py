"""``CovariateConditioner``: input forms, validation, min-max normalisation, range warnings, the null token, dropout."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from monai_pie.conditioning.condition import DiffusionCondition
from monai_pie.conditioning.covariates import CovariateConditioner

RANGES = {"age": (50.0, 90.0), "sex": (0.0, 1.0), "stage": (0.0, 1.0)}


@pytest.fixture
def cond() -> CovariateConditioner:
    torch.manual_seed(0)
    return CovariateConditioner(("age", "sex", "stage"), RANGES, embed_dim=8, hidden_dim=16)


def test_mapping_and_tensor_inputs_give_the_same_embedding(cond):
    mapping = {"stage": [0.2, 0.7], "age": torch.tensor([60.0, 80.0]), "sex": [0, 1], "unused": "ignored"}
    tensor = torch.tensor([[60.0, 0.0, 0.2], [80.0, 1.0, 0.7]])
    a, b = cond.embed(mapping), cond.embed(tensor)
    assert a.shape == (2, 1, 8)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(cond.embed(tensor.tolist()), b)  # nested lists work too


def test_forward_gives_a_context_condition(cond):
    out = cond({"age": 70, "sex": 1, "stage": 0.5})
    assert isinstance(out, DiffusionCondition)
    assert out.context.shape == (1, 1, 8) and out.class_labels is None and out.concat is None


def test_scalar_covariates_broadcast_to_the_batch(cond):
    x = cond.as_tensor({"age": [60.0, 70.0, 80.0], "sex": 1, "stage": 0.5})
    assert x.tolist() == [[60.0, 1.0, 0.5], [70.0, 1.0, 0.5], [80.0, 1.0, 0.5]]


def test_a_1d_tensor_is_one_sample(cond):
    assert cond.as_tensor(torch.tensor([60.0, 0.0, 0.5])).shape == (1, 3)


def test_missing_covariate_is_an_error(cond):
    with pytest.raises(ValueError, match=r"covariates missing \['stage'\]; this model is conditioned on "
                                         r"\['age', 'sex', 'stage'\]"):
        cond.as_tensor({"age": 60.0, "sex": 0})


@pytest.mark.parametrize("shape", [(2, 2), (2, 4), (4,), (1, 2, 3)])
def test_wrong_width_is_an_error(cond, shape):
    got = shape if len(shape) != 1 else (1, *shape)
    with pytest.raises(ValueError, match=re.escape(f"covariates must have shape (B, 3) for ['age', 'sex', 'stage'], "
                                                   f"got {got}")):
        cond.as_tensor(torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_covariates_are_an_error(cond, bad):
    with pytest.raises(ValueError, match="covariates contain NaN or infinite values"):
        cond.as_tensor({"age": [60.0, bad], "sex": [0, 1], "stage": [0.1, 0.2]})
    with pytest.raises(ValueError, match="covariates contain NaN or infinite values"):
        cond.embed(torch.tensor([[60.0, 0.0, bad]]))


def test_unequal_batch_sizes_are_an_error(cond):
    with pytest.raises(ValueError, match=r"covariates have different batch sizes: \[2, 3, 2\]"):
        cond.as_tensor({"age": [60.0, 70.0], "sex": [0, 1, 0], "stage": [0.1, 0.2]})
    with pytest.raises(ValueError, match="covariates have different batch sizes"):
        cond.as_tensor({"age": [60.0, 70.0], "sex": [0, 1, 0], "stage": 0.5})  # a single value still broadcasts


def test_constructor_checks():
    with pytest.raises(ValueError, match="`names` must list at least one covariate"):
        CovariateConditioner(())
    with pytest.raises(ValueError, match=r"`ranges` names covariates not in `names`: \['weight'\]"):
        CovariateConditioner(("age",), {"weight": (0, 1)})
    with pytest.raises(ValueError, match="every range must have high > low"):
        CovariateConditioner(("age",), {"age": (90, 50)})


def test_ranges_default_to_unit_interval(cond):
    c = CovariateConditioner(("a", "b"), {"a": (10, 20)})
    assert c.low.tolist() == [10.0, 0.0] and c.high.tolist() == [20.0, 1.0]
    assert cond.low.tolist() == [50.0, 0.0, 0.0] and cond.high.tolist() == [90.0, 1.0, 1.0]


def test_as_tensor_keeps_raw_values(cond):
    x = cond.as_tensor({"age": 70.0, "sex": 1, "stage": 0.25})
    assert x.dtype == torch.float32
    assert x.tolist() == [[70.0, 1.0, 0.25]]


def test_embed_depends_on_the_normalised_value():
    torch.manual_seed(1)
    years = CovariateConditioner(("age",), {"age": (50.0, 90.0)}, embed_dim=4, hidden_dim=8)
    decades = CovariateConditioner(("age",), {"age": (5.0, 9.0)}, embed_dim=4, hidden_dim=8)
    decades.mlp.load_state_dict(years.mlp.state_dict())  # same weights, different ranges
    ages = torch.tensor([[50.0], [62.0], [90.0]])
    torch.testing.assert_close(years.embed(ages), decades.embed(ages / 10))
    # the MLP sees (x - low) / (high - low): 50 -> 0, 90 -> 1
    expected = years.mlp(torch.tensor([[0.0], [0.3], [1.0]]))[:, None, :]
    torch.testing.assert_close(years.embed(ages), expected)
    assert not torch.allclose(years.embed(ages[:1]), years.embed(ages[2:]))


def test_value_outside_the_range_warns(cond):
    with pytest.warns(UserWarning, match="outside the range the model was trained on") as record:
        cond.as_tensor({"age": [60.0, 95.0], "sex": 0, "stage": 0.5})
    assert len(record) == 1
    assert "'age' = 95" in str(record[0].message) and "[50, 90]" in str(record[0].message)
    with pytest.warns(UserWarning, match=r"covariate 'stage' = -0.1 lies outside"):
        cond.embed(torch.tensor([[60.0, 0.0, -0.1]]))


def test_value_inside_the_range_does_not_warn(cond):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cond.embed({"age": [50.0, 90.0], "sex": [0, 1], "stage": [0.0, 1.0]})  # the bounds are inside


def test_null_condition_gives_the_null_token_for_each_row(cond):
    with torch.no_grad():
        cond.null_token.copy_(torch.arange(8.0).reshape(1, 1, 8))
    labels = torch.tensor([1, 2, 3])
    concat = torch.zeros(3, 1, 4, 4)
    condition = DiffusionCondition(context=torch.randn(3, 1, 8), class_labels=labels, concat=concat)
    null = cond.null_condition(condition)
    assert null.context.shape == (3, 1, 8)
    for row in null.context:
        assert row.flatten().tolist() == list(range(8))
    assert torch.equal(null.class_labels, labels) and null.concat is concat  # the other fields are kept


def test_null_condition_of_an_empty_condition_is_one_row(cond):
    null = cond.null_condition(DiffusionCondition())
    assert null.context.shape == (1, 1, 8)
    assert torch.equal(null.context, cond.null_token)


def test_drop_replaces_exactly_the_rows_of_the_mask(cond):
    with torch.no_grad():
        cond.null_token.fill_(-1.0)
    context = torch.arange(4 * 8, dtype=torch.float32).reshape(4, 1, 8)
    mask = torch.tensor([True, False, False, True])
    out = cond.drop(context, mask)
    assert out.shape == context.shape
    for i in range(4):
        if mask[i]:
            assert torch.all(out[i] == -1.0)
        else:
            assert torch.equal(out[i], context[i])
    torch.testing.assert_close(cond.drop(context, torch.tensor([0, 1, 0, 0])), torch.cat(
        [context[:1], torch.full((1, 1, 8), -1.0), context[2:]]))  # integer masks work too


def test_drop_gradients_reach_the_null_token(cond):
    context = torch.randn(2, 1, 8)
    cond.drop(context, torch.tensor([True, False])).sum().backward()
    assert cond.null_token.grad is not None
    assert torch.all(cond.null_token.grad == 1.0)
