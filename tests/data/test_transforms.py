"""The pipelines' transforms: per-item defaults and checks, loading, intensity scaling that remembers its range,
mask checks, default regions of interest, the field-of-view warning, the model grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_pie.data import (
    CheckFieldOfViewd,
    CheckMaskd,
    ForegroundRoid,
    ItemDefaultsd,
    LoadVolumed,
    MaskOnModelGridd,
    RegionRoid,
    ScaleIntensityPercentilesd,
    foreground_roi,
    model_grid_affine,
    region_roi,
    volume_transforms,
)


def test_item_defaults_fill_only_what_is_missing_and_check_it():
    t = ItemDefaultsd({"age": 72.0, "sex": 0, "prompt": "p"}, numeric=["age"], ranges={"stage": [0, 1]},
                      choices={"sex": [0, 1]})
    out = t({"image": "a.nii.gz", "age": None, "sex": 1, "stage": "0.4"})
    assert out == {"image": "a.nii.gz", "age": 72.0, "sex": 1, "stage": 0.4, "prompt": "p"}
    optional = ItemDefaultsd({"source_stage": None})  # a None default leaves the field out, so batches collate
    assert optional({"image": "a", "source_stage": None}) == {"image": "a"}
    assert optional({"image": "a", "source_stage": 0.2}) == {"image": "a", "source_stage": 0.2}
    older = ItemDefaultsd({"age": 72.0, "target_age": None}, ranges={"target_age": [40, 100]},
                          fallbacks={"target_age": "age"})  # an edit keeps the input's age unless asked otherwise
    assert older({"age": 65.0})["target_age"] == 65.0 and older({})["target_age"] == 72.0
    assert older({"age": 65.0, "target_age": 75})["target_age"] == 75.0
    with pytest.raises(ValueError, match="`target_age` must be in"):
        older({"age": 65.0, "target_age": 120})
    for item, says in (({"image": "x", "age": "old", "stage": 0.1}, "`age` must be a finite number, got 'old' (item x)"),
                       ({"stage": 1.5}, "`stage` must be in [0, 1]"), ({"stage": 0.2, "sex": 2}, "`sex` must be one of"),
                       ({"stage": float("nan")}, "`stage` must be a finite number"), ({"stage": True}, "finite number")):
        with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            t(item)


def test_scale_intensity_records_the_range_it_mapped(tmp_path):
    img = MetaTensor(torch.linspace(10, 210, 201).reshape(1, 201, 1, 1))
    out = ScaleIntensityPercentilesd("image", lower=0, upper=100)({"image": img})["image"]
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert (out.meta["scale_low"], out.meta["scale_high"]) == (10.0, 210.0)
    with pytest.raises(ValueError, match="constant"):
        ScaleIntensityPercentilesd("image")({"image": MetaTensor(torch.ones(1, 4, 4, 4))})
    with pytest.raises(ValueError, match="percentiles"):
        ScaleIntensityPercentilesd("image", lower=50, upper=10)


def _mask(shape, affine=None, value=1.0):
    return MetaTensor(torch.full((1, *shape), float(value)), affine=torch.as_tensor(np.eye(4) if affine is None else affine))


def test_check_mask_against_its_image():
    image = _mask((4, 5, 6))
    ok = CheckMaskd("roi")({"image": image, "roi": _mask((4, 5, 6), value=0.5)})["roi"]
    assert float(ok.max()) == 0.5
    labels = CheckMaskd("roi", binarize=True)({"image": image, "roi": _mask((4, 5, 6), value=255)})["roi"]
    assert float(labels.max()) == 1.0  # 0/255 label files become 0/1
    for roi, says in ((_mask((4, 5, 7)), "share the voxel grid"), (_mask((4, 5, 6), np.eye(4) * 2), "different affines"),
                      (_mask((4, 5, 6), value=0), "empty"), (_mask((4, 5, 6), value=2), "values in")):
        with pytest.raises(ValueError, match=says):
            CheckMaskd("roi")({"image": image, "roi": roi})


def test_mask_on_the_model_grid_keeps_thin_regions_and_rejects_empty_ones():
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0] = 0.3
    assert float(MaskOnModelGridd("roi", coverage=0.25)({"roi": m})["roi"].sum()) == 1.0
    with pytest.raises(ValueError, match="covers no voxel"):
        MaskOnModelGridd("roi", coverage=0.5)({"roi": m})
    assert float(MaskOnModelGridd("roi")({"roi": m * 5})["roi"].max()) == 1.0  # clamped soft mask


def test_default_rois_fill_only_missing_masks_and_say_where_each_came_from():
    image = torch.zeros(1, 10, 10, 10)
    image[0, 3:7, 3:7, 3:7] = 1.0
    d = ForegroundRoid("roi", "image", threshold=0.5, dilate=0)({"image": image})
    roi = d["roi"][0]
    assert roi[4:6, 4:6, 4:6].all() and roi[:2].sum() == 0 and roi[8:].sum() == 0  # the object, not the background
    assert d["roi_source"] == "whole brain (automatic)"
    given = MetaTensor(torch.ones(1, 10, 10, 10), meta={"filename_or_obj": "/data/roi.nii.gz"})
    d = ForegroundRoid("roi", "image")({"image": image, "roi": given})
    assert d["roi"] is given and d["roi_source"] == "/data/roi.nii.gz"
    d = RegionRoid("roi", "image", region="heart")({"image": torch.zeros(1, 32, 32)})
    assert d["roi"].shape == (1, 32, 32) and d["roi_source"] == "default heart region"
    assert torch.equal(d["roi"], region_roi((32, 32), "heart"))
    with pytest.raises(ValueError, match="roi_region"):
        RegionRoid(region="kidney")
    with pytest.raises(ValueError, match="foreground"):
        foreground_roi(torch.zeros(1, 5, 5, 5))


def test_a_volume_much_smaller_than_the_model_grid_warns():
    small = MetaTensor(torch.rand(1, 8, 8, 8), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    with pytest.warns(UserWarning, match="covers only 16 x 16 x 16 mm"):
        CheckFieldOfViewd("image", (2.5,) * 3, (64, 80, 64))({"image": small})
    big = MetaTensor(torch.rand(1, 80, 64, 70), affine=torch.diag(torch.tensor([2.0, 2.5, 2.5, 1.0])))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CheckFieldOfViewd("image", (2.5,) * 3, (64, 80, 64))({"image": big})  # axes in another order: fine


def test_volume_pipeline_and_model_grid_affine(tmp_path):
    data = np.random.default_rng(0).random((30, 36, 30)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "v.nii.gz")
    out = Compose(volume_transforms((4.0, 4.0, 4.0), (16, 16, 16)))({"image": str(tmp_path / "v.nii.gz")})["image"]
    assert tuple(out.shape) == (1, 16, 16, 16) and out.dtype == torch.float32 and not hasattr(out, "meta")
    affine = model_grid_affine(str(tmp_path / "v.nii.gz"), (4.0, 4.0, 4.0), (16, 16, 16))
    assert np.allclose(np.diag(affine)[:3], 4.0)
    loaded = LoadVolumed(["image", "roi"], allow_missing_keys=True)({"image": str(tmp_path / "v.nii.gz")})
    assert tuple(loaded["image"].shape) == (1, 30, 36, 30) and "roi" not in loaded
