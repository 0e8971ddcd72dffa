"""Memory-lean inference for large volumes: convolutions, group norms and upsampling computed slab by slab.

A 1 mm brain decoded at once holds several full-resolution feature maps at a time (the upsampled map, the norm
output, its SiLU, the convolution output and the convolution's workspace). ``use_slab_execution`` changes how a
network's layers compute, not what, so that the peak is about two full-resolution maps plus one slab:

- convolutions (``nn.Conv1d/2d/3d``) compute their output in slabs along the last spatial axis, each from the input
  rows it needs (the halo is the kernel's reach, so the result is exact, not blended), into one preallocated output;
- a nearest-neighbour ``UpSample`` followed by its convolution (MONAI's autoencoder decoder) upsamples one slab at a
  time, so the full-resolution upsampled map is never built;
- ``nn.GroupNorm`` takes its statistics over the whole volume in chunks (float64 sums), so every slab is normalised
  with the global mean and variance exactly as the full layer is - the reason tiled decoding with per-tile norms
  leaves seams and this does not;
- MONAI's autoencoder residual blocks apply SiLU in place and add the shortcut into the branch output.

Modules are changed by swapping their class in place (like ``convert_to_sparse_backprop``): parameters, names and
state dicts are untouched. The slab path runs only without autograd (inference) and outside ``torch.compile`` (which
gets the plain layers); training is unchanged. Attention over the whole volume (MONAI's non-local attention) is left
as is: it is not slab-separable.
Measured in ``benchmarks/bench_memory.py`` (peak memory against volume size, error against a full decode).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_SLAB_VOXELS", "SLABS_TO_ENGAGE", "slab_execution_modules", "use_slab_execution"]

#: spatial voxels per slab (rows x the other spatial sizes): 2^17 voxels of 32 float32 channels is a 16 MB slab
DEFAULT_SLAB_VOXELS = 2**17
#: a layer runs in slabs only when it holds more than this many slabs' worth of voxels: with fewer, each slab's
#: temporaries are as large as what slabbing saves. With the default slab, layers above 2^19 voxels run in slabs;
#: the bundles' 2.5 mm grid (64 x 80 x 64 = 327,680 voxels) runs as before.
SLABS_TO_ENGAGE = 4
#: rows per slab at least: a 3 x 3 x 3 convolution reads 2 halo rows per slab, so thinner slabs recompute too much
#: (2-row slabs of a 1 mm head decoded 1.5x slower than whole layers)
MIN_SLAB_ROWS = 16
# slabs are cut along the last spatial axis: PyTorch's CPU convolution heuristic looks at (B, C, first spatial
# sizes) to pick oneDNN over its slow reference kernel, so thin slabs along the first axis would fall to the latter
_AXIS = -1


def _eager_inference(*tensors: torch.Tensor | None) -> bool:
    """Whether a swapped layer may take its own path: no autograd through ``tensors``, and not being traced by
    ``torch.compile`` (inductor gets the plain layer and picks its own kernels; its GroupNorm is accurate)."""
    return not torch.compiler.is_compiling() and (
        not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors))


def _runs_whole(voxels: int, slab_voxels: int) -> bool:
    """Whether a layer of ``voxels`` spatial voxels is small enough to run as the plain layer."""
    return voxels <= SLABS_TO_ENGAGE * slab_voxels


def _slab_rows(shape: torch.Size, slab_voxels: int) -> int:
    """Rows of the slab axis per slab so that a slab holds about ``slab_voxels`` spatial voxels (at least
    ``MIN_SLAB_ROWS``)."""
    return max(MIN_SLAB_ROWS, slab_voxels // max(_plane(shape), 1))


def _plane(shape: torch.Size | list[int]) -> int:
    """Product of the spatial sizes other than the slab axis."""
    return math.prod(shape[2:-1])


def _rows_with_zero_halo(source: Callable[[int, int], torch.Tensor], length: int, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo:hi`` of a map of ``length`` rows (``source(lo, hi)`` gives in-range rows), zeros outside."""
    a, b = max(lo, 0), min(hi, length)
    rows = source(a, b)
    if lo < a or hi > b:
        rows = F.pad(rows, [a - lo, hi - b])  # F.pad lists the last axis first
    return rows


