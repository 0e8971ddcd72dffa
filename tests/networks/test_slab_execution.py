"""Slab-wise inference computes what the whole-volume layers compute, with less memory, and leaves training alone."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import AutoencoderKL

from monai_pie.networks import accelerate_for_inference, slab_execution_modules, use_slab_execution


def _autoencoder(spatial_dims: int = 3) -> AutoencoderKL:
    """The brain bundle's autoencoder layout (no attention), scaled down, with perturbed weights and norms."""
    torch.manual_seed(0)
    ae = AutoencoderKL(spatial_dims=spatial_dims, in_channels=1, out_channels=1, channels=(8, 16, 16),
                       latent_channels=3, attention_levels=(False, False, False), num_res_blocks=1, norm_num_groups=4,
                       with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
    for p in ae.parameters():
        p.data += 0.05 * torch.randn_like(p)
    return ae.eval()


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"),
                         [(3, 1, 1, 1), (3, 2, 0, 1), (3, 2, 1, 1), (1, 1, 0, 1), (3, 1, 2, 2), (4, 2, 1, 1)])
def test_slab_convolution_equals_whole(kernel, stride, padding, dilation):
    conv = torch.nn.Conv3d(4, 5, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 4, 17, 9, 8)
    with torch.no_grad():
        ref = conv(x)
        use_slab_execution(conv, slab_voxels=100)  # 1 row of 9 x 8 per slab: every slab needs a halo
        out = conv(x)
    assert type(conv).__name__ == "SlabConv3d"
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_slab_group_norm_uses_whole_volume_statistics():
    norm = torch.nn.GroupNorm(2, 4)
    torch.nn.init.uniform_(norm.weight)
    torch.nn.init.uniform_(norm.bias)
    x = torch.randn(2, 4, 17, 9, 8) * 3 + 1
    x[:, :, :4] += 10  # per-slab statistics would differ from the volume's
    with torch.no_grad():
        ref = norm(x)
        use_slab_execution(norm, slab_voxels=100)
        out = norm(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_slab_autoencoder_equals_whole_volume_decode_and_encode(spatial_dims):
    ae = _autoencoder(spatial_dims)
    size = (20, 24, 16)[:spatial_dims]
    x = torch.randn(1, 1, *size)
    z = torch.randn(1, 3, *(s // 4 for s in size))
    lean = copy.deepcopy(ae)
    use_slab_execution(lean, slab_voxels=64)  # every layer above 4 x 64 voxels runs in slabs
    names = {type(m).__name__ for m in slab_execution_modules(lean).values()}
    assert {"SlabUpSample", "SlabAEKLResBlock", "SlabGroupNorm"} <= names
    assert lean.state_dict().keys() == ae.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(lean.decode(z), ae.decode(z), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lean.encode(x)[0], ae.encode(x)[0], atol=1e-5, rtol=1e-5)
        accelerate_for_inference(lean)  # channels-last weights on top
        torch.testing.assert_close(lean.decode(z), ae.decode(z), atol=1e-5, rtol=1e-5)


def test_slab_execution_leaves_training_and_inputs_alone():
    ae = _autoencoder(3)
    lean = use_slab_execution(copy.deepcopy(ae), slab_voxels=64)
    z = torch.randn(1, 3, 5, 6, 4)
    z_before = z.clone()
    ae.decode(z).square().mean().backward()
    lean.decode(z).square().mean().backward()
    for (name, p), q in zip(ae.named_parameters(), lean.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():
        lean.decode(z)
    assert torch.equal(z, z_before)


def test_slab_execution_rejects_bad_slab_size_and_updates_on_second_call():
    conv = torch.nn.Conv2d(1, 1, 3)
    with pytest.raises(ValueError, match="slab_voxels"):
        use_slab_execution(conv, slab_voxels=0)
    use_slab_execution(conv, slab_voxels=10)
    use_slab_execution(conv, slab_voxels=20)
    assert conv.slab_voxels == 20 and type(conv).__name__ == "SlabConv2d"


def test_slab_modules_pickle_and_reload():
    import pickle

    lean = use_slab_execution(_autoencoder(2), slab_voxels=16)
    z = torch.randn(1, 3, 5, 6)
    again = pickle.loads(pickle.dumps(lean))  # whole-model torch.save / torch.load go through pickle
    assert type(again.decoder.blocks[1]) is type(lean.decoder.blocks[1])
    with torch.no_grad():
        torch.testing.assert_close(again.decode(z), lean.decode(z))


def test_channels_last_group_norm_keeps_float64_precision():
    norm = torch.nn.GroupNorm(4, 16).eval()
    x = torch.randn(1, 16, 24, 20, 16) + 300.0  # a large mean: float32 sums of squares cancel
    with torch.no_grad():
        ref = copy.deepcopy(norm).double()(x.double()).float()  # float64 reference
        use_slab_execution(norm)  # far below the slab size: only the channels-last input takes the new path
        out = norm(x.contiguous(memory_format=torch.channels_last_3d))
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=0)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs PyTorch built with oneDNN")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel", [3, 1])
def test_batch_one_small_volume_convolution_runs_on_onednn_and_equals_plain(channels_last, kernel, monkeypatch):
    from monai_pie.networks.slab_execution import _falls_to_reference_kernel

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # 1x1 kernels go to oneDNN only when multi-threaded
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 16, kernel, padding=kernel // 2).eval()
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = torch.randn(1, 8, 12, 10, 9).contiguous(memory_format=fmt)  # 1 x 8 x 12 x 10 = 960: PyTorch's reference kernel
    assert _falls_to_reference_kernel(conv, x)
    assert not _falls_to_reference_kernel(conv, torch.cat([x, x]))  # batch 2: PyTorch picks oneDNN itself
    assert not _falls_to_reference_kernel(conv, x.double())
    with torch.no_grad():
        ref = conv(x)
        use_slab_execution(conv)
        with torch.autograd.profiler.profile() as prof:
            out = conv(x)
    kernels = {e.name for e in prof.function_events}
    assert "aten::mkldnn_convolution" in kernels and "aten::slow_conv3d_forward" not in kernels
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the same values in the other layout give the same bits (exact null edits rely on it)
        other = torch.channels_last_3d if not channels_last else torch.contiguous_format
        assert torch.equal(conv(x.contiguous(memory_format=other)), out)
        cl = x.contiguous(memory_format=torch.channels_last_3d)
        odd_batch_stride = cl.as_strided(cl.shape, (1,) + cl.stride()[1:])  # PyTorch ignores it at batch 1, oneDNN not
        assert torch.equal(conv(odd_batch_stride), out)
    x.requires_grad_(True)  # training keeps PyTorch's own path (and its gradients)
    conv(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
