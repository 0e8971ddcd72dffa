"""``DiffusionCondition``: building from any input, batch sizes, broadcasting, repeating, moving and batching."""

from __future__ import annotations

import re

import pytest
import torch

from monai_pie.conditioning.condition import DiffusionCondition


def test_from_any_none_is_empty():
    cond = DiffusionCondition.from_any(None)
    assert cond.is_empty
    assert cond.batch_size() is None


def test_from_any_3d_context_tensor():
    ctx = torch.randn(2, 4, 8)
    cond = DiffusionCondition.from_any(ctx)
    assert cond.context is ctx
    assert cond.class_labels is None and cond.concat is None
    assert not cond.is_empty
    assert cond.batch_size() == 2


def test_from_any_2d_context_is_one_token():
    ctx = torch.randn(3, 8)
    cond = DiffusionCondition.from_any(ctx)
    assert cond.context.shape == (3, 1, 8)
    assert torch.equal(cond.context[:, 0], ctx)


@pytest.mark.parametrize("shape", [(8,), (2, 3, 4, 5)])
def test_context_of_the_wrong_rank_is_an_error(shape):
    message = r"`context` must have shape \(B, L, D\) or \(B, D\), got " + re.escape(str(shape))
    with pytest.raises(ValueError, match=message):
        DiffusionCondition.from_any(torch.zeros(shape))


def test_from_any_dict_with_labels_and_concat():
    cond = DiffusionCondition.from_any({"class_labels": [[1], [2]], "concat": torch.zeros(2, 1, 4, 4)})
    assert cond.context is None
    assert cond.class_labels.dtype == torch.long and cond.class_labels.tolist() == [1, 2]
    assert cond.concat.shape == (2, 1, 4, 4)
    assert cond.batch_size() == 2


def test_from_any_dict_with_unknown_keys_is_an_error():
    with pytest.raises(ValueError, match=r"`condition` has unknown keys \['ctx'\]; use 'context'"):
        DiffusionCondition.from_any({"ctx": torch.zeros(1, 1, 4)})


def test_from_any_condition_is_returned_as_is():
    cond = DiffusionCondition(class_labels=torch.tensor([0]))
    assert DiffusionCondition.from_any(cond) is cond


@pytest.mark.parametrize("bad", ["a prompt", 3, [torch.zeros(1, 4)]])
def test_from_any_rejects_other_types(bad):
    with pytest.raises(TypeError, match=rf"`condition` must be None, a tensor .* got {type(bad).__name__}"):
        DiffusionCondition.from_any(bad)


def test_is_empty_for_each_field():
    assert DiffusionCondition().is_empty
    assert not DiffusionCondition(context=torch.zeros(1, 1, 2)).is_empty
    assert not DiffusionCondition(class_labels=torch.tensor([1])).is_empty
    assert not DiffusionCondition(concat=torch.zeros(1, 1, 2, 2)).is_empty


def test_batch_size_ignores_broadcastable_fields():
    cond = DiffusionCondition(context=torch.zeros(1, 1, 4), class_labels=torch.tensor([0, 1, 2]))
    assert cond.batch_size() == 3
    assert DiffusionCondition(context=torch.zeros(1, 2, 4)).batch_size() == 1


def test_batch_size_disagreement_is_an_error():
    cond = DiffusionCondition(context=torch.zeros(2, 1, 4), class_labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="condition fields disagree on the batch size"):
        cond.batch_size()


def test_expand_to_broadcasts_batch_one():
    ctx = torch.randn(1, 2, 4)
    labels = torch.tensor([0, 1, 2])
    out = DiffusionCondition(context=ctx, class_labels=labels).expand_to(3)
    assert out.context.shape == (3, 2, 4)
    assert all(torch.equal(out.context[i], ctx[0]) for i in range(3))
    assert out.class_labels.tolist() == [0, 1, 2]  # already the right size
    assert out.batch_size() == 3


def test_expand_to_keeps_the_original_unchanged():
    cond = DiffusionCondition(context=torch.zeros(1, 1, 4))
    out = cond.expand_to(5)
    assert out is not cond
    assert cond.context.shape == (1, 1, 4)
    assert out.context.shape == (5, 1, 4)


def test_expand_to_incompatible_size_is_an_error():
    cond = DiffusionCondition(context=torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match=r"condition `context` has batch size 2, but the image batch is 3"):
        cond.expand_to(3)


def test_expand_to_on_empty_condition():
    assert DiffusionCondition().expand_to(4).is_empty


def test_repeat_interleave_repeats_each_element():
    cond = DiffusionCondition(context=torch.arange(2.0).reshape(2, 1, 1), class_labels=torch.tensor([5, 7]))
    out = cond.repeat_interleave(3)
    assert out.context.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert out.class_labels.tolist() == [5, 5, 5, 7, 7, 7]
    assert out.concat is None
    assert cond.class_labels.tolist() == [5, 7]


def test_to_casts_floating_tensors_only():
    cond = DiffusionCondition(context=torch.zeros(1, 1, 4), class_labels=torch.tensor([1]),
                              concat=torch.zeros(1, 1, 2, 2))
    out = cond.to("cpu", torch.float64)
    assert out.context.dtype == torch.float64 and out.concat.dtype == torch.float64
    assert out.class_labels.dtype == torch.long
    assert cond.context.dtype == torch.float32  # a new condition, the old one untouched
    kept = cond.to("cpu")
    assert kept.context.dtype == torch.float32 and kept.context.device.type == "cpu"


def test_cat_concatenates_along_the_batch():
    a = DiffusionCondition(context=torch.zeros(1, 1, 4), class_labels=torch.tensor([1]))
    b = DiffusionCondition(context=torch.ones(2, 1, 4), class_labels=torch.tensor([2, 3]))
    out = DiffusionCondition.cat([a, b])
    assert out.context.shape == (3, 1, 4)
    assert out.context[:, 0, 0].tolist() == [0.0, 1.0, 1.0]
    assert out.class_labels.tolist() == [1, 2, 3]
    assert out.concat is None


def test_cat_with_different_fields_is_an_error():
    a = DiffusionCondition(context=torch.zeros(1, 1, 4))
    b = DiffusionCondition(context=torch.zeros(1, 1, 4), class_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="cannot batch conditions with different fields set"):
        DiffusionCondition.cat([a, b])


def test_cat_of_empty_conditions_is_empty():
    assert DiffusionCondition.cat([DiffusionCondition(), DiffusionCondition()]).is_empty