def _slab_conv(conv: nn.modules.conv._ConvNd, source: Callable[[int, int], torch.Tensor], in_len: int, plane: int,
               slab_voxels: int) -> torch.Tensor:
    """``conv`` applied to a map of ``in_len`` rows along the slab (last spatial) axis, read in slabs through
    ``source(lo, hi)`` (rows ``lo:hi``, in range). ``plane`` is the product of the other spatial sizes.

    Returns:
        torch.Tensor: the full output ``(B, C_out, *out_spatial)``, equal to ``conv`` on the whole map.
    """
    k, s, p, d = conv.kernel_size[-1], conv.stride[-1], conv.padding[-1], conv.dilation[-1]
    out_len = (in_len + 2 * p - d * (k - 1) - 1) // s + 1
    padding = (*conv.padding[:-1], 0)  # the halo rows carry the slab axis' zero padding
    conv_fn = (F.conv1d, F.conv2d, F.conv3d)[conv.weight.ndim - 3]
    step = max(MIN_SLAB_ROWS, slab_voxels // max(plane * s, 1))
    out = None
    for a in range(0, out_len, step):
        b = min(a + step, out_len)
        rows = _rows_with_zero_halo(source, in_len, a * s - p, (b - 1) * s - p + d * (k - 1) + 1)
        # channels-last slabs (and output): PyTorch's CPU heuristic sends thin contiguous 3D inputs to its slow
        # reference convolution (measured 2.5x slower decodes); channels-last ones always get oneDNN
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(rows.ndim, torch.contiguous_format)
        y = conv_fn(rows.contiguous(memory_format=fmt), conv.weight, conv.bias, conv.stride, padding, conv.dilation,
                    conv.groups)
        del rows
        if out is None:
            shape = list(y.shape)
            shape[_AXIS] = out_len
            out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=fmt)
        out.narrow(_AXIS, a, b - a).copy_(y)
        del y
    assert out is not None
    return out


#: PyTorch's CPU convolution sends a batch-1 convolution with small kernels to its reference kernel when batch x
#: channels x the first two spatial sizes is at most this (``use_mkldnn`` in aten's Convolution.cpp)
_REFERENCE_KERNEL_MAX = 20480


def _falls_to_reference_kernel(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> bool:
    """Whether PyTorch would run ``conv`` on ``x`` with its slow CPU reference kernel though oneDNN can: a 3D float32
    batch-1 input of a small volume (the brain U-Net's 16 x 20 x 16 latent without guidance: 3-4x slower per
    convolution than oneDNN, which PyTorch does pick for batch 2)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.ndim == 5 and x.shape[0] == 1
            and conv.groups == 1 and not conv.transposed and torch.backends.mkldnn.is_available()
            and not (conv.kernel_size[-1] > 3 and conv.kernel_size[-2] > 3)
            and math.prod(x.shape[:4]) <= _REFERENCE_KERNEL_MAX
            and (torch.get_num_threads() > 1 or conv.kernel_size[-1] != 1 or conv.kernel_size[-2] != 1))


def _standard_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the exact strides of a fresh channels-last tensor. oneDNN picks its kernel from the strides, batch
    stride included (which PyTorch ignores for batch 1), so equal values in another layout would round differently
    and break, e.g., the counterfactual null edit's exact identity."""
    c, d, h, w = x.shape[1:]
    want = (c * d * h * w, 1, h * w * c, w * c, c)
    if x.stride() == want:
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d).copy_(x)


class _SlabConvMixin:
    """``forward`` of an ``nn.ConvNd`` computed in slabs when no autograd is needed (and with oneDNN where PyTorch
    would pick its reference kernel)."""

    slab_voxels: int

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        batched = input.ndim == self.weight.ndim  # type: ignore[attr-defined]
        if (
            not batched
            or isinstance(self.padding, str)  # type: ignore[attr-defined]
            or self.padding_mode != "zeros"  # type: ignore[attr-defined]
            or not _eager_inference(input, self.weight, self.bias)  # type: ignore[attr-defined]
        ):
            return super().forward(input)  # type: ignore[misc]
        if _runs_whole(math.prod(input.shape[2:]), self.slab_voxels):
            if _falls_to_reference_kernel(self, input):  # type: ignore[arg-type]
                return torch.mkldnn_convolution(_standard_channels_last(input),
                                                self.weight, self.bias, self.padding,  # type: ignore[attr-defined]
                                                self.stride, self.dilation, self.groups)  # type: ignore[attr-defined]
            return super().forward(input)  # type: ignore[misc]
        return _slab_conv(self, lambda a, b: input.narrow(_AXIS, a, b - a), input.shape[_AXIS], _plane(input.shape),
                          self.slab_voxels)  # type: ignore[arg-type]


