"""Denoiser calls through ``torch.compile`` (inductor): an opt-in for long jobs.

A sampler calls the same denoiser with the same shapes at every step, which is what a compiled graph is for:
inductor fuses each GroupNorm with its SiLU and the U-Net's other element-wise work into a few kernels, which the
eager network runs as separate passes over memory. On this project's 2-core CPU a guided (batch 2) U-Net call is
1.17-1.34x faster compiled (``benchmarks/results/denoiser.md``) and a PIE round 1.04-1.48x, 1.10-1.67x with
``precision="bf16"`` (``benchmarks/results/progression.md``, docs/performance.md). The price is the first call per
input shape and precision: tens of seconds to compile cold, a few seconds from inductor's on-disk cache in later
processes, so it pays over many steps (a datalist, a cohort of edits, a serving process), not over one short run.
Hence opt-in (``DiffusionSampler(compile_denoiser=True)``).

Where a compiled call would be slower or cannot run, the sampler's eager path is called instead:

- a batch-1 3D input on the CPU: inductor's convolutions take PyTorch's path, whose heuristic sends batch-1 3D
  convolutions of small volumes to the slow reference kernel; the eager accelerated network calls oneDNN directly
  (``slab_execution._falls_to_reference_kernel``);
- autograd on (training is not what this is for);
- a model whose compilation raised (no C compiler for inductor's CPU kernels, say): one warning naming the error,
  then eager calls for that model. An error of the call itself (a wrong shape) is raised by the eager call, so the
  user sees the model's own message. (An operation dynamo cannot trace raises nothing: dynamo runs it eagerly
  between compiled parts.)

Under compilation, the accelerated layers (``use_slab_execution``) take PyTorch's plain path, so inductor sees
ordinary convolutions and GroupNorms (its GroupNorm reduces in float32 with Welford's update: accurate, unlike
PyTorch's channels-last CPU kernel). Up to :data:`MAX_SIGNATURES` input signatures (shape, dtype, precision,
architecture) are compiled per process; past that dynamo runs the network eagerly.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["MAX_SIGNATURES", "compiled_denoise", "compiles"]

#: compiled versions of the denoiser call kept per process (dynamo's default is 8: a serving process with several
#: bundles, batch sizes and precisions would outgrow it and silently run eagerly)
MAX_SIGNATURES = 64
_FAILED: weakref.WeakSet = weakref.WeakSet()  # networks whose compilation failed: called eagerly from then on
_COMPILED: Any = None
_LOCK = threading.Lock()


def _denoise(model: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, condition: Any) -> torch.Tensor:
    return model.denoise(x, timesteps, condition)


def _network(model: Any) -> Any:
    """What a failure is remembered by: the U-Net of a ``LatentDiffusionModel`` (samplers wrap a bare U-Net afresh
    on every call), else the model."""
    return getattr(model, "unet", model)


def _failed(model: Any) -> bool:
    try:
        return _network(model) in _FAILED
    except TypeError:  # neither hashable nor weakly referenceable: never remembered, so never marked
        return False


def compiles(model: Any, x: torch.Tensor) -> bool:
    """Whether a denoiser call of ``model`` on ``x`` ``(B, C, *spatial)`` goes through the compiled graph (see the
    module docstring for when it does not)."""
    if _failed(model) or torch.is_grad_enabled():
        return False
    return not (x.device.type == "cpu" and x.ndim == 5 and x.shape[0] == 1)


def compiled_denoise(model: Any, x: torch.Tensor, timesteps: torch.Tensor, condition: Any = None,
                     eager: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """``model.denoise(x, timesteps, condition)`` through ``torch.compile`` where :func:`compiles` says so.

    One compiled function serves every model (modules are graph inputs, so models of one architecture share a
    graph); each new input signature or autocast state compiles once.

    Args:
        model: a ``DiffusionModel`` (anything with ``denoise(x_t, timesteps, condition)``).
        x: the noisy working-space sample ``(B, C, *spatial)``.
        timesteps: ``(B,)`` model levels.
        condition: the ``DiffusionCondition`` of the batch (or ``None``).
        eager: the call used where the compiled graph is not (default ``model.denoise``; the sampler passes its
            CUDA-graph replay on a GPU).

    Returns:
        The denoiser output, shaped like ``x``.
    """
    global _COMPILED
    eager = model.denoise if eager is None else eager
    if not compiles(model, x):
        return eager(x, timesteps, condition)
    with _LOCK:
        if _COMPILED is None:
            _COMPILED = torch.compile(_denoise, dynamic=False)
    try:
        with torch._dynamo.config.patch(recompile_limit=MAX_SIGNATURES):
            return _COMPILED(model, x, timesteps, condition)
    except Exception as err:  # noqa: BLE001 - a compiler failure: fall back to the eager network, said once
        out = eager(x, timesteps, condition)  # an error of the call itself is raised here, in its own words
        try:
            _FAILED.add(_network(model))
        except TypeError:
            pass
        warnings.warn(f"torch.compile could not compile the denoiser ({type(err).__name__}: {str(err)[:300]}); "
                      "running it uncompiled (same outputs, without the speed-up).", RuntimeWarning, stacklevel=2)
        return out
