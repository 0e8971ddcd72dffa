"""Channel-wise sparse back-propagation for N-d convolutions (ssProp, Zhong, Huang & Shi, arXiv:2408.12561).

The forward pass of a converted convolution is unchanged. In the backward pass the output channels are scored by
the mean absolute ``grad_output`` over batch and space, the top ``max(1, floor(keep * C_out))`` channels are kept (one
set for the whole batch; converted modules round that count up to a multiple of ``CHANNEL_BLOCK``, see below) and
the input, weight and bias gradients are computed from that channel slice only, with
``aten.convolution_backward`` on the sliced weight and ``grad_output``. The result equals a dense backward in which the
dropped channels of ``grad_output`` are zeroed (no ``1 / keep`` rescaling), at about ``keep`` times the backward
convolution FLOPs.

Conversion swaps the class of ``nn.Conv1d/2d/3d`` modules in place (``module.__class__``), so parameters, buffers,
hooks and parameter names stay exactly the same objects: state dicts load both ways and an optimizer built before the
conversion keeps working. Transposed convolutions are left dense.

Why the channel block: oneDNN (CPU) and cuDNN compute convolutions in blocks of output channels (16 on AVX-512 CPUs,
8 or 16 for tensor cores), so a partial block costs a full one, and an odd count can fall off the fast kernels
altogether: on this project's 2-core CPU a 32-channel 3D backward with 19 channels kept took 1.2x the dense time,
with 16 kept 0.64x (``benchmarks/bench_sparse_backprop.py``). Rounding the kept count up to whole blocks keeps at
least the channels asked for and never costs more than dense.

Why converted modules fall back to the dense backward above half the channels: the sparse backward's bookkeeping
(scoring the channels, slicing ``grad_output`` and the weight, scattering the weight gradient back, the Python of a
custom autograd function) costs about what a quarter of a layer's backward convolution saves. On this project's 2-core
CPU a keep of 0.6 (48 of 64 channels after rounding) made every benchmarked network 3-10 % slower than dense
(``benchmarks/results/sparse_backprop.md``). A converted module whose kept count (after rounding) is more than
``SPARSE_MAX_SHARE`` of its output channels therefore runs as the plain convolution (its attribute
``sparse_max_share`` overrides the share; 1.0 keeps every layer sparse).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "SparseBackpropConv1d",
    "SparseBackpropConv2d",
    "SparseBackpropConv3d",
    "convert_to_sparse_backprop",
    "get_sparse_keep",
    "num_kept_channels",
    "revert_sparse_backprop",
    "set_sparse_keep",
    "sparse_backprop_conv",
    "sparse_backprop_modules",
    "CHANNEL_BLOCK",
    "SPARSE_MAX_SHARE",
]

#: kept output channels are rounded up to a multiple of this in converted modules (see the module docstring)
CHANNEL_BLOCK = 16
#: converted modules keeping more than this share of their output channels run the dense backward (module docstring)
SPARSE_MAX_SHARE = 0.5

# a tiny tolerance so that e.g. keep=0.29 of 100 channels keeps 29, not 28 (0.29 * 100 = 28.999999999999996)
_FLOOR_EPS = 1e-6


def _check_keep(keep: Any, name: str = "keep") -> float:
    """Return ``keep`` as a float, or raise ``ValueError`` naming ``name`` unless it lies in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
        raise ValueError(
            f"`{name}` must be a number in (0, 1] (fraction of output channels kept in the backward pass), "
            f"got {keep!r} of type {type(keep).__name__}."
        )
    value = float(keep)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(
            f"`{name}` must be in (0, 1] (fraction of output channels kept in the backward pass), got {keep!r}."
        )
    return value


