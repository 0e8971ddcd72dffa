"""The sampler core: levels, updates against MONAI's schedulers, toy-model maths, guidance, known region."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler
from helpers.toy_models import GaussianToyDenoiser, tiny_autoencoder, tiny_unet

from monai_pie import DiffusionCondition, DiffusionSampler, LatentDiffusionModel
from monai_pie.inferers import make_generator
from monai_pie.schedules import NoiseSchedule


def ddim(n=50, **kw):
    return DiffusionSampler(DDIMScheduler(1000, clip_sample=False), n, progress=False, **kw)


# ----------------------------------------------------------------------------------------------- levels
def test_levels_full_partial_and_empty():
    s = ddim(50)
    full = s.levels()
    assert full[0] == 999 and full[-1] == -1 and len(full) == 51
    assert all(a > b for a, b in zip(full, full[1:]))
    half = s.levels(strength=0.5)
    assert half[0] == 499 and len(half) == 26  # PIE: 25 of 50 steps at strength 0.5
    assert s.levels(strength=0.0) == [-1]
    assert s.levels(t_start=10, num_inference_steps=1000) == list(range(10, -2, -1))


def test_levels_flow_schedule():
    s = DiffusionSampler(RFlowScheduler(1000), 10, progress=False)
    assert s.levels() == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100, 0]


@pytest.mark.parametrize("kwargs, match", [
    ({"strength": 1.5}, "strength"), ({"strength": -0.1}, "strength"),
    ({"num_inference_steps": 0}, "num_inference_steps"), ({"t_start": 5000}, "t_start"),
])
def test_levels_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim().levels(**kwargs)


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="method"):
        ddim(method="heun")
    with pytest.raises(ValueError, match="euler"):
        ddim(method="euler")  # euler is the rectified-flow update
    with pytest.raises(ValueError, match="prediction_type"):
        ddim(prediction_type="score")
    with pytest.raises(ValueError, match="eta"):
        ddim(eta=-1)


# ----------------------------------------------------------------------------------------------- updates vs MONAI
def test_ddim_matches_monai_step_when_its_stride_agrees():
    """With n dividing T, MONAI's `t - T//n` stride equals our explicit pairs: the updates must agree."""
    monai_sch = DDIMScheduler(1000, clip_sample=False)
    monai_sch.set_timesteps(10)
    ours = DiffusionSampler(DDIMScheduler(1000, clip_sample=False), 10, progress=False)
    levels = ours.levels()
    x_ours = x_monai = torch.randn(2, 1, 8, 8)
    unet = tiny_unet().eval()
    with torch.no_grad():
        for t, t_prev in zip(levels[:-1], levels[1:]):
            ts = torch.full((2,), t)
            x_monai, _ = monai_sch.step(unet(x_monai, ts), t, x_monai)
            x_ours = ours.step(unet(x_ours, ts), x_ours, t, t_prev)
    torch.testing.assert_close(x_ours, x_monai, rtol=1e-5, atol=1e-5)


def test_ddpm_matches_monai_ancestral_step():
    monai_sch = DDPMScheduler(1000, clip_sample=False)
    ours = DiffusionSampler(DDPMScheduler(1000, clip_sample=False), 1000, method="ddpm", progress=False)
    x = torch.randn(2, 1, 8, 8)
    out = torch.randn_like(x)
    for t in (999, 500, 1, 0):
        expected, _ = monai_sch.step(out, t, x, generator=torch.Generator().manual_seed(3))
        got = ours.step(out, x, t, t - 1, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=5e-4)  # MONAI computes in float32


def test_ddim_eta_one_equals_ddpm_posterior():
    a = DiffusionSampler(DDIMScheduler(1000, clip_sample=False), 20, eta=1.0, progress=False)
    b = DiffusionSampler(DDIMScheduler(1000, clip_sample=False), 20, method="ddpm", progress=False)
    x, out = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    for t, tp in [(999, 949), (500, 450), (49, -1)]:
        ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        torch.testing.assert_close(a.step(out, x, t, tp, ga), b.step(out, x, t, tp, gb), rtol=1e-4, atol=1e-5)


