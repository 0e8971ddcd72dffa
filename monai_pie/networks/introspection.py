"""Reading a network's spatial dimensionality and channel counts from its first convolution."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ConvSpec", "cross_attention_width", "first_conv_spec"]


@dataclass(frozen=True)
class ConvSpec:
    """``spatial_dims`` and ``in_channels`` of a network's first convolution."""

    spatial_dims: int
    in_channels: int


def first_conv_spec(module: nn.Module | None) -> ConvSpec | None:
    """Return the spec of the first ``Conv1d/2d/3d`` found in ``module`` (registration order), or ``None``.

    MONAI's nets (``DiffusionModelUNet``, ``AutoencoderKL``, ``UNet``) register their input convolution first.
    """
    if module is None:
        return None
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.modules.conv._ConvTransposeNd):
            return ConvSpec(spatial_dims=len(m.kernel_size), in_channels=int(m.in_channels))
    return None


def cross_attention_width(module: nn.Module | None) -> int | None:
    """Width of the context a cross-attention U-Net takes (the ``in_features`` of its first cross-attention key
    projection, MONAI's ``attn2.to_k``), or ``None`` when it has no cross-attention."""
    if module is None:
        return None
    for name, m in module.named_modules():
        if name.endswith("attn2.to_k") and isinstance(m, nn.Linear):
            return int(m.in_features)
    return None

