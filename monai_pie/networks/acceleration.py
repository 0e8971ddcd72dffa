"""Inference speed-ups for MONAI's generative networks.

``accelerate_for_inference`` changes how a network computes, not what: its outputs agree with the unaccelerated
network to float rounding (the tests check it). Three changes, measured in ``benchmarks/bench_progression.py`` and
``benchmarks/bench_memory.py``:

- MONAI attention blocks (``SABlock``, ``CrossAttentionBlock``: the U-Net's transformers and the autoencoder's
  non-local attention) are switched to PyTorch's fused ``scaled_dot_product_attention``. The einsum path builds the
  whole ``tokens x tokens`` matrix: 0.76 GB for a 24^3 latent, 66 GB for a 1 mm brain's; the fused kernel never
  does, and is faster.
- On the CPU, convolution weights are put in channels-last memory format, which lets oneDNN pick its fast kernels
  (it does not keep batch-1 3D convolutions of small volumes off PyTorch's reference kernel: see the next item).
  Not on CUDA: there cuDNN's channels-last 3D convolutions were slower (0.83-0.86x) and took 9 % more memory
  on an H200 (``benchmarks/results/cuda/memory.md``).
- Layers of large volumes run slab by slab (``use_slab_execution``): exact, and leaner at 1 mm
  (``benchmarks/results/memory.md``). Layers of at most 2^19 voxels run as before, so small volumes pay nothing,
  except that a batch-1 3D convolution of a small volume (the brain U-Net's latent without guidance, the deepest
  autoencoder level) runs on oneDNN where PyTorch's CPU heuristic would pick its reference kernel (2.5x faster
  for the brain U-Net at batch 1, ``benchmarks/results/denoiser.md``; not under ``torch.compile``).

``precision="bf16"`` (``inference_autocast``) is the one change that alters outputs beyond rounding; it is opt-in and
its error on the shipped brain bundle is stated in docs/performance.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .slab_execution import use_slab_execution

__all__ = ["PRECISIONS", "accelerate_for_inference", "inference_autocast", "use_channels_last", "use_fused_attention"]

#: denoiser precisions a sampler takes: ``"fp32"`` (exact) or ``"bf16"`` (autocast; faster where the hardware has
#: bf16 arithmetic, e.g. AVX512-BF16 / AMX CPUs and Ampere+ GPUs)
PRECISIONS = ("fp32", "bf16")
_ACCELERATED = "_monai_pie_accelerated"


def use_fused_attention(module: nn.Module) -> int:
    """Switch MONAI attention blocks in ``module`` to ``torch.nn.functional.scaled_dot_product_attention``.

    Only blocks where the fused path computes the same thing are switched: no dropout (MONAI passes its dropout rate
    to the fused kernel even in eval mode), no saved attention maps, no relative position embedding, no attention
    dtype cast.

    Returns:
        The number of blocks switched.
    """
    switched = 0
    for block in module.modules():
        if not hasattr(block, "use_flash_attention") or block.use_flash_attention:
            continue
        if (getattr(block, "dropout_rate", 0.0) or getattr(block, "save_attn", False)
                or getattr(block, "rel_positional_embedding", None) is not None
                or getattr(block, "attention_dtype", None) is not None):
            continue
        block.use_flash_attention = True
        switched += 1
    return switched


def use_channels_last(module: nn.Module) -> nn.Module:
    """Put every 2D / 3D convolution weight of ``module`` in channels-last memory format, in place (the same
    ``Parameter`` objects, so optimisers and state dicts are unaffected). Returns ``module``."""
    for conv in module.modules():
        if isinstance(conv, nn.modules.conv._ConvNd) and conv.weight.dim() in (4, 5):
            fmt = torch.channels_last if conv.weight.dim() == 4 else torch.channels_last_3d
            conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)
    return module


def accelerate_for_inference(module: nn.Module) -> nn.Module:
    """Fused attention, channels-last weights (for a module on the CPU) and slab-wise large layers (see the module
    docstring), once per module; returns ``module``."""
    if not getattr(module, _ACCELERATED, False):
        use_fused_attention(module)
        if all(p.device.type == "cpu" for p in module.parameters()):
            use_channels_last(module)
        use_slab_execution(module)
        object.__setattr__(module, _ACCELERATED, True)
    return module


@contextlib.contextmanager
def inference_autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast to bfloat16 on ``device`` when ``precision == "bf16"``; nothing for ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}, got {precision!r}.")
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
