"""PIE as ProgressionInferer: the properties REFERENCE.md section 1 derives, shapes, seeds and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler
from helpers.toy_models import GaussianToyDenoiser, tiny_autoencoder, tiny_unet

from monai_pie import DiffusionSampler, LatentDiffusionModel, ProgressionInferer
from monai_pie.inferers import make_generator
from monai_pie.schedules import NoiseSchedule

SCH = DDIMScheduler(1000, clip_sample=False)


def pie(**kw):
    kw.setdefault("num_rounds", 2)
    kw.setdefault("num_inference_steps", 10)
    kw.setdefault("progress", False)
    return ProgressionInferer(SCH, **kw)


def toy_model():
    """Unconditional N(0, 1) (label 0, the null label), target N(2, 0.25) (label 1)."""
    toy = GaussianToyDenoiser(NoiseSchedule.from_scheduler(SCH), means=(0.0, 2.0), variances=(1.0, 0.25))
    return LatentDiffusionModel(toy, null_class_label=0)


TARGET = {"class_labels": torch.ones(4, dtype=torch.long)}


def half_mask(n=16):
    m = torch.zeros(n, n)
    m[:, : n // 2] = 1
    return m


def latent_model(spatial_dims=2, context_dim=None):
    return LatentDiffusionModel(tiny_unet(spatial_dims, 3, 3, context_dim=context_dim), tiny_autoencoder(spatial_dims),
                                scale_factor=0.8).eval()


# ----------------------------------------------------------------------------------------------- the maths
@pytest.mark.parametrize("latent", [False, True])
def test_strength_zero_returns_the_input_unchanged(latent):
    model = latent_model() if latent else LatentDiffusionModel(tiny_unet()).eval()
    x = torch.rand(2, 1, 16, 16)
    res = pie(strength=0.0, num_rounds=3)(x, model, roi_mask=half_mask(), seed=0)
    for frame in res.frames:
        torch.testing.assert_close(frame, x)
    assert torch.all(res.change_norm == 0)


@pytest.mark.parametrize("latent", [False, True])
def test_blend_in_one_no_mask_one_round_is_one_sdedit_pass(latent):
    model = latent_model(context_dim=4) if latent else LatentDiffusionModel(tiny_unet(context_dim=4)).eval()
    x = torch.rand(2, 1, 16, 16)
    ctx = torch.randn(2, 1, 4)
    res = pie(num_rounds=1, blend_in=1.0, strength=0.6, guidance_scale=3.0, decode="direct")(x, model, condition=ctx, seed=5)
    core = DiffusionSampler(SCH, 10, progress=False)
    with torch.no_grad():
        expected = core.edit(model, model.encode(x), strength=0.6, condition=ctx, guidance_scale=3.0, generator=make_generator(5))
        torch.testing.assert_close(res.latents[1], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(res.frames[1], model.decode(expected), rtol=1e-5, atol=1e-5)


def test_change_outside_the_mask_stays_within_blend_out_of_the_change_inside():
    model = latent_model()
    x = torch.rand(2, 1, 16, 16)
    res = pie(num_rounds=3, strength=0.7)(x, model, roi_mask=half_mask(), seed=1)  # mask aligned with the 8x8 latent
    ratio = res.drift_outside / res.drift_inside
    assert torch.all(ratio < 2 * 0.01 / 0.75), ratio
    assert torch.all(res.drift_inside > 0)


def test_per_round_change_decays_geometrically_on_a_toy_score_model():
    """Deterministic PIE on an exact Gaussian score: the change shrinks by the same factor B*L every round,
    the factor scales with blend_in, and the total drift is bounded by |dz_1| / (1 - B L)."""
    x = torch.randn(4, 1, 16, 16, generator=make_generator(0), dtype=torch.float64)
    kw = dict(num_rounds=8, strength=0.5, num_inference_steps=50, guidance_scale=1.0, noise_mode="ddim_inversion")
    ratios = {}
    for b in (0.5, 0.75, 1.0):
        res = pie(blend_in=b, **kw)(x, toy_model(), condition=TARGET, roi_mask=half_mask(), seed=0)
        norms = res.change_norm[:, 0]
        r = norms[1:] / norms[:-1]
        assert torch.allclose(r, r.mean().expand_as(r), rtol=1e-3), r  # geometric
        ratios[b] = r.mean().item()
        bound = norms[0] / (1 - ratios[b])
        assert norms.sum() <= bound + 1e-9
    assert ratios[1.0] < 1.0
    assert abs(ratios[0.75] / ratios[1.0] - 0.75) < 1e-3 and abs(ratios[0.5] / ratios[1.0] - 0.5) < 1e-3


def test_frames_approach_the_conditional_optimum_inside_the_mask():
    x = torch.randn(4, 1, 16, 16, generator=make_generator(0), dtype=torch.float64)
    res = pie(num_rounds=6, strength=0.5, num_inference_steps=50, guidance_scale=1.0, blend_in=1.0)(
        x, toy_model(), condition=TARGET, roi_mask=half_mask(), seed=0)
    inside = res.frames[:, :, :, :, :8]
    distance = (inside.mean(dim=(1, 2, 3, 4)) - 2.0).abs()
    assert distance[0] > 1.5 and distance[-1] < 0.05  # the mean of the target N(2, 0.25)
    assert abs(inside[-1].var().item() - 0.25) < 0.05
    outside = res.frames[:, :, :, :, 8:]
    assert (outside[-1] - outside[0]).abs().max() < 0.05  # blend_out 0.01 keeps the rest


def test_guidance_pushes_further_toward_the_target():
    x = torch.randn(4, 1, 16, 16, generator=make_generator(0), dtype=torch.float64)
    means = []
    for w in (1.0, 3.0):
        res = pie(num_rounds=1, strength=0.5, num_inference_steps=20, guidance_scale=w, blend_in=1.0)(
            x, toy_model(), condition=TARGET, seed=0)
        means.append(res.frames[-1].mean().item())
    assert means[1] > means[0] > 1.0


def test_anchor_previous_accumulates_more_than_anchor_original():
    x = torch.randn(4, 1, 16, 16, generator=make_generator(0), dtype=torch.float64)
    kw = dict(num_rounds=4, strength=0.5, num_inference_steps=20, guidance_scale=1.0, blend_in=0.5)
    orig = pie(anchor="original", **kw)(x, toy_model(), condition=TARGET, seed=0)
    prev = pie(anchor="previous", **kw)(x, toy_model(), condition=TARGET, seed=0)
    assert prev.frames[-1].mean() > orig.frames[-1].mean() + 0.2


# ----------------------------------------------------------------------------------------------- shapes, seeds, conditions
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("latent", [False, True])
def test_shapes_2d_3d_pixel_latent_with_restarts(spatial_dims, latent):
    if latent:
        model = latent_model(spatial_dims, context_dim=4)
    else:
        model = LatentDiffusionModel(tiny_unet(spatial_dims, context_dim=4)).eval()
    size = (16,) * spatial_dims
    x = torch.rand(2, 1, *size)
    res = pie(num_rounds=2, n_restarts=3, num_inference_steps=4)(x, model, condition=torch.randn(1, 1, 4), seed=0)
    assert res.frames.shape == (3, 2, 1, *size)
    lat = (8,) * spatial_dims if latent else size
    assert res.latents.shape == (3, 2, 3 if latent else 1, *lat)
    assert res.change_norm.shape == (2, 2)
    assert res.uncertainty.shape == (2, 2, 1, *size) and torch.all(res.uncertainty >= 0)
    assert res.uncertainty.abs().sum() > 0
    rows = json.loads(json.dumps(res.statistics()))
    assert len(rows) == 2 and rows[0]["round"] == 1 and len(rows[0]["change_norm"]) == 2


def test_same_seed_same_frames():
    model = latent_model()
    x = torch.rand(1, 1, 16, 16)
    a = pie()(x, model, seed=3).frames
    b = pie()(x, model, seed=3).frames
    c = pie()(x, model, seed=4).frames
    torch.testing.assert_close(a, b)
    assert (a[1:] - c[1:]).abs().max() > 1e-4


def test_ddim_inversion_mode_is_deterministic_without_a_seed():
    model = latent_model()
    x = torch.rand(1, 1, 16, 16)
    a = pie(noise_mode="ddim_inversion")(x, model, roi_mask=half_mask()).frames
    b = pie(noise_mode="ddim_inversion")(x, model, roi_mask=half_mask()).frames
    torch.testing.assert_close(a, b)


def test_class_label_and_concat_conditions():
    labels = LatentDiffusionModel(tiny_unet(num_classes=3), null_class_label=0).eval()
    x = torch.rand(2, 1, 16, 16)
    res = pie()(x, labels, condition={"class_labels": torch.tensor([1, 2])}, seed=0)
    assert torch.isfinite(res.frames).all()
    concat = LatentDiffusionModel(tiny_unet(in_channels=2)).eval()
    res = pie(guidance_scale=1.0)(x, concat, condition={"concat": torch.rand(2, 1, 16, 16)}, seed=0)
    assert res.frames.shape == (3, 2, 1, 16, 16)


def test_composite_background_keeps_pixels_outside_the_roi():
    model = latent_model()
    x = torch.rand(1, 1, 16, 16)
    mask = half_mask()
    res = pie(composite_background=True, decode="direct")(x, model, roi_mask=mask, seed=0)
    torch.testing.assert_close(res.frames[-1][..., 8:], x[..., 8:])


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"strength": 1.2}, "strength"), ({"num_rounds": 0}, "num_rounds"), ({"blend_in": 2.0}, "blend_in"),
    ({"blend_out": -0.1}, "blend_out"), ({"anchor": "first"}, "anchor"), ({"noise_mode": "sde"}, "noise_mode"),
    ({"n_restarts": 0}, "n_restarts"), ({"guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_parameters_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pie(**kwargs)


def test_bad_inputs_get_clear_errors():
    model = latent_model()
    x = torch.rand(1, 1, 16, 16)
    inf = pie()
    with pytest.raises(ValueError, match="roi_mask.*does not match"):
        inf(x, model, roi_mask=torch.ones(8, 8))
    with pytest.raises(ValueError, match=r"roi_mask.*\[0, 1\]"):
        inf(x, model, roi_mask=torch.full((16, 16), 2.0))
    with pytest.raises(ValueError, match="roi_mask.*empty"):
        inf(x, model, roi_mask=torch.zeros(16, 16))
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="inputs.*non-finite"):
        inf(bad, model)
    with pytest.raises(ValueError, match="inputs.*channels.*autoencoder takes 1"):
        inf(torch.rand(1, 3, 16, 16), model)
    with pytest.raises(ValueError, match="network is 2D"):
        inf(torch.rand(1, 1, 16, 16, 16), model)
    with pytest.raises(ValueError, match="denoiser.*input channels"):
        inf(torch.rand(1, 2, 16, 16), LatentDiffusionModel(tiny_unet()))
    with pytest.raises(ValueError, match="inputs.*shape"):
        inf(torch.rand(16, 16), model)


# ----------------------------------------------------------------------------------------------- workflow support
def test_batch_first_splits_per_image_and_keeps_every_statistic():
    model = latent_model()
    res = pie(num_rounds=3, n_restarts=2, eta=0.5)(torch.rand(2, 1, 16, 16), model, roi_mask=half_mask(), seed=0)
    out = res.batch_first()
    assert out["frames"].shape == (2, 4, 1, 16, 16) and out["latents"].shape[:2] == (2, 4)
    torch.testing.assert_close(out["frames"][1], res.frames[:, 1])
    for k in ("change_norm", "change_inside", "change_outside", "drift_inside", "drift_outside", "mean_restart_std"):
        assert out[k].shape == (2, 3), k
    assert out["roi_mask"].shape == (2, 1, 16, 16) and out["uncertainty"].shape == (2, 3, 1, 16, 16)
    assert out["seconds_per_round"].shape == (2,) and float(out["seconds_per_round"][0]) > 0
    rows = res.statistics()  # the same numbers, as the JSON rows
    assert rows[2]["change_norm"] == pytest.approx(out["change_norm"][:, 2].tolist())


def test_device_puts_the_results_there_and_rounds_are_bounded():
    res = pie(device="cpu")(torch.rand(1, 1, 16, 16), latent_model(), seed=0)
    assert res.frames.device.type == "cpu" and res.seconds > 0
    with pytest.raises(ValueError, match="at most"):
        pie(num_rounds=100000)


def test_an_image_size_the_autoencoder_cannot_round_trip_fails_before_any_round():
    model = latent_model()
    calls = []
    model.unet.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="round-trip"):
        pie()(torch.rand(1, 1, 15, 15), model, seed=0)
    assert not calls  # no denoiser call was wasted


# ------------------------------------------------------------------------------------ counterfactual edit mode
def counterfactual(**kw):
    return pie(edit_mode="counterfactual", **kw)


def responsive(model):
    """MONAI zero-initialises the UNet's output conv and attention projections, so an untrained net ignores its
    condition; give those weights values."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.unet.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("with_mask", [False, True])