def test_rectified_flow_euler_matches_monai_and_ddim():
    monai_sch = RFlowScheduler(1000)
    monai_sch.set_timesteps(10)
    euler = DiffusionSampler(RFlowScheduler(1000), 10, method="euler", progress=False)
    as_ddim = DiffusionSampler(RFlowScheduler(1000), 10, method="ddim", progress=False)
    x, v = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    expected, _ = monai_sch.step(v, 700, x, 600)
    torch.testing.assert_close(euler.step(v, x, 700, 600), expected)
    torch.testing.assert_close(as_ddim.step(v, x, 700, 600), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- toy-model maths
@pytest.mark.parametrize("scheduler, ptype", [
    (DDIMScheduler(1000, clip_sample=False), "epsilon"),
    (DDIMScheduler(1000, clip_sample=False), "v_prediction"),
    (DDIMScheduler(1000, clip_sample=False), "sample"),
    (RFlowScheduler(1000), "v_prediction"),
])
def test_deterministic_ddim_gives_the_gaussian_target(scheduler, ptype):
    """Exact score of N(1.5, 0.25): deterministic DDIM from pure noise gives that mean and variance."""
    s = DiffusionSampler(scheduler, 1000, prediction_type=ptype, progress=False)
    toy = GaussianToyDenoiser(s.schedule, means=(1.5,), variances=(0.25,))
    x = s.generate(toy, (2048, 1, 4, 4), generator=make_generator(0), dtype=torch.float64)
    assert abs(x.mean().item() - 1.5) < 0.02
    assert abs(x.var().item() - 0.25) < 0.01


def test_ddpm_ancestral_gives_the_gaussian_target():
    s = DiffusionSampler(DDPMScheduler(1000, clip_sample=False), 1000, method="ddpm", progress=False)
    toy = GaussianToyDenoiser(s.schedule, means=(-0.5,), variances=(0.5,))
    x = s.generate(toy, (2048, 1, 4, 4), generator=make_generator(0), dtype=torch.float64)
    assert abs(x.mean().item() + 0.5) < 0.02 and abs(x.var().item() - 0.5) < 0.02


@pytest.mark.parametrize("scheduler", [DDIMScheduler(1000, clip_sample=False), RFlowScheduler(1000)])
def test_ddim_inversion_then_sampling_reconstructs(scheduler):
    s = DiffusionSampler(scheduler, 50, progress=False)
    toy = GaussianToyDenoiser(s.schedule, means=(1.5,), variances=(0.25,))
    x0 = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=make_generator(1)) * 0.5 + 1.5
    naive = s.sample(toy, s.invert(toy, x0))
    refined = s.sample(toy, s.invert(toy, x0, refine_steps=6))
    assert (refined - x0).abs().max() < 1e-3
    assert (refined - x0).abs().max() < 0.1 * (naive - x0).abs().max()
    z = s.invert(toy, x0, refine_steps=6)
    assert abs(z.std().item() - 1.0) < 0.25  # lands in the noise distribution, not at x0


def test_inversion_trajectory_has_every_level():
    s = ddim(10)
    toy = GaussianToyDenoiser(s.schedule)
    x0 = torch.randn(2, 1, 4, 4)
    z, traj = s.invert(toy, x0, strength=0.5, return_trajectory=True)
    assert sorted(traj) == sorted(s.levels(strength=0.5))
    torch.testing.assert_close(traj[-1], x0)
    torch.testing.assert_close(traj[s.levels(strength=0.5)[0]], z)


# ----------------------------------------------------------------------------------------------- guidance
def test_guidance_scale_one_is_the_conditional_model_alone():
    s = ddim(20)
    toy = GaussianToyDenoiser(s.schedule, means=(0.0, 2.0), variances=(1.0, 0.2))
    x = torch.randn(4, 1, 4, 4, generator=make_generator(0))
    cond = DiffusionCondition(class_labels=torch.ones(4, dtype=torch.long))
    null = DiffusionCondition(class_labels=torch.zeros(4, dtype=torch.long))
    toy.calls = 0
    guided = s.sample(toy, x, condition=cond, null_condition=null, guidance_scale=1.0)
    calls_guided = toy.calls
    toy.calls = 0
    alone = s.sample(toy, x, condition=cond)
    torch.testing.assert_close(guided, alone)
    assert calls_guided == toy.calls == 20  # no unconditional pass at w = 1


