"""AnomalyInferer on an exact-score toy model with a known answer: a disease pattern only the unhealthy class has
is found, off-target structure both classes have is not (even at a subject-specific intensity), a healthy image
gives no anomaly; the maps, masks, regions, seeds and bad inputs behave as documented."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_models import GaussianToyDenoiser, tiny_autoencoder, tiny_unet
from monai.networks.schedulers import DDIMScheduler

from monai_pie import AnomalyInferer, LatentDiffusionModel
from monai_pie.inferers import anomaly_map, regional_means
from monai_pie.schedules import NoiseSchedule

SCH = DDIMScheduler(1000, clip_sample=False)
HEALTHY, UNHEALTHY = {"class_labels": torch.tensor([0])}, {"class_labels": torch.tensor([1])}


def patterns(n: int = 16, dims: int = 2) -> dict[str, torch.Tensor]:
    """Background ``b``, a disease blob ``a`` (unhealthy class only) and an off-target blob ``o`` (both classes)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * dims, indexing="ij"))

    def blob(centre: float) -> torch.Tensor:
        return torch.exp(-((grid - centre) ** 2).sum(0) / (2 * 1.5**2))[None]

    b = torch.full((1,) + (n,) * dims, 1.0, dtype=torch.float64)
    return {"b": b, "a": blob(4.0), "o": blob(11.0)}


def toy_model(p: dict[str, torch.Tensor], var: float = 0.01) -> LatentDiffusionModel:
    healthy_mean, unhealthy_mean = p["b"] + p["o"], p["b"] + p["o"] + p["a"]
    toy = GaussianToyDenoiser(NoiseSchedule.from_scheduler(SCH), means=torch.stack([healthy_mean, unhealthy_mean]),
                              variances=(var, var))
    return LatentDiffusionModel(toy, null_class_label=2)  # label 2: the mixture, as a model with condition dropout


def inferer(**kw) -> AnomalyInferer:
    return AnomalyInferer(SCH, **{"num_inference_steps": 50, "t0": 0.5, **kw})


