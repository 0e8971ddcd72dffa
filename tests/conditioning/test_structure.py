"""The TauAD condition: a class label (dropped to the null label in training) plus the subject's own structure image
pooled to the latent grid, and the structure image derived from the PET itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.toy_models import tiny_unet

from monai_pie import LatentDiffusionModel
from monai_pie.conditioning import StructureLabelConditioner
from monai_pie.data import PETStructured, pet_structure
from monai_pie.engines.diffusion import collect_condition


def test_labels_and_pooled_structure_and_the_null_keeps_structure():
    cond = StructureLabelConditioner(latent_size=(4, 4, 4), num_classes=2)
    structure = torch.rand(2, 1, 16, 16, 16)
    out = cond({"label": torch.tensor([0.0, 1.0]), "structure": structure})
    assert out.class_labels.tolist() == [0, 1] and out.concat.shape == (2, 1, 4, 4, 4)
    assert torch.allclose(out.concat[0, 0, 0, 0, 0], structure[0, 0, :4, :4, :4].mean())
    model = LatentDiffusionModel(tiny_unet(3, in_channels=2, out_channels=1, num_classes=3), conditioner=cond,
                                 null_class_label=2)
    null = model.null_condition(out)
    assert null.class_labels.tolist() == [2, 2] and torch.equal(null.concat, out.concat)
    dropped = model.drop_condition(out, torch.tensor([True, False]))
    assert dropped.class_labels.tolist() == [2, 1] and torch.equal(dropped.concat, out.concat)
    y = model(torch.randn(2, 1, 4, 4, 4), torch.tensor([10, 20]), condition={"label": torch.tensor([0, 1]),
                                                                               "structure": structure})
    assert y.shape == (2, 1, 4, 4, 4)


@pytest.mark.parametrize("condition, words", [
    ({"label": torch.tensor([0])}, "must be a dict with 'label'"),
    ({"label": torch.tensor([0.5]), "structure": torch.rand(1, 1, 8, 8, 8)}, "whole class numbers"),
    ({"label": torch.tensor([3]), "structure": torch.rand(1, 1, 8, 8, 8)}, r"must lie in \[0, 2\)"),
    ({"label": torch.tensor([0]), "structure": torch.rand(1, 8, 8, 8)}, r"must be \(B, 1, \*spatial\)"),
    ({"label": torch.tensor([0, 1, 1]), "structure": torch.rand(2, 1, 8, 8, 8)}, "has batch 2"),
])
def test_bad_conditions_name_the_problem(condition, words):
    with pytest.raises(ValueError, match=words):
        StructureLabelConditioner(latent_size=(4, 4, 4))(condition)


def test_pet_structure_flattens_focal_uptake_but_keeps_the_shape():
    x = np.zeros((32, 32, 32), np.float32)
    x[4:28, 4:28, 4:28] = 1.0  # "brain"
    hot = x.copy()
    hot[10:14, 10:14, 10:14] = 3.0  # a focal hot spot (tau or off-target)
    plain, with_hot = pet_structure(x), pet_structure(hot)
    assert plain.shape == (1, 32, 32, 32) and float(plain.max()) <= 1.0
    assert float((with_hot - plain).abs().max()) < 0.05  # the hot spot is capped at the tissue level
    assert float(plain[0, 16, 16, 16]) > 0.9 and float(plain[0, 1, 1, 1]) < 0.05  # the head's shape stays
    d = PETStructured(keys="image")({"image": torch.from_numpy(hot)[None]})
    assert torch.equal(d["structure"], with_hot)
    with pytest.raises(ValueError, match="non-finite"):
        pet_structure(np.full((8, 8, 8), np.nan))
    with pytest.raises(ValueError, match="no foreground"):
        pet_structure(np.zeros((8, 8, 8)))


def test_collect_condition_keeps_image_conditions_as_images():
    batch = {"label": torch.tensor([0, 1]), "structure": torch.rand(2, 1, 8, 8, 8), "age": [70.0, 71.0]}
    out = collect_condition(batch, ["label", "structure", "age"], torch.device("cpu"))
    assert out["label"].shape == (2,) and out["structure"].shape == (2, 1, 8, 8, 8) and out["age"].shape == (2,)