def test_guidance_is_one_batched_forward_with_the_cfg_formula():
    s = ddim(20)
    toy = GaussianToyDenoiser(s.schedule, means=(0.0, 2.0), variances=(1.0, 0.2))
    x = torch.randn(3, 1, 4, 4)
    cond = DiffusionCondition(class_labels=torch.ones(3, dtype=torch.long))
    null = DiffusionCondition(class_labels=torch.zeros(3, dtype=torch.long))
    model = LatentDiffusionModel(toy)
    toy.calls = 0
    got = s.model_output(model, x, 500, cond, null, guidance_scale=3.0)
    assert toy.calls == 1
    ts = torch.full((3,), 500)
    u, c = toy(x, ts, class_labels=null.class_labels), toy(x, ts, class_labels=cond.class_labels)
    torch.testing.assert_close(got, u + 3.0 * (c - u))


def test_class_label_guidance_needs_a_null_label():
    s = ddim(5)
    model = LatentDiffusionModel(tiny_unet(num_classes=3))
    with pytest.raises(ValueError, match="null_class_label"):
        s.sample(model, torch.randn(1, 1, 8, 8), condition={"class_labels": torch.tensor([1])}, guidance_scale=2.0)
    model.null_class_label = 0
    out = s.sample(model, torch.randn(1, 1, 8, 8), condition={"class_labels": torch.tensor([1])}, guidance_scale=2.0)
    assert out.shape == (1, 1, 8, 8) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------- known region, seeds
def test_known_region_is_kept_outside_the_mask():
    s = ddim(10)
    unet = tiny_unet().eval()
    known = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    x = torch.randn(2, 1, 8, 8)
    out = s.sample(unet, x, known=known, mask=mask, generator=make_generator(0))
    torch.testing.assert_close(out * (1 - mask), known * (1 - mask))
    assert (out * mask - known * mask).abs().max() > 1e-3
    with pytest.raises(ValueError, match="known"):
        s.sample(unet, x, mask=mask)


def test_same_seed_same_output_different_seed_different():
    s = ddim(10, eta=0.5)
    unet = tiny_unet().eval()
    a = s.generate(unet, (2, 1, 8, 8), generator=make_generator(7))
    b = s.generate(unet, (2, 1, 8, 8), generator=make_generator(7))
    c = s.generate(unet, (2, 1, 8, 8), generator=make_generator(8))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------- 2D / 3D, latent
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_latent_edit_2d_3d_with_context(spatial_dims):
    s = ddim(4)
    model = LatentDiffusionModel(tiny_unet(spatial_dims, 3, 3, context_dim=4), tiny_autoencoder(spatial_dims), scale_factor=0.7)
    x = torch.rand((2, 1) + (16,) * spatial_dims)
    z = model.encode(x)
    assert z.shape == (2, 3) + (8,) * spatial_dims
    out = s.edit(model, z, strength=0.5, condition=torch.randn(2, 1, 4), guidance_scale=2.0, generator=make_generator(0))
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert model.decode(out).shape == x.shape


def test_concat_condition_and_channel_check():
    s = ddim(3)
    model = LatentDiffusionModel(tiny_unet(2, in_channels=2, out_channels=1))
    x = torch.randn(2, 1, 8, 8)
    out = s.sample(model, x, condition={"concat": torch.randn(2, 1, 8, 8)})
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="input channels"):
        s.sample(model, x)  # forgot the concatenated channel


def test_scale_factor_is_in_the_state_dict():
    model = LatentDiffusionModel(tiny_unet(), tiny_autoencoder(), scale_factor=0.25)
    sd = model.state_dict()
    assert float(sd["scale_factor"]) == 0.25
    other = LatentDiffusionModel(tiny_unet(), tiny_autoencoder(), scale_factor=1.0)
    other.load_state_dict(sd)
    assert float(other.scale_factor) == 0.25


def test_noise_schedule_reads_monai_tables_and_prediction_type():
    sch = NoiseSchedule.from_scheduler(DDPMScheduler(1000, prediction_type="v_prediction"))
    assert sch.kind == "vp" and sch.prediction_type == "v_prediction"
    a, s = sch.alpha_sigma(500)
    assert abs(a * a + s * s - 1) < 1e-9
    assert sch.alpha_sigma(-1) == (1.0, 0.0)
    with pytest.raises(TypeError, match="noise schedule"):
        NoiseSchedule.from_scheduler(object())