def region(p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return (p[name] > 0.5)[None]


@pytest.mark.parametrize("start", ["ddim_inversion", "partial_noise"])
def test_disease_is_found_and_off_target_at_its_own_intensity_is_not(start):
    p = patterns()
    x = (p["b"] + 1.6 * p["o"] + p["a"])[None].float()  # this subject's off-target is 60 % brighter than average
    res = inferer(start=start)(x, toy_model(p), healthy=HEALTHY, unhealthy=UNHEALTHY)
    disease, off_target = region(p, "a"), region(p, "o")
    amap = res.anomaly
    assert amap[disease].mean() > 0.3  # most of the unit-height blob
    assert amap[off_target].mean() < 0.05 * amap[disease].mean()  # both classes explain off-target binding
    assert res.loss_healthy[off_target].mean() > 0.2 * res.loss_healthy[disease].mean()  # L_H alone flags it
    top = amap.flatten().topk(int(disease.sum())).indices
    assert disease.flatten()[top].float().mean() > 0.9  # the strongest voxels are the disease
    assert (res.healthy - x)[disease].mean() < -0.3  # the pseudo-healthy image has no disease blob


@pytest.mark.parametrize("start", ["ddim_inversion", "partial_noise"])
def test_a_healthy_image_has_no_anomaly(start):
    p = patterns()
    x = (p["b"] + 1.6 * p["o"])[None].float()
    res = inferer(start=start)(x, toy_model(p), healthy=HEALTHY, unhealthy=UNHEALTHY)
    assert res.anomaly.max() < 0.15 and res.anomaly.mean() < 0.01  # against about 1 in a diseased image


def test_inverting_under_one_class_biases_the_map():
    """Why the default inverts under the null (mixture) condition: inverted under the unhealthy class, a healthy image
    comes back below itself in the healthy reconstruction and the disease region lights up; under the healthy class
    a diseased image is reproduced and nothing is found."""
    p = patterns()
    healthy_x, sick_x = (p["b"] + p["o"])[None].float(), (p["b"] + p["o"] + p["a"])[None].float()
    model, disease = toy_model(p), region(p, "a")
    false_alarm = inferer(inversion_condition="unhealthy")(healthy_x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    missed = inferer(inversion_condition="healthy")(sick_x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    null_h = inferer()(healthy_x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    null_s = inferer()(sick_x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    assert false_alarm.anomaly[disease].mean() > 5 * null_h.anomaly[disease].mean()
    assert missed.anomaly[disease].mean() < 0.2 * null_s.anomaly[disease].mean()


def test_maps_alternatives_and_their_definitions():
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    h = torch.tensor([[[[1.0, 1.0, 4.0]]]])
    u = torch.tensor([[[[1.5, 2.0, 3.0]]]])
    assert anomaly_map(x, h, u, "complementary").flatten().tolist() == [0.0, 1.0, 1.0]
    assert anomaly_map(x, h, u, "healthy_excess").flatten().tolist() == [0.0, 1.0, 0.0]  # only uptake above H
    assert anomaly_map(x, h, u, "healthy_residual").flatten().tolist() == [0.0, 1.0, 1.0]
    assert anomaly_map(x, h, u, "difference").flatten().tolist() == [0.5, 1.0, 0.0]  # U above H, whatever x is
    assert anomaly_map(x, h, u, "supported_difference").flatten().tolist() == [0.0, 1.0, 0.0]  # ... and x above H
    with pytest.raises(ValueError, match="`anomaly_map` must be one of"):
        anomaly_map(x, h, u, "zscore")


def test_difference_marks_where_disease_would_be_supported_difference_needs_it_in_the_image():
    """From pure noise the unhealthy reconstruction carries the disease blob whatever the image holds: the bare
    difference marks it in a healthy image (a location prior), the supported difference does not, and both find it
    in a diseased image."""
    p = patterns()
    model, disease = toy_model(p), region(p, "a")
    healthy_x, sick_x = (p["b"] + p["o"])[None].float(), (p["b"] + p["o"] + p["a"])[None].float()
    run = {"start": "partial_noise", "t0": 1.0}
    prior = inferer(anomaly_map="difference", **run)(healthy_x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    gated = inferer(anomaly_map="supported_difference", **run)(healthy_x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    found = inferer(anomaly_map="supported_difference", **run)(sick_x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    assert prior.anomaly[disease].mean() > 0.3
    assert gated.anomaly[disease].mean() < 0.2 * prior.anomaly[disease].mean()
    assert found.anomaly[disease].mean() > 0.3


def test_mask_and_regional_scores_in_3d():
    p = patterns(n=8, dims=3)
    x = (p["b"] + p["o"] + 2 * p["a"])[None].float()
    mask = torch.ones(8, 8, 8)
    mask[:, :, :2] = 0
    labels = torch.zeros(8, 8, 8, dtype=torch.long)
    labels[:6], labels[6:] = 1, 2
    res = inferer(num_inference_steps=20)(x, toy_model(p), healthy=HEALTHY, unhealthy=UNHEALTHY, mask=mask,
                                         labels=labels)
    assert res.anomaly.shape == (1, 1, 8, 8, 8) and float(res.anomaly[..., :2].abs().max()) == 0.0
    inside = mask.bool()
    for r in (1, 2):
        sel = (labels == r) & inside
        assert torch.isclose(res.regional[0, r - 1], res.anomaly[0, 0][sel].mean(), atol=1e-6)
    assert res.regional[0, 0] > res.regional[0, 1]  # the disease blob sits in region 1
    out = res.batch_first()
    assert out["regional"].shape == (1, 2) and out["mask"].shape == (1, 1, 8, 8, 8)


def test_regional_means_of_an_empty_region_is_nan():
    values = torch.arange(4.0).reshape(1, 1, 2, 2)
    labels = torch.tensor([[[[1, 1], [3, 3]]]])
    means = regional_means(values, labels)
    assert means[0, 0] == 0.5 and torch.isnan(means[0, 1]) and means[0, 2] == 2.5


def test_deterministic_and_both_reconstructions_share_the_noise():
    p = patterns()
    x = (p["b"] + p["o"] + p["a"])[None].float()
    model = toy_model(p)
    a = inferer(start="partial_noise", seed=3)(x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    b = inferer(start="partial_noise", seed=3)(x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    c = inferer(start="partial_noise", seed=4)(x, model, healthy=HEALTHY, unhealthy=UNHEALTHY)
    assert torch.equal(a.anomaly, b.anomaly) and not torch.equal(a.healthy, c.healthy)
    same = inferer(start="partial_noise", seed=3)(x, model, healthy=HEALTHY, unhealthy=HEALTHY)
    assert torch.equal(same.healthy, same.unhealthy) and float(same.anomaly.max()) == 0.0  # one start, one noise


def test_a_latent_model_in_2d_runs_and_keeps_shapes():
    model = LatentDiffusionModel(tiny_unet(2, in_channels=3, out_channels=3, num_classes=3), tiny_autoencoder(2),
                                 null_class_label=2)
    x = torch.rand(2, 1, 16, 16)
    res = AnomalyInferer(SCH, num_inference_steps=4, t0=0.5)(x, model, healthy={"class_labels": torch.tensor([0, 0])},
                                                             unhealthy={"class_labels": torch.tensor([1, 1])})
    assert res.healthy.shape == x.shape and res.anomaly.shape == (2, 1, 16, 16) and torch.isfinite(res.anomaly).all()


@pytest.mark.parametrize("inputs, kwargs, words", [
    (torch.zeros(1, 1, 4, 4, 4, 2), {}, "must have shape"),
    (torch.full((1, 1, 16, 16), float("nan")), {}, "non-finite"),
    (torch.ones(1, 1, 16, 16), {"mask": torch.zeros(16, 16)}, "`mask` is empty"),
    (torch.ones(1, 1, 16, 16), {"mask": torch.ones(8, 8)}, "does not match the image's spatial shape"),
    (torch.ones(1, 1, 16, 16), {"labels": torch.full((16, 16), 0.5)}, "whole numbers"),
    (torch.ones(1, 1, 16, 16), {"unhealthy": None}, "give both conditions"),
])
def test_bad_inputs_name_the_problem(inputs, kwargs, words):
    model = toy_model(patterns())
    call = {"healthy": HEALTHY, "unhealthy": UNHEALTHY, **kwargs}
    with pytest.raises(ValueError, match=words):
        inferer()(inputs, model, **call)


@pytest.mark.parametrize("kw, words", [({"t0": 0.0}, "`t0`"), ({"start": "sdedit"}, "`start`"),
                                       ({"anomaly_map": "zscore"}, "`anomaly_map`"),
                                       ({"inversion_condition": "cn"}, "`inversion_condition`"),
                                       ({"guidance_scale": -1}, "`guidance_scale`")])
def test_bad_settings_name_the_setting(kw, words):
    with pytest.raises(ValueError, match=words):
        AnomalyInferer(SCH, **kw)
