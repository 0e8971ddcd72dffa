"""GenerationInferer: seeded noise streams, batching, conditions, output range and bad settings."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_models import tiny_autoencoder, tiny_unet
from monai.networks.schedulers import DDIMScheduler

from monai_pie import GenerationInferer, LatentDiffusionModel
from monai_pie.conditioning import DiffusionCondition
from monai_pie.inferers import condition_batch_size

SCH = DDIMScheduler(1000, clip_sample=False)


def model(context_dim: int | None = 4) -> LatentDiffusionModel:
    net = LatentDiffusionModel(tiny_unet(2, 3, 3, context_dim=context_dim), tiny_autoencoder(2), scale_factor=0.8)
    with torch.no_grad():  # MONAI zero-inits the output projection: perturb so the condition reaches the output
        for p in net.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def gen(**kw) -> GenerationInferer:
    kw.setdefault("num_inference_steps", 4)
    return GenerationInferer(SCH, (16, 16), progress=False, **kw)


def ctx(batch: int, value: float = 1.0) -> dict:
    return {"context": torch.full((batch, 1, 4), value)}


def test_shapes_range_and_a_reproducible_stream():
    net = model()
    x = gen(seed=0)(ctx(3), net)
    assert x.shape == (3, 1, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    a = gen(seed=0)
    first, second = a(ctx(2), net), a(ctx(2), net)
    assert not torch.equal(first, second)  # the stream continues
    a.reset()
    torch.testing.assert_close(a(ctx(2), net), first)  # restarted at the seed
    torch.testing.assert_close(gen(seed=0)(ctx(2), net), first)
    assert not torch.equal(gen(seed=1)(ctx(2), net), first)


def test_condition_and_guidance_change_the_samples():
    net = model()
    base = gen(seed=0, guidance_scale=3.0)(ctx(1, 1.0), net)
    assert not torch.equal(base, gen(seed=0, guidance_scale=3.0)(ctx(1, -1.0), net))
    assert not torch.equal(base, gen(seed=0, guidance_scale=1.0)(ctx(1, 1.0), net))


def test_unconditional_model_takes_a_batch_size():
    x = gen(seed=0)(2, model(context_dim=None))
    assert x.shape == (2, 1, 16, 16)


def test_condition_batch_size():
    assert condition_batch_size(["a", "b", "c"]) == 3 and condition_batch_size("a prompt") == 1
    assert condition_batch_size({"age": torch.zeros(4), "sex": torch.zeros(4)}) == 4
    assert condition_batch_size({"age": [70.0, 80.0]}) == 2 and condition_batch_size(5) == 5
    assert condition_batch_size(DiffusionCondition(context=torch.zeros(2, 1, 4))) == 2
    for bad in ({}, [], None, True):
        with pytest.raises((ValueError, TypeError)):
            condition_batch_size(bad)


@pytest.mark.parametrize(("kw", "match"), [
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        gen(**kw)
    with pytest.raises(ValueError, match="image_size"):
        GenerationInferer(SCH, (16,))


def test_an_image_size_the_autoencoder_cannot_round_trip_is_an_error():
    with pytest.raises(ValueError, match="round-trip"):
        GenerationInferer(SCH, (15, 15), num_inference_steps=2, progress=False)(ctx(1), model())


def test_a_context_of_the_wrong_width_names_both_widths():
    with pytest.raises(ValueError, match="width 5.*takes 4"):
        gen(seed=0)({"context": torch.zeros(1, 1, 5)}, model())
