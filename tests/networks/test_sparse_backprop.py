"""Channel-sparse back-propagation (ssProp) convolutions: exactness, sparsity, conversion, state dicts."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from monai_pie.networks import sparse_backprop
from monai_pie.networks.sparse_backprop import (
    SparseBackpropConv1d,
    SparseBackpropConv2d,
    SparseBackpropConv3d,
    convert_to_sparse_backprop,
    get_sparse_keep,
    num_kept_channels,
    revert_sparse_backprop,
    set_sparse_keep,
    sparse_backprop_conv,
    sparse_backprop_modules,
)

DENSE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SPARSE = {1: SparseBackpropConv1d, 2: SparseBackpropConv2d, 3: SparseBackpropConv3d}
SPATIAL = {1: (11,), 2: (9, 8), 3: (6, 7, 5)}

# (dims, kwargs): strides, paddings (ints, 'same', 'valid', reflect), dilations and groups in 1-3 D
CASES = [
    (1, dict(kernel_size=3)),
    (1, dict(kernel_size=3, stride=2, padding=2, dilation=2)),
    (2, dict(kernel_size=3, padding=1)),
    (2, dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1))),
    (2, dict(kernel_size=4, padding="same", dilation=1)),
    (2, dict(kernel_size=3, padding="valid", bias=False)),
    (2, dict(kernel_size=3, padding=1, padding_mode="reflect")),
    (2, dict(kernel_size=3, padding=1, groups=2)),
    (2, dict(kernel_size=3, padding=1, groups=4, stride=2)),
    (3, dict(kernel_size=3, padding=1)),
    (3, dict(kernel_size=3, stride=2, padding=(1, 0, 2), dilation=(1, 2, 1))),
    (3, dict(kernel_size=3, padding=1, groups=4)),
]
CIN, COUT = 4, 8


@pytest.fixture(autouse=True)
def _exact_channel_counts(monkeypatch):
    """These tests check the selection rule channel by channel on nets of a few channels, so the kept count is not
    rounded up to whole channel blocks here; the rounding has its own tests (``test_channel_block_*``)."""
    monkeypatch.setattr(sparse_backprop, "CHANNEL_BLOCK", 1)


def _pair(dims: int, kwargs: dict, keep: float, cout: int = COUT, dtype=torch.float64):
    """A dense conv and a sparse-backprop conv holding copies of the same parameters."""
    torch.manual_seed(0)
    dense = DENSE[dims](CIN, cout, **kwargs).to(dtype)
    sparse = SPARSE[dims](CIN, cout, keep=keep, **kwargs).to(dtype)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def _grads(conv: nn.Module, x: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_(True)
    conv.zero_grad(set_to_none=True)
    y = conv(x)
    y.backward(g)
    bias = None if conv.bias is None else conv.bias.grad
    return y.detach(), x.grad, conv.weight.grad, bias


def _channel_mask(g: torch.Tensor, keep: float) -> torch.Tensor:
    """Reference selection, written independently of the implementation: top channels by mean |grad|."""
    k = max(1, math.floor(keep * g.shape[1] + 1e-6))
    score = g.abs().mean(dim=[0, *range(2, g.ndim)])
    mask = torch.zeros(g.shape[1], dtype=g.dtype)
    mask[score.topk(k).indices] = 1
    return mask.view(1, -1, *([1] * (g.ndim - 2)))


@pytest.mark.parametrize("dims,kwargs", CASES)
def test_keep_one_matches_autograd_exactly(dims, kwargs):
    dense, sparse = _pair(dims, kwargs, keep=1.0, dtype=torch.float32)
    x = torch.randn(2, CIN, *SPATIAL[dims])
    y_ref = dense(x)
    g = torch.randn_like(y_ref)
    ref, got = _grads(dense, x, g), _grads(sparse, x, g)
    for r, o in zip(ref, got):
        if r is None:
            assert o is None
        else:
            assert torch.equal(r, o)


@pytest.mark.parametrize("keep", [0.5, 0.26, 0.01])
@pytest.mark.parametrize("dims,kwargs", CASES)
def test_sparse_equals_dense_with_dropped_channels_zeroed(dims, kwargs, keep):
    dense, sparse = _pair(dims, kwargs, keep=keep)
    x = torch.randn(2, CIN, *SPATIAL[dims], dtype=torch.float64)
    g = torch.randn_like(dense(x))
    mask = _channel_mask(g, keep)
    y_ref, *ref = _grads(dense, x, g * mask)
    y, *got = _grads(sparse, x, g)
    assert torch.equal(y, y_ref)  # forward unchanged
    for r, o in zip(ref, got):
        if r is None:
            assert o is None
        else:
            torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)
    # dropped channels get exactly zero weight/bias gradient; kept ones do not
    kept = mask.flatten().bool()
    assert got[1][~kept].abs().sum() == 0 and (got[1][kept].flatten(1).abs().sum(1) > 0).all()
    assert int(kept.sum()) == num_kept_channels(COUT, keep)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_maps_give_the_same_gradients(dims, groups):
    """oneDNN often hands channels-last maps to the backward; they are scored and sliced in their own layout."""
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    dense, sparse = _pair(dims, dict(kernel_size=3, padding=1, groups=groups), keep=0.26)
    x = torch.randn(2, CIN, *SPATIAL[dims], dtype=torch.float64)
    g = torch.randn_like(dense(x))
    _, *ref = _grads(dense, x, g * _channel_mask(g, 0.26))
    _, *got = _grads(sparse, x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt))
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
def test_channel_gather_and_scores_keep_the_layout(fmt):
    t = torch.randn(2, 8, 3, 4, 5).contiguous(memory_format=fmt)
    index = torch.tensor([1, 4, 6])
    got = sparse_backprop._take_channels(t, index)
    assert torch.equal(got, t.index_select(1, index))
    assert got.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(sparse_backprop._channel_scores(t), t.abs().sum(dim=(0, 2, 3, 4)))
    assert sparse_backprop._channel_scores(t.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("top,groups", [((0, 1, 2, 5), 2), ((4, 5, 6, 7), 2), ((1, 3, 6), 8)])
def test_grouped_uneven_and_inactive_groups(top, groups):
    """Kept channels spread unevenly over groups (padding path) or filling some groups only (inactive groups)."""
    cin = 8
    dense = nn.Conv2d(cin, 8, 3, padding=1, groups=groups).double()
    keep = len(top) / 8
    sparse = SparseBackpropConv2d(cin, 8, 3, padding=1, groups=groups, keep=keep).double()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, cin, 5, 5, dtype=torch.float64)
    scale = torch.ones(8, dtype=torch.float64)
    scale[list(top)] = 10.0  # these channels win the ranking
    g = torch.randn(2, 8, 5, 5, dtype=torch.float64) * scale.view(1, -1, 1, 1)
    mask = torch.zeros(8, dtype=torch.float64)
    mask[list(top)] = 1
    _, *ref = _grads(dense, x, g * mask.view(1, -1, 1, 1))
    _, *got = _grads(sparse, x, g)
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)
    assert torch.equal(got[1].flatten(1).abs().sum(1) > 0, mask.bool())


def test_no_rescaling_and_gradient_differs_from_dense():
    dense, sparse = _pair(2, dict(kernel_size=3, padding=1), keep=0.5)
    x = torch.randn(2, CIN, 6, 6, dtype=torch.float64)
    g = torch.randn_like(dense(x))
    _, _, w_dense, _ = _grads(dense, x, g)
    _, _, w_sparse, _ = _grads(sparse, x, g)
    kept = w_sparse.flatten(1).abs().sum(1) > 0
    assert int(kept.sum()) == 4
    torch.testing.assert_close(w_sparse[kept], w_dense[kept])  # same values, not divided by keep
    assert not torch.allclose(w_sparse, w_dense)


def test_input_only_and_weight_only_gradients():
    conv = SparseBackpropConv2d(3, 6, 3, padding=1, keep=0.5).double()
    ref = nn.Conv2d(3, 6, 3, padding=1).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    mask = _channel_mask(g, 0.5)
    for m in (conv, ref):
        m.requires_grad_(False)
    conv(x).backward(g)
    dx = x.grad.clone()
    x.grad = None
    ref(x).backward(g * mask)
    torch.testing.assert_close(dx, x.grad)
    # weight only: the input needs no gradient
    conv.requires_grad_(True)
    conv(x.detach()).backward(g)
    assert conv.weight.grad is not None and conv.bias.grad is not None


def test_backward_flops_scale_with_keep():
    """The saving is real: the backward convolution FLOPs shrink to k / C_out of the dense ones."""
    x = torch.randn(2, 8, 10, 10, 10)

    def backward_flops(keep: float) -> tuple[int, int]:
        conv = SparseBackpropConv3d(8, 16, 3, padding=1, keep=keep)
        y = conv(x.clone().requires_grad_(True))
        g = torch.randn_like(y)
        with FlopCounterMode(display=False) as counter:
            y.backward(g)
        return counter.get_total_flops(), conv.weight.grad.flatten(1).abs().sum(1).gt(0).sum().item()

    dense, n_dense = backward_flops(1.0)
    quarter, n_quarter = backward_flops(0.25)
    assert n_dense == 16 and n_quarter == 4
    assert dense > 0 and quarter == dense // 4


def test_bfloat16_autocast_cpu():
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 8, 3, padding=1)
    sparse = copy.deepcopy(dense)
    convert_to_sparse_backprop(sparse, keep=0.5)
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref = dense(x)
        y = sparse(x.clone().requires_grad_(True))
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    assert sparse.weight.grad.dtype == torch.float32 and sparse.bias.grad.dtype == torch.float32
    mask = _channel_mask(g.float(), 0.5).to(g.dtype)
    y_ref.backward(g * mask)
    torch.testing.assert_close(sparse.weight.grad, dense.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, rtol=0, atol=0)
    assert int((sparse.weight.grad.flatten(1).abs().sum(1) > 0).sum()) == 4


def test_unbatched_input_and_no_grad_forward():
    conv = SparseBackpropConv2d(3, 4, 3, keep=0.5)
    ref = nn.Conv2d(3, 4, 3)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(3, 7, 7)
    assert torch.equal(conv(x), ref(x))
    with torch.no_grad():
        assert torch.equal(conv(x), ref(x))
    x.requires_grad_(True)
    conv(x).sum().backward()
    assert x.grad.shape == x.shape


def _tiny_diffusion_unet(dims: int = 2) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    net = DiffusionModelUNet(
        spatial_dims=dims,
        in_channels=1,
        out_channels=1,
        channels=(8, 16, 16),
        attention_levels=(False, False, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
    )
    # MONAI zero-initialises the output and residual convs, which would make most gradients exactly zero
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_convert_monai_diffusion_unet_in_place():
    net = _tiny_diffusion_unet()
    params_before = {n: p for n, p in net.named_parameters()}
    keys_before = list(net.state_dict().keys())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)  # built before conversion
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 50])
    with torch.no_grad():
        y_before = net(x, t)

    out = convert_to_sparse_backprop(net, keep=0.5, exclude=["out", "conv_in.*"])
    assert out is net
    converted = sparse_backprop_modules(net)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert len(converted) == n_conv - 2 and "out.2.conv" not in converted and "conv_in.conv" not in converted
    assert type(net.out[2].conv) is nn.Conv2d
    assert all(isinstance(m, nn.Conv2d) for m in converted.values())
    # the very same parameter objects under the same names
    assert list(net.state_dict().keys()) == keys_before
    assert all(p is params_before[n] for n, p in net.named_parameters())
    with torch.no_grad():
        assert torch.equal(net(x, t), y_before)

    # the optimizer built before conversion updates the converted weights with sparse gradients
    w = net.down_blocks[0].resnets[0].conv1.conv.weight
    w0 = w.detach().clone()
    opt.zero_grad()
    net(x, t).pow(2).mean().backward()
    per_channel = w.grad.flatten(1).abs().sum(1)
    assert int((per_channel > 0).sum()) == num_kept_channels(w.shape[0], 0.5)
    opt.step()
    changed = (w.detach() - w0).flatten(1).abs().sum(1) > 0
    assert torch.equal(changed, per_channel > 0)


def test_state_dict_loads_both_ways_and_revert():
    dense = _tiny_diffusion_unet()
    sparse = convert_to_sparse_backprop(_tiny_diffusion_unet(), keep=0.3)
    with torch.no_grad():
        for p in sparse.parameters():
            p.add_(torch.randn_like(p))
    dense.load_state_dict(sparse.state_dict(), strict=True)
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(dense(x, t), sparse(x, t))
        for p in dense.parameters():
            p.mul_(0.5)
    sparse.load_state_dict(dense.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(dense(x, t), sparse(x, t))

    assert revert_sparse_backprop(sparse) is sparse
    assert not sparse_backprop_modules(sparse)
    assert all(not hasattr(m, "sparse_keep") for m in sparse.modules())
    assert {type(m) for m in sparse.modules() if isinstance(m, nn.Conv2d)} == {nn.Conv2d}
    sparse(x, t).pow(2).mean().backward()
    w = sparse.down_blocks[0].resnets[0].conv1.conv.weight
    assert int((w.grad.flatten(1).abs().sum(1) > 0).sum()) == w.shape[0]  # dense again


def test_set_and_get_keep_and_reconvert():
    net = convert_to_sparse_backprop(_tiny_diffusion_unet(), keep=0.5)
    assert get_sparse_keep(net) == 0.5
    n = set_sparse_keep(net, 0.2)
    assert n == len(sparse_backprop_modules(net)) and get_sparse_keep(net) == 0.2
    convert_to_sparse_backprop(net, keep=0.7)  # converting again only updates keep
    assert get_sparse_keep(net) == 0.7 and len(sparse_backprop_modules(net)) == n
    next(iter(sparse_backprop_modules(net).values())).sparse_keep = 0.1
    with pytest.raises(ValueError, match="different keep"):
        get_sparse_keep(net)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), True, "0.5", None])
def test_bad_keep_is_refused_naming_the_argument(bad):
    net = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="`keep`"):
        convert_to_sparse_backprop(net, keep=bad)
    convert_to_sparse_backprop(net, keep=0.5)
    with pytest.raises(ValueError, match="`keep`"):
        set_sparse_keep(net, bad)
    with pytest.raises(ValueError, match="`keep`"):
        SparseBackpropConv2d(1, 2, 3, keep=bad)
    with pytest.raises(ValueError, match="`keep`"):
        sparse_backprop_conv(torch.randn(1, 1, 4, 4), torch.randn(2, 1, 3, 3), keep=bad)


def test_unconverted_model_and_bad_exclude_give_clear_errors():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="convert_to_sparse_backprop"):
        set_sparse_keep(net, 0.5)
    with pytest.raises(ValueError, match="convert_to_sparse_backprop"):
        get_sparse_keep(net)
    with pytest.raises(ValueError, match="`exclude`"):
        convert_to_sparse_backprop(net, exclude=[1])
    with pytest.warns(UserWarning, match="matched no convolution"):
        convert_to_sparse_backprop(net, exclude=["typo*"])
    with pytest.raises(ValueError, match="`padding`"):
        sparse_backprop_conv(torch.randn(1, 1, 4, 4), torch.randn(2, 1, 3, 3), padding="same")


def test_transposed_and_custom_convs_stay_dense():
    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ConvTranspose3d(2, 2, 2, stride=2), MyConv(2, 2, 1))
    with pytest.warns(UserWarning, match="MyConv"):
        convert_to_sparse_backprop(net, keep=0.5)
    assert type(net[0]) is SparseBackpropConv3d
    assert type(net[1]) is nn.ConvTranspose3d and type(net[2]) is MyConv


def test_monai_unet_and_autoencoder_3d_train_after_conversion():
    from monai.networks.nets import UNet, AutoencoderKL

    torch.manual_seed(0)
    unet = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1)
    ae = AutoencoderKL(
        spatial_dims=3, channels=(8, 8), latent_channels=2, attention_levels=(False, False), num_res_blocks=1,
        norm_num_groups=4,
    )
    for net in (unet, ae):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing in these MONAI nets should be skipped
            convert_to_sparse_backprop(net, keep=0.25)
        assert sparse_backprop_modules(net)
        x = torch.randn(1, 1, 8, 8, 8)
        out = net(x)
        out = out[0] if isinstance(out, tuple) else out
        out.pow(2).mean().backward()
        for m in sparse_backprop_modules(net).values():
            assert m.weight.grad is not None and torch.isfinite(m.weight.grad).all()
            nonzero = int((m.weight.grad.flatten(1).abs().sum(1) > 0).sum())
            assert nonzero <= num_kept_channels(m.out_channels, 0.25)


def test_channel_block_rounding_keeps_at_least_what_was_asked():
    assert num_kept_channels(32, 0.6, channel_multiple=16) == 32  # 19 -> one full block more is dense
    assert num_kept_channels(64, 0.6, channel_multiple=16) == 48  # 38 -> 48
    assert num_kept_channels(64, 0.2, channel_multiple=16) == 16  # 12 -> 16
    assert num_kept_channels(10, 0.2, channel_multiple=16) == 10  # never more than C_out
    assert num_kept_channels(64, 0.25, channel_multiple=16) == 16  # already whole blocks
    with pytest.raises(ValueError, match="channel_multiple"):
        num_kept_channels(8, 0.5, channel_multiple=0)


def test_channel_block_converted_modules_keep_whole_blocks(monkeypatch):
    monkeypatch.setattr(sparse_backprop, "CHANNEL_BLOCK", 16)
    conv = nn.Conv2d(3, 64, 3, padding=1)
    convert_to_sparse_backprop(conv, keep=0.2)  # 12 channels asked, one block of 16 kept
    conv(torch.randn(2, 3, 8, 8)).pow(2).sum().backward()
    assert int((conv.weight.grad.flatten(1).abs().sum(1) > 0).sum()) == 16
    assert "channel_multiple=16" in repr(conv)
    conv.weight.grad = None
    convert_to_sparse_backprop(conv, keep=0.2, channel_multiple=1)  # exact count on request
    conv(torch.randn(2, 3, 8, 8)).pow(2).sum().backward()
    assert int((conv.weight.grad.flatten(1).abs().sum(1) > 0).sum()) == 12


def test_num_kept_channels():
    assert num_kept_channels(10, 0.6) == 6
    assert num_kept_channels(100, 0.29) == 29  # no floating-point floor surprise
    assert num_kept_channels(3, 0.2) == 1  # at least one
    assert num_kept_channels(7, 1.0) == 7


def _weight_grad(conv: nn.Module, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 6, 6, generator=g)
    conv.zero_grad()
    (conv(x) * torch.randn(2, 64, 6, 6, generator=g)).sum().backward()
    return conv.weight.grad.clone()


@pytest.mark.parametrize("keep, sparse", [(0.6, False), (0.5, True), (0.2, True)])
def test_a_layer_keeping_more_than_half_its_channels_runs_the_dense_backward(keep, sparse):
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 64, 3, padding=1)
    conv = convert_to_sparse_backprop(copy.deepcopy(dense), keep=keep)  # 64 channels: 48 / 32 / 16 kept
    assert conv.sparse_backward_active() is sparse
    dropped = 64 - num_kept_channels(64, keep, sparse_backprop.CHANNEL_BLOCK)
    zero_rows = int((_weight_grad(conv).flatten(1).abs().sum(1) == 0).sum())
    assert zero_rows == (dropped if sparse else 0)
    if not sparse:  # exactly the dense gradient: the plain convolution ran
        assert torch.equal(_weight_grad(conv), _weight_grad(dense))
        conv.sparse_max_share = 1.0  # asked for: sparse at any share
        assert conv.sparse_backward_active()
        assert int((_weight_grad(conv).flatten(1).abs().sum(1) == 0).sum()) == dropped > 0