def test_counterfactual_toward_the_source_is_the_identity(with_mask):
    model = responsive(latent_model(context_dim=4))
    x = torch.rand(2, 1, 16, 16)
    ctx = torch.randn(2, 1, 4)
    res = counterfactual(num_rounds=3, strength=0.6)(x, model, condition=ctx, source_condition=ctx.clone(),
                                                      roi_mask=half_mask() if with_mask else None, seed=0)
    assert res.frames.shape == (4, 2, 1, 16, 16)
    for frame in res.frames:
        torch.testing.assert_close(frame, x, rtol=0, atol=0)
    # ... and another target does change the image (the identity is not a no-op inferer)
    moved = counterfactual(num_rounds=1, strength=0.6)(x, model, condition=torch.randn(2, 1, 4), source_condition=ctx)
    assert (moved.frames[-1] - x).abs().max() > 1e-3


def test_counterfactual_dose_response_is_linear_on_an_exact_gaussian_model():
    """Data N(mu, 1) under a context mean: DDIM maps are affine with the same slope for every mu, so the edit is a
    uniform shift (mu_t - mu_s) * c, linear in the frame index, whatever the input."""
    toy = GaussianToyDenoiser(NoiseSchedule.from_scheduler(SCH), context_var=1.0)
    model = LatentDiffusionModel(toy)
    x = torch.randn(3, 1, 8, 8)
    src, tgt = torch.zeros(3, 1, 1), torch.full((3, 1, 1), 2.0)
    res = counterfactual(num_rounds=4, strength=0.5, guidance_scale=1.0)(x, model, condition=tgt, source_condition=src)
    shifts = torch.stack([(f - x) for f in res.frames[1:]])  # (4, B, 1, 8, 8)
    per_frame = shifts.flatten(1).mean(1)
    torch.testing.assert_close(shifts, per_frame.reshape(4, 1, 1, 1, 1).expand_as(shifts), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_frame, per_frame[-1] * torch.tensor([0.25, 0.5, 0.75, 1.0]), atol=1e-4, rtol=0)
    a_k = NoiseSchedule.from_scheduler(SCH).alpha_sigma(res.params["t_start"])[0]
    assert per_frame[-1] == pytest.approx(2.0 * (1.0 - a_k), rel=0.1)