class SlabConv1d(_SlabConvMixin, nn.Conv1d):
    """``nn.Conv1d`` computed in slabs at inference (see the module docstring)."""


class SlabConv2d(_SlabConvMixin, nn.Conv2d):
    """``nn.Conv2d`` computed in slabs at inference (see the module docstring)."""


class SlabConv3d(_SlabConvMixin, nn.Conv3d):
    """``nn.Conv3d`` computed in slabs at inference (see the module docstring)."""


def _group_norm_affine(norm: nn.GroupNorm, x: torch.Tensor, slab_voxels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(x) == x * scale + shift`` with statistics over the whole of ``x`` ``(B, C, *spatial)``, read in slabs
    and summed in float64. Returns ``scale`` and ``shift`` of shape ``(B, C, 1, ...)`` in ``x``'s dtype."""
    b, c = x.shape[:2]
    g = norm.num_groups
    step = _slab_rows(x.shape, slab_voxels)
    total = torch.zeros(b, c, dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    dims = list(range(2, x.ndim))
    for a in range(0, x.shape[_AXIS], step):
        chunk = x.narrow(_AXIS, a, min(step, x.shape[_AXIS] - a))
        # per-channel reductions read the strided slab in place (no reshape copy), accumulating in float64
        total += chunk.sum(dim=dims, dtype=torch.float64)
        squares += torch.linalg.vector_norm(chunk, ord=2, dim=dims, dtype=torch.float64).square()
    total, squares = total.view(b, g, c // g).sum(-1), squares.view(b, g, c // g).sum(-1)
    n = x[0, 0].numel() * (c // g)
    mean = total / n
    rstd = torch.rsqrt((squares / n - mean.square()).clamp_min(0) + norm.eps)
    scale = rstd.repeat_interleave(c // g, dim=1)
    shift = -mean.repeat_interleave(c // g, dim=1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    view = (b, c) + (1,) * (x.ndim - 2)
    return scale.to(x.dtype).view(view), shift.to(x.dtype).view(view)


def _group_norm_two_pass(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for a small channels-last ``x`` ``(B, C, *spatial)``, kept channels-last: group means first, then
    the sums of squares around them (no float32 cancellation), then one fused affine. About 3x faster than a
    round trip through PyTorch's contiguous kernel on the brain U-Net's maps, as accurate."""
    b, c = x.shape[:2]
    g, dims, view = norm.num_groups, list(range(2, x.ndim)), (b, c) + (1,) * (x.ndim - 2)
    mean = x.mean(dim=dims).view(b, g, c // g).mean(-1).repeat_interleave(c // g, dim=1).view(view)
    var = torch.linalg.vector_norm(x - mean, ord=2, dim=dims).square().view(b, g, c // g).sum(-1)
    rstd = torch.rsqrt(var / (x[0, 0].numel() * (c // g)) + norm.eps).repeat_interleave(c // g, dim=1).view(view)
    scale = rstd * norm.weight.view(view[1:]) if norm.affine else rstd
    shift = -mean * scale + (norm.bias.view(view[1:]) if norm.affine else 0.0)
    return torch.addcmul(shift, x, scale)


class SlabGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with statistics accumulated over slabs and the output written slab by slab (inference)."""

    slab_voxels: int

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.ndim < 3 or not _eager_inference(input, self.weight, self.bias):
            return super().forward(input)
        # PyTorch's channels-last CPU GroupNorm loses precision (float32 sums of squares: 9 % of the output's std
        # after a 1 mm decode, benchmarks/results/memory.md), so channels-last inputs never reach that kernel
        channels_last = input.ndim in (4, 5) and not input.is_contiguous()
        if _runs_whole(math.prod(input.shape[2:]), self.slab_voxels):
            if not channels_last:
                return super().forward(input)
            return _group_norm_two_pass(self, input)
        scale, shift = _group_norm_affine(self, input, self.slab_voxels)
        out = torch.empty_like(input)
        step = _slab_rows(input.shape, self.slab_voxels)
        for a in range(0, input.shape[_AXIS], step):
            rows = min(step, input.shape[_AXIS] - a)
            torch.addcmul(shift, input.narrow(_AXIS, a, rows), scale, out=out.narrow(_AXIS, a, rows))
        return out


def _single_conv(block: nn.Module) -> nn.modules.conv._ConvNd | None:
    """The convolution of ``block`` (an ``nn.ConvNd`` or a MONAI ``Convolution`` holding only one) if it can run in
    slabs, else None."""
    if isinstance(block, nn.modules.conv._ConvNd):
        conv = block
    else:
        children = list(block.children())
        if len(children) != 1 or not isinstance(children[0], nn.modules.conv._ConvNd):
            return None
        conv = children[0]
    if conv.transposed or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None
    return conv


def _scale_factors(up: nn.Upsample, spatial_dims: int) -> tuple[float, ...]:
    f = up.scale_factor
    return tuple(float(v) for v in f) if isinstance(f, (tuple, list)) else (float(f),) * spatial_dims


def _fusable_upsample(module: nn.Module) -> tuple[nn.Upsample, nn.modules.conv._ConvNd] | None:
    """The (nearest upsample, convolution) pair of a MONAI ``UpSample`` whose slabs can be fused, else None."""
    children = dict(module.named_children())
    up, post = children.get("upsample_non_trainable"), children.get("postconv")
    if set(children) != {"upsample_non_trainable", "postconv"} or not isinstance(up, nn.Upsample):
        return None
    convs = list(post.children()) if not isinstance(post, nn.modules.conv._ConvNd) else [post]
    if len(convs) != 1 or not isinstance(convs[0], nn.modules.conv._ConvNd) or convs[0].transposed:
        return None
    conv = convs[0]
    factors = _scale_factors(up, conv.weight.ndim - 2)
    if up.mode != "nearest" or up.size is not None or any(float(f) != int(f) or f < 1 for f in factors):
        return None
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None
    return up, conv


class _SlabUpSampleMixin:
    """MONAI ``UpSample`` (nearest, then a convolution) fused slab by slab: the upsampled map is never whole."""

    slab_voxels: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pair = _fusable_upsample(self)  # type: ignore[arg-type]
        if pair is None or not _eager_inference(x, pair[1].weight):
            return super().forward(x)  # type: ignore[misc]
        up, conv = pair
        factors = [int(v) for v in _scale_factors(up, x.ndim - 2)]
        if _runs_whole(math.prod(x.shape[2:]) * math.prod(factors), self.slab_voxels):
            return super().forward(x)  # type: ignore[misc]
        f = factors[-1]

        def upsampled_rows(lo: int, hi: int) -> torch.Tensor:
            src_lo, src_hi = lo // f, (hi + f - 1) // f
            rows = F.interpolate(x.narrow(_AXIS, src_lo, src_hi - src_lo), scale_factor=factors, mode="nearest")
            return rows.narrow(_AXIS, lo - src_lo * f, hi - lo)

        plane = math.prod(n * fac for n, fac in zip(x.shape[2:-1], factors[:-1]))
        return _slab_conv(conv, upsampled_rows, x.shape[_AXIS] * f, plane, self.slab_voxels)


class _LeanResBlockMixin:
    """MONAI autoencoder residual block computed in slabs (inference): each GroupNorm + SiLU is applied to the rows a
    convolution slab reads, so neither the normalised map nor its SiLU is ever whole, and the shortcut is added into
    the branch output slab by slab. Peak: the block input and two branch maps."""

    slab_voxels: int

    def _norm_silu_conv(self, norm: nn.GroupNorm, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        conv = _single_conv(block)
        if conv is None or type(norm) not in (nn.GroupNorm, SlabGroupNorm) or x.ndim < 3:
            return block(F.silu(norm(x), inplace=True))
        scale, shift = _group_norm_affine(norm, x, self.slab_voxels)

        def activated_rows(lo: int, hi: int) -> torch.Tensor:
            return F.silu(torch.addcmul(shift, x.narrow(_AXIS, lo, hi - lo), scale), inplace=True)

        return _slab_conv(conv, activated_rows, x.shape[_AXIS], _plane(x.shape), self.slab_voxels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _eager_inference(x, *self.parameters()) or _runs_whole(math.prod(x.shape[2:]), self.slab_voxels):  # type: ignore[attr-defined]
            return super().forward(x)  # type: ignore[misc]
        h = self._norm_silu_conv(self.norm1, self.conv1, x)  # type: ignore[attr-defined]
        h = self._norm_silu_conv(self.norm2, self.conv2, h)  # type: ignore[attr-defined]
        shortcut = self.nin_shortcut  # type: ignore[attr-defined]
        if isinstance(shortcut, nn.Identity):
            return h.add_(x)
        conv = _single_conv(shortcut)
        if conv is None or conv.kernel_size[-1] != 1 or conv.stride[-1] != 1:
            return h.add_(shortcut(x))
        step = _slab_rows(x.shape, self.slab_voxels)
        for a in range(0, x.shape[_AXIS], step):
            rows = min(step, x.shape[_AXIS] - a)
            h.narrow(_AXIS, a, rows).add_(shortcut(x.narrow(_AXIS, a, rows)))
        return h


_CONV_SWAPS: dict[type, type] = {nn.Conv1d: SlabConv1d, nn.Conv2d: SlabConv2d, nn.Conv3d: SlabConv3d}
_SLAB_CLASSES: dict[type, type] = {SlabConv1d: nn.Conv1d, SlabConv2d: nn.Conv2d, SlabConv3d: nn.Conv3d,
                                    SlabGroupNorm: nn.GroupNorm}  # swapped class -> original class
_MIXED: dict[tuple[type, type], type] = {}


def _swap(module: nn.Module, mixin: type | None, slab_voxels: int) -> None:
    cls = type(module)
    if cls not in _SLAB_CLASSES:
        swapped = _CONV_SWAPS.get(cls) or (SlabGroupNorm if cls is nn.GroupNorm else None)
        if swapped is None and mixin is not None:
            if (mixin, cls) not in _MIXED:
                name = f"Slab{cls.__name__}"
                _MIXED[(mixin, cls)] = globals()[name] = type(name, (mixin, cls), {"__module__": __name__,
                                                                                   "__qualname__": name})
                _SLAB_CLASSES[_MIXED[(mixin, cls)]] = cls  # module-level name above: whole-model pickles load
            swapped = _MIXED[(mixin, cls)]
        module.__class__ = swapped
    module.slab_voxels = slab_voxels


def use_slab_execution(module: nn.Module, slab_voxels: int = DEFAULT_SLAB_VOXELS) -> nn.Module:
    """Make ``module``'s convolutions, group norms, nearest upsampling and MONAI autoencoder residual blocks compute
    slab by slab at inference, in place (same parameters and outputs to float rounding; see the module docstring).

    Calling it again only changes ``slab_voxels``. Layers whose input holds at most ``SLABS_TO_ENGAGE`` slabs' worth of
    voxels run as before, so small volumes pay nothing.

    Args:
        module: e.g. MONAI's ``AutoencoderKL`` or a ``LatentDiffusionModel``.
        slab_voxels: Spatial voxels per slab (rows of the last spatial axis times the rest); smaller is leaner
            (on this project's CPU 2^17-2^18 was also faster than 2^20; very thin slabs add per-slab overhead).

    Returns:
        nn.Module: ``module`` itself.
    """
    from monai.networks.blocks import UpSample
    from monai.networks.nets.autoencoderkl import AEKLResBlock

    if isinstance(slab_voxels, bool) or not isinstance(slab_voxels, int) or slab_voxels < 1:
        raise ValueError(f"`slab_voxels` must be a positive int (spatial voxels per slab), got {slab_voxels!r}.")
    for sub in module.modules():
        base = _SLAB_CLASSES.get(type(sub), type(sub))
        if base in _CONV_SWAPS or base is nn.GroupNorm:
            _swap(sub, None, slab_voxels)
        elif base is UpSample and _fusable_upsample(sub) is not None:  # subclasses may take other arguments
            _swap(sub, _SlabUpSampleMixin, slab_voxels)
        elif base is AEKLResBlock:
            _swap(sub, _LeanResBlockMixin, slab_voxels)
    return module


def slab_execution_modules(module: nn.Module) -> dict[str, nn.Module]:
    """The submodules of ``module`` that :func:`use_slab_execution` changed, by name."""
    return {name: m for name, m in module.named_modules() if type(m) in _SLAB_CLASSES}
