"""Inference acceleration changes how networks compute, not what they return."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import AutoencoderKL
from monai.networks.schedulers import DDIMScheduler

from monai_pie import LatentDiffusionModel, ProgressionInferer
from monai_pie.inferers import DiffusionSampler
from monai_pie.networks import accelerate_for_inference, use_channels_last, use_fused_attention
from tests.helpers.toy_models import tiny_autoencoder, tiny_unet, with_random_output


def _unet(spatial_dims: int = 2, context_dim: int | None = 4):
    """A tiny U-Net whose (zero-initialised) output convolution is randomised, so its output is not identically 0."""
    return with_random_output(tiny_unet(spatial_dims, in_channels=3, out_channels=3, context_dim=context_dim))


def _flash_flags(module):
    return [m.use_flash_attention for m in module.modules() if hasattr(m, "use_flash_attention")]


def test_fused_attention_same_output_and_skips_dropout_blocks():
    ae = tiny_autoencoder(2).eval()  # MONAI's default: non-local attention in encoder and decoder
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        ref = ae.reconstruct(x)[0]
        switched = use_fused_attention(ae)
        out = ae.reconstruct(x)[0]
    assert switched >= 2 and all(_flash_flags(ae))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    ae_drop = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16), latent_channels=3,
                            attention_levels=(False, True), num_res_blocks=1, norm_num_groups=8)
    for m in ae_drop.modules():
        if hasattr(m, "dropout_rate"):
            m.dropout_rate = 0.1  # the fused kernel would apply it even in eval mode
    assert use_fused_attention(ae_drop) == 0 and not any(_flash_flags(ae_drop))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_same_output_same_parameters(spatial_dims):
    unet = _unet(spatial_dims)
    params = dict(unet.named_parameters())
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    x = torch.randn(2, 3, *(8,) * spatial_dims)
    t, ctx = torch.tensor([10, 500]), torch.randn(2, 1, 4)
    with torch.no_grad():
        ref = unet(x, t, ctx)
        use_channels_last(unet)
        out = unet(x, t, ctx)
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    assert unet.conv_in.conv.weight.is_contiguous(memory_format=fmt)
    assert all(p is params[n] for n, p in unet.named_parameters())  # optimisers keep working
    for k, v in unet.state_dict().items():
        torch.testing.assert_close(v, state[k], atol=0, rtol=0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_accelerated_progression_matches_unaccelerated():
    """Same PIE call, same seed: frames and latents agree to float rounding with and without acceleration, and the
    network is prepared once (idempotent flag)."""
    def model():
        return LatentDiffusionModel(_unet(3), tiny_autoencoder(3).eval())

    x = torch.rand(2, 1, 16, 16, 16)
    ctx = torch.randn(2, 1, 4)
    results = {}
    for accelerate in (False, True):
        net = model()
        inferer = ProgressionInferer(DDIMScheduler(1000, clip_sample=False), num_rounds=5, num_inference_steps=10,
                                     guidance_scale=2.0, progress=False, accelerate=accelerate)
        results[accelerate] = inferer(x, net, condition=ctx, seed=3)
        assert all(_flash_flags(net)) == accelerate
    fast, slow = results[True], results[False]
    assert fast.frames.shape == (6, 2, 1, 16, 16, 16)
    assert fast.frames.is_contiguous()
    torch.testing.assert_close(fast.latents, slow.latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.frames, slow.frames, atol=1e-4, rtol=1e-4)
    assert float((slow.frames[-1] - slow.frames[0]).abs().mean()) > 1e-3  # the edit is not trivially zero


def test_accelerated_frames_are_their_latents_residual_decodes():
    """With channels-last weights, each frame is still its own latent's residual decode, and a latent equal to the
    input's decodes to exactly the input (the counterfactual null edit's identity)."""
    net = LatentDiffusionModel(_unet(2), tiny_autoencoder(2).eval())
    x = torch.rand(2, 1, 16, 16)
    inferer = ProgressionInferer(DDIMScheduler(1000, clip_sample=False), num_rounds=4, num_inference_steps=10,
                                 guidance_scale=2.0, progress=False)
    res = inferer(x, net, condition=torch.randn(2, 1, 4), seed=0)
    with torch.no_grad():
        base = net.decode(res.latents[0])
        for n in range(1, 5):
            torch.testing.assert_close(res.frames[n], x + net.decode(res.latents[n]) - base, atol=1e-5, rtol=1e-5)
    null = ProgressionInferer(DDIMScheduler(1000, clip_sample=False), num_rounds=2, num_inference_steps=10,
                              progress=False, edit_mode="counterfactual")
    ctx = torch.randn(2, 1, 4)
    same = null(x, net, condition=ctx, source_condition=ctx, seed=0)
    assert torch.equal(same.frames[-1], x)


def test_bf16_precision_runs_close_and_stays_float32():
    net = LatentDiffusionModel(_unet(2), None)  # pixel space on 3 channels
    x = torch.randn(2, 3, 16, 16)
    ctx = torch.randn(2, 1, 4)
    outs = {}
    for precision in ("fp32", "bf16"):
        sampler = DiffusionSampler(DDIMScheduler(1000, clip_sample=False), 10, precision=precision, progress=False)
        outs[precision] = sampler.sample(net, x, condition=ctx, guidance_scale=2.0)
    assert outs["bf16"].dtype == torch.float32
    err = float((outs["bf16"] - outs["fp32"]).abs().mean())
    assert 0 < err < 0.05 * float(outs["fp32"].abs().mean())  # bf16 really ran, and stays close
    with pytest.raises(ValueError, match="precision"):
        DiffusionSampler(DDIMScheduler(1000), 10, precision="fp16")


def test_accelerate_is_once_per_module():
    unet = _unet(2)
    accelerate_for_inference(unet)
    for m in unet.modules():
        if hasattr(m, "use_flash_attention"):
            m.use_flash_attention = False  # a user turns it off again: a second call must not override them
    accelerate_for_inference(unet)
    assert not any(_flash_flags(unet))


def test_channels_last_only_for_networks_on_the_cpu():
    """cuDNN's channels-last 3D convolutions were slower and larger on CUDA: only CPU networks get them (a network
    on another device, here ``meta``, keeps its layout but still gets fused attention)."""
    on_cpu, elsewhere = _unet(3), _unet(3).to("meta")
    accelerate_for_inference(on_cpu)
    accelerate_for_inference(elsewhere)
    assert on_cpu.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not elsewhere.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert elsewhere.conv_in.conv.weight.is_contiguous() and all(_flash_flags(elsewhere))