def test_counterfactual_frames_are_the_interpolated_covariates():
    """Frame n of N toward stage s_t is the one-frame counterfactual toward the stage n / N of the way."""
    from monai_pie.conditioning import CovariateConditioner

    torch.manual_seed(0)
    model = responsive(LatentDiffusionModel(
        tiny_unet(2, 3, 3, context_dim=8), tiny_autoencoder(2), scale_factor=0.8,
        conditioner=CovariateConditioner(["stage"], {"stage": (0.0, 1.0)}, embed_dim=8)).eval())
    x = torch.rand(1, 1, 16, 16)
    source = {"stage": torch.tensor([0.1])}
    two = counterfactual(num_rounds=2)(x, model, condition={"stage": torch.tensor([0.9])}, source_condition=source,
                                       seed=3)
    one = counterfactual(num_rounds=1)(x, model, condition={"stage": torch.tensor([0.5])}, source_condition=source,
                                       seed=3)
    torch.testing.assert_close(two.frames[1], one.frames[1], atol=1e-5, rtol=0)
    assert (two.frames[2] - two.frames[1]).abs().max() > 1e-4


def test_counterfactual_mode_errors_name_the_problem():
    model = latent_model(context_dim=4)
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="source_condition"):
        counterfactual()(x, model, condition=torch.randn(1, 1, 4))
    with pytest.raises(ValueError, match="n_restarts"):
        counterfactual(n_restarts=2, noise_mode="ddim_inversion")
    with pytest.raises(ValueError, match="edit_mode"):
        pie(edit_mode="dream")