def num_kept_channels(channels: int, keep: float, channel_multiple: int = 1) -> int:
    """Number of output channels kept in the sparse backward: ``max(1, floor(keep * channels))``, rounded up to a
    multiple of ``channel_multiple`` (at most ``channels``).

    Args:
        channels: Number of output channels ``C_out`` of the convolution.
        keep: Fraction of channels kept, in (0, 1].
        channel_multiple: Round the count up to a multiple of this (1: no rounding; converted modules use
            ``CHANNEL_BLOCK``).

    Returns:
        int: Between 1 and ``channels``.
    """
    keep = _check_keep(keep)
    k = max(1, min(int(channels), int(math.floor(keep * channels + _FLOOR_EPS))))
    m = _check_multiple(channel_multiple)
    return min(int(channels), -(-k // m) * m)


def _check_multiple(channel_multiple: Any) -> int:
    if isinstance(channel_multiple, bool) or not isinstance(channel_multiple, numbers.Integral) or channel_multiple < 1:
        raise ValueError(f"`channel_multiple` must be a positive int, got {channel_multiple!r}.")
    return int(channel_multiple)


def _channel_rows(t: torch.Tensor) -> torch.Tensor | None:
    """``(N, C)`` view of a channels-last ``t`` ``(B, C, *spatial)`` (channels the fastest-moving dimension, as
    oneDNN's convolutions often return them), else None."""
    if t.ndim < 3 or t.stride(1) != 1 or t.is_contiguous():
        return None
    rows = t.movedim(1, -1)
    return rows.view(-1, t.shape[1]) if rows.is_contiguous() else None


def _channel_scores(grad_out: torch.Tensor) -> torch.Tensor:
    """Sum of ``|grad_out|`` per channel ``(C,)`` over batch and space (ranks as the mean does), in at least fp32.

    ``abs().sum`` rather than an L1 ``vector_norm``: on the CPU the norm's reduction was 2x slower on contiguous maps
    and 5x on channels-last ones (reducing over rows of a ``(N, C)`` matrix).
    """
    dtype = torch.promote_types(grad_out.dtype, torch.float32)
    rows = _channel_rows(grad_out)
    if rows is not None:
        return rows.abs().sum(0, dtype=dtype)
    return grad_out.abs().sum(dim=[0, *range(2, grad_out.ndim)], dtype=dtype)


def _take_channels(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t.index_select(1, index)`` in ``t``'s own layout: a channels-last map is gathered as an ``(N, C)`` matrix
    (5x faster on the CPU than ``index_select`` on the 5-d map) and stays channels-last, so the convolution
    backward that follows does not convert it."""
    rows = _channel_rows(t)
    if rows is None:
        return t.index_select(1, index)
    return rows.index_select(1, index).view(t.shape[0], *t.shape[2:], index.numel()).movedim(-1, 1)


def _sparse_conv_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    has_bias: bool,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    keep: float,
    output_mask: list[bool],
    channel_multiple: int = 1,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Input, weight and bias gradients of a convolution from the top-``keep`` output channels of ``grad_out``.

    Shapes: ``grad_out`` (B, C_out, *out_spatial), ``x`` (B, C_in, *in_spatial), ``weight`` (C_out, C_in / groups, *k).
    Returns tensors of the shapes of ``x``, ``weight`` and ``(C_out,)`` (``None`` where ``output_mask`` is False).
    """
    out_pad = [0] * len(stride)
    c_out = grad_out.shape[1]
    k = num_kept_channels(c_out, keep, channel_multiple)
    bias_sizes = [c_out] if has_bias else None
    if k >= c_out:
        return torch.ops.aten.convolution_backward(
            grad_out, x, weight, bias_sizes, stride, padding, dilation, False, out_pad, groups, output_mask
        )

    top = torch.topk(_channel_scores(grad_out.detach()), k, sorted=False).indices
    if groups == 1:  # the common case: slice the kept channels, no group bookkeeping (a dozen small ops fewer)
        chosen = top.sort().values  # ascending: contiguous reads in index_select
        dx, dw, db = torch.ops.aten.convolution_backward(
            _take_channels(grad_out, chosen), x, weight.index_select(0, chosen), [k] if has_bias else None,
            stride, padding, dilation, False, out_pad, 1, output_mask,
        )
        if output_mask[1]:
            dw = weight.new_zeros(weight.shape).index_copy_(0, chosen, dw)
        if output_mask[2]:
            db = db.new_zeros(c_out).index_copy_(0, chosen, db)
        return dx, dw, db
    keep_mask = torch.zeros(c_out, dtype=torch.bool, device=grad_out.device)
    keep_mask[top] = True

    # Grouped convolutions need the same number of output channels in every group passed to the kernel: run the
    # backward on the groups holding a kept channel only, each with m = (most kept channels in any group) channels,
    # kept ones first, padded with dropped channels whose grad_output is zeroed. For depthwise convolutions it is the k
    # kept groups.
    cout_g, cin_g = c_out // groups, weight.shape[1]
    mask_g = keep_mask.view(groups, cout_g)
    counts = mask_g.sum(dim=1)
    active = counts.nonzero().flatten()
    width = int(counts.max())
    order = torch.argsort((~mask_g[active]).to(torch.uint8), dim=1, stable=True)[:, :width]
    chosen = (active[:, None] * cout_g + order).flatten()
    n_active = int(active.numel())

    g = _take_channels(grad_out, chosen)
    if chosen.numel() > k:
        g = g * keep_mask[chosen].to(g.dtype).view(1, -1, *([1] * (g.ndim - 2)))
    w = weight.index_select(0, chosen)
    in_idx = None
    x_sub = x
    if n_active < groups:
        in_idx = (active[:, None] * cin_g + torch.arange(cin_g, device=x.device)).flatten()
        x_sub = _take_channels(x, in_idx)

    dx, dw, db = torch.ops.aten.convolution_backward(
        g,
        x_sub,
        w,
        [int(chosen.numel())] if has_bias else None,
        stride,
        padding,
        dilation,
        False,
        out_pad,
        n_active,
        output_mask,
    )
    if output_mask[0] and in_idx is not None:
        dx = x.new_zeros(x.shape).index_copy_(1, in_idx, dx)
    if output_mask[1]:
        dw = weight.new_zeros(weight.shape).index_copy_(0, chosen, dw)
    if output_mask[2]:
        db = db.new_zeros(c_out).index_copy_(0, chosen, db)
    return dx, dw, db


class _SparseBackpropConvFunction(torch.autograd.Function):
    """Dense N-d convolution forward, channel-sparse backward (see :func:`sparse_backprop_conv`)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int,
        keep: float,
        channel_multiple: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv_args = (stride, padding, dilation, groups, keep, channel_multiple)
        ctx.has_bias = bias is not None
        return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, keep, channel_multiple = ctx.conv_args
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx, dw, db = _sparse_conv_backward(
            grad_out,
            x,
            weight,
            ctx.has_bias,
            stride,
            padding,
            dilation,
            groups,
            keep,
            [bool(need_x), bool(need_w), bool(need_b and ctx.has_bias)],
            channel_multiple,
        )
        return dx, dw, db, None, None, None, None, None, None


def _ntuple(value: int | Sequence[int], n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    value = [int(v) for v in value]
    if len(value) != n:
        raise ValueError(f"`{name}` must be an int or a sequence of {n} ints, got {value}.")
    return value


def _autocast_cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    # mirror autocast's eligibility rule: floating point and not float64
    if t is None or not t.is_floating_point() or t.dtype in (torch.float64, dtype):
        return t
    return t.to(dtype)


def sparse_backprop_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    keep: float = 1.0,
    channel_multiple: int = 1,
) -> torch.Tensor:
    """N-d convolution (1-, 2- or 3-D) whose backward pass keeps only the top-``keep`` output channels.

    The forward result equals ``F.conv{N}d(input, weight, bias, stride, padding, dilation, groups)``. The gradients
    equal those of a dense backward in which the ``grad_output`` channels outside the top
    ``max(1, floor(keep * C_out))`` (ranked by mean ``|grad_output|`` over batch and space) are zeroed.
    Under ``torch.autocast`` the inputs are cast to the autocast dtype, as autocast does for convolutions.
    Not twice differentiable.

    Args:
        input: ``(B, C_in, *spatial)`` with 1 to 3 spatial dimensions.
        weight: ``(C_out, C_in / groups, *kernel)``.
        bias: ``(C_out,)``.
        stride, padding, dilation: One value, or one per spatial dimension; ``padding`` is explicit zero padding (no
            strings).
        groups: Number of groups; grouped and depthwise convolutions are supported.
        keep: Fraction of output channels used in the backward pass, in (0, 1]; 1 is the dense backward.
        channel_multiple: Round the kept count up to a multiple of this (see :func:`num_kept_channels`).

    Returns:
        torch.Tensor: ``(B, C_out, *out_spatial)``.
    """
    keep = _check_keep(keep)
    n = weight.ndim - 2
    if n not in (1, 2, 3):
        raise ValueError(f"`weight` must have 3 to 5 dimensions (1-D to 3-D convolution), got shape {tuple(weight.shape)}.")
    if input.ndim != n + 2:
        raise ValueError(f"`input` must have shape (B, C_in, *spatial) with {n} spatial dims, got {tuple(input.shape)}.")
    if isinstance(padding, str):
        raise ValueError("`padding` must be int(s) here; modules resolve 'same'/'valid' before calling this function.")
    args = (
        _ntuple(stride, n, "stride"),
        _ntuple(padding, n, "padding"),
        _ntuple(dilation, n, "dilation"),
        int(groups),
        keep,
        _check_multiple(channel_multiple),
    )
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        input, weight, bias = (_autocast_cast(t, dtype) for t in (input, weight, bias))
        # the casts above are recorded by autograd, so gradients reach the fp32 parameters in fp32
        with torch.autocast(device_type, enabled=False):
            return _SparseBackpropConvFunction.apply(input, weight, bias, *args)
    return _SparseBackpropConvFunction.apply(input, weight, bias, *args)


class _SparseBackpropConvMixin:
    """Forward of ``nn.ConvNd`` routed through :func:`sparse_backprop_conv` when gradients are needed."""

    sparse_keep: float
    sparse_channel_multiple: int | None = None  # None: the module-level CHANNEL_BLOCK
    sparse_max_share: float | None = None  # None: the module-level SPARSE_MAX_SHARE

    def sparse_backward_active(self) -> bool:
        """Whether the backward is sparse: at most ``sparse_max_share`` of the output channels are kept after
        rounding (above that the dense backward is cheaper; see the module docstring)."""
        c_out = self.out_channels  # type: ignore[attr-defined]
        share = SPARSE_MAX_SHARE if self.sparse_max_share is None else _check_keep(self.sparse_max_share,
                                                                                  "sparse_max_share")
        kept = num_kept_channels(c_out, self.sparse_keep, self.sparse_channel_multiple or CHANNEL_BLOCK)
        return kept < c_out and kept <= share * c_out + _FLOOR_EPS

    def _ssprop_padding(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        # resolve padding_mode and string padding to explicit zero padding, as nn.ConvNd._conv_forward does
        n = len(self.kernel_size)  # type: ignore[attr-defined]
        if self.padding_mode != "zeros":  # type: ignore[attr-defined]
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)  # type: ignore[attr-defined]
            return x, [0] * n
        padding = self.padding  # type: ignore[attr-defined]
        if not isinstance(padding, str):
            return x, list(padding)
        rev = self._reversed_padding_repeated_twice  # type: ignore[attr-defined]
        left, right = rev[0::2], rev[1::2]
        if left == right:  # symmetric ('valid', or 'same' with odd effective kernels)
            return x, list(reversed(left))
        # 'same' with an even effective kernel pads one more on the right: pad explicitly
        return F.pad(x, rev), [0] * n

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias  # type: ignore[attr-defined]
        needs_grad = input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        if not (torch.is_grad_enabled() and needs_grad and self.sparse_backward_active()):
            return super().forward(input)  # type: ignore[misc]
        n = len(self.kernel_size)  # type: ignore[attr-defined]
        unbatched = input.ndim == n + 1
        x = input.unsqueeze(0) if unbatched else input
        x, padding = self._ssprop_padding(x)
        out = sparse_backprop_conv(
            x,
            weight,
            bias,
            self.stride,  # type: ignore[attr-defined]
            padding,
            self.dilation,  # type: ignore[attr-defined]
            self.groups,  # type: ignore[attr-defined]
            self.sparse_keep,
            self.sparse_channel_multiple or CHANNEL_BLOCK,
        )
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.sparse_keep:g}, channel_multiple={self.sparse_channel_multiple or CHANNEL_BLOCK}"  # type: ignore[misc]


class SparseBackpropConv1d(_SparseBackpropConvMixin, nn.Conv1d):
    """``nn.Conv1d`` with channel-sparse backward. Input ``(B, C_in, L)`` or ``(C_in, L)``.

    Args:
        *args, **kwargs: As for ``nn.Conv1d``.
        keep: Fraction of output channels used in the backward pass, in (0, 1] (attribute ``sparse_keep``).
    """

    def __init__(self, *args: Any, keep: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sparse_keep = _check_keep(keep)


class SparseBackpropConv2d(_SparseBackpropConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with channel-sparse backward. Input ``(B, C_in, H, W)`` or ``(C_in, H, W)``.

    Args:
        *args, **kwargs: As for ``nn.Conv2d``.
        keep: Fraction of output channels used in the backward pass, in (0, 1] (attribute ``sparse_keep``).
    """

    def __init__(self, *args: Any, keep: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sparse_keep = _check_keep(keep)


class SparseBackpropConv3d(_SparseBackpropConvMixin, nn.Conv3d):
    """``nn.Conv3d`` with channel-sparse backward. Input ``(B, C_in, D, H, W)`` or ``(C_in, D, H, W)``.

    Args:
        *args, **kwargs: As for ``nn.Conv3d``.
        keep: Fraction of output channels used in the backward pass, in (0, 1] (attribute ``sparse_keep``).
    """

    def __init__(self, *args: Any, keep: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sparse_keep = _check_keep(keep)


_DENSE_TO_SPARSE: dict[type, type] = {
    nn.Conv1d: SparseBackpropConv1d,
    nn.Conv2d: SparseBackpropConv2d,
    nn.Conv3d: SparseBackpropConv3d,
}
_SPARSE_TO_DENSE: dict[type, type] = {v: k for k, v in _DENSE_TO_SPARSE.items()}


def _check_exclude(exclude: str | Sequence[str] | None) -> list[str]:
    if exclude is None:
        return []
    if isinstance(exclude, str):
        return [exclude]
    if not all(isinstance(p, str) for p in exclude):
        raise ValueError(f"`exclude` must be a module name, a glob pattern or a sequence of them, got {exclude!r}.")
    return list(exclude)


def _matching_patterns(name: str, patterns: list[str]) -> list[str]:
    """Patterns matching ``name`` or one of its parents ("out" excludes "out.2.conv")."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return [p for p in patterns if any(fnmatchcase(q, p) for q in prefixes)]


def convert_to_sparse_backprop(
    model: nn.Module,
    keep: float = 1.0,
    exclude: str | Sequence[str] | None = None,
    channel_multiple: int | None = None,
) -> nn.Module:
    """Give the ``nn.Conv1d/2d/3d`` modules of ``model`` a channel-sparse backward, in place.

    Each convolution's class is swapped to :class:`SparseBackpropConv1d`/``2d``/``3d``; parameters, buffers, hooks and
    names are untouched, so state dicts load both ways and existing optimizers keep working. Transposed convolutions
    and custom ``nn.ConvNd`` subclasses are left dense (the latter with a warning). Converting twice only updates
    ``keep``.

    Args:
        model: Any module, e.g. MONAI's ``DiffusionModelUNet``, ``AutoencoderKL``, ``UNet`` or ``DenseNet121``.
        keep: Initial fraction of output channels used in the backward pass, in (0, 1]. The default 1 is a dense
            backward until :func:`set_sparse_keep` or a scheduler lowers it.
        exclude: Module names or ``fnmatch`` glob patterns (matched against ``named_modules()`` names) left dense; a
            pattern matching a parent excludes all its convolutions, e.g. ``"out"`` or ``"conv_in.*"``. Patterns that
            match no convolution give a warning.
        channel_multiple: Kept channels are rounded up to a multiple of this; None (default) leaves it as it is,
            which is ``CHANNEL_BLOCK`` = 16 (the block oneDNN and cuDNN compute in) unless set before; 1 keeps exactly
            ``max(1, floor(keep * C_out))``.

    Returns:
        nn.Module: ``model`` itself.
    """
    keep = _check_keep(keep)
    if channel_multiple is not None:
        channel_multiple = _check_multiple(channel_multiple)
    patterns = _check_exclude(exclude)
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    used: set[str] = set()
    skipped: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.conv._ConvNd) or module.transposed:
            continue
        hits = _matching_patterns(name, patterns) if name else []
        if hits:
            used.update(hits)
            continue
        cls = type(module)
        if cls in _DENSE_TO_SPARSE:
            module.__class__ = _DENSE_TO_SPARSE[cls]
        elif cls not in _SPARSE_TO_DENSE:
            skipped.append(f"{name or '<root>'} ({cls.__name__})")
            continue
        module.sparse_keep = keep
        if channel_multiple is not None:
            module.sparse_channel_multiple = channel_multiple
    unused = [p for p in patterns if p not in used]
    if unused:
        warnings.warn(f"convert_to_sparse_backprop: `exclude` patterns {unused} matched no convolution.", stacklevel=2)
    if skipped:
        warnings.warn(
            "convert_to_sparse_backprop: left dense the convolution subclasses "
            f"{skipped} (only exact nn.Conv1d/2d/3d are converted; run lazy modules once first).",
            stacklevel=2,
        )
    return model


def sparse_backprop_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The converted convolutions of ``model``, by ``named_modules()`` name."""
    return {name: m for name, m in model.named_modules() if type(m) in _SPARSE_TO_DENSE}


def revert_sparse_backprop(model: nn.Module) -> nn.Module:
    """Undo :func:`convert_to_sparse_backprop` in place (the modules become plain ``nn.ConvNd`` again).

    Returns:
        nn.Module: ``model`` itself.
    """
    for module in sparse_backprop_modules(model).values():
        module.__class__ = _SPARSE_TO_DENSE[type(module)]
        module.__dict__.pop("sparse_keep", None)
        module.__dict__.pop("sparse_channel_multiple", None)
        module.__dict__.pop("sparse_max_share", None)
    return model


def _require_converted(model: nn.Module) -> dict[str, nn.Module]:
    modules = sparse_backprop_modules(model)
    if not modules:
        raise ValueError(
            "`model` has no sparse-backprop convolutions; call convert_to_sparse_backprop(model) first."
        )
    return modules


def set_sparse_keep(model: nn.Module, keep: float) -> int:
    """Set the backward keep fraction of every converted convolution of ``model``.

    Args:
        model: A model converted with :func:`convert_to_sparse_backprop`.
        keep: Fraction of output channels used in the backward pass, in (0, 1].

    Returns:
        int: The number of modules updated.

    Raises:
        ValueError: If ``keep`` is outside (0, 1] or ``model`` holds no converted convolution.
    """
    keep = _check_keep(keep)
    modules = _require_converted(model)
    for module in modules.values():
        module.sparse_keep = keep
    return len(modules)


def get_sparse_keep(model: nn.Module) -> float:
    """The keep fraction shared by all converted convolutions of ``model``.

    Raises:
        ValueError: If nothing is converted or the modules hold different values (then read them one by one through
            :func:`sparse_backprop_modules`).
    """
    values = {float(m.sparse_keep) for m in _require_converted(model).values()}
    if len(values) != 1:
        raise ValueError(
            f"the converted convolutions of `model` hold different keep values {sorted(values)}; "
            "read them with sparse_backprop_modules(model)."
        )
    return values.pop()