def test_counterfactual_restarts_average_paired_noise_draws():
    """With stochastic starts, each restart's source and target reconstructions share their noise (so a null edit is
    still the identity), and the frame is the mean of the restarts' differences, whose spread is returned."""
    model = responsive(latent_model(context_dim=4))
    x = torch.rand(2, 1, 16, 16)
    ctx, tgt = torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    null = counterfactual(num_rounds=2, strength=0.6, n_restarts=3)(x, model, condition=ctx, source_condition=ctx,
                                                                    seed=0)
    for frame in null.frames:
        torch.testing.assert_close(frame, x, rtol=0, atol=0)
    res = counterfactual(num_rounds=1, strength=0.6, n_restarts=3)(x, model, condition=tgt, source_condition=ctx,
                                                                   seed=0)
    assert res.uncertainty is not None and res.uncertainty.shape == (1, 2, 1, 16, 16)
    assert res.latent_uncertainty.abs().max() > 0  # the draws differ
    singles = [counterfactual(num_rounds=1, strength=0.6)(x, model, condition=tgt, source_condition=ctx, seed=s)
               for s in range(2)]
    assert not torch.allclose(singles[0].latents[-1], singles[1].latents[-1])  # one draw depends on its seed
    inv = counterfactual(num_rounds=1, strength=0.6, noise_mode="ddim_inversion")
    a, b = (inv(x, model, condition=tgt, source_condition=ctx, seed=s) for s in (0, 1))
    torch.testing.assert_close(a.frames, b.frames)  # the inverted start is deterministic


def test_a_scan_conditioned_model_is_given_the_inputs_own_latent():
    from monai_pie.conditioning import ScanCovariateConditioner

    torch.manual_seed(0)
    cond = ScanCovariateConditioner(["stage"], embed_dim=4, scan_channels=3)
    model = responsive(LatentDiffusionModel(tiny_unet(2, 6, 3, context_dim=4), tiny_autoencoder(2), scale_factor=0.8,
                                            conditioner=cond).eval())
    seen = []
    forward = cond.forward
    cond.forward = lambda c: (seen.append(c["scan"]), forward(c))[1]
    x = torch.rand(2, 1, 16, 16)
    source = {"stage": torch.tensor([0.1, 0.2])}
    res = counterfactual(num_rounds=2)(x, model, condition={"stage": torch.tensor([0.9, 0.9])}, source_condition=source,
                                       seed=0)
    z_star = model.encode(x)
    assert seen and all(torch.allclose(s, z_star, atol=1e-5) for s in seen)
    assert (res.frames[-1] - x).abs().max() > 1e-4
    same = counterfactual(num_rounds=2)(x, model, condition=dict(source), source_condition=source, seed=0)
    torch.testing.assert_close(same.frames[-1], x, rtol=0, atol=0)
    pie_run = pie(num_rounds=1)(x, model, condition={"stage": torch.tensor([0.9, 0.9])}, seed=0)  # PIE rounds too
    assert pie_run.frames.shape == (2, 2, 1, 16, 16)
