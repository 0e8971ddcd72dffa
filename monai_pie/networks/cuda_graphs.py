"""Denoiser calls replayed as CUDA graphs.

At the shipped sizes a DDIM step on a GPU is a few milliseconds of kernels behind about ten milliseconds of Python
and kernel launches (``benchmarks/results/cuda/progression.md``). A sampler calls the same denoiser with the same
shapes at every step, so the first call per input signature records the kernels once (``torch.cuda.CUDAGraph``) and
later calls copy their inputs into the recorded buffers and replay: the same kernels on the same data, so the same
outputs, without the launch overhead.

Graphs are used only where they are safe: CUDA inputs, gradients off, no autocast (the ``bf16`` path caches weight
casts, which a graph must not), and the network's parameters still where they were at capture (a moved or reloaded
network is captured again). A capture that fails (a network that synchronises with the host, say) falls back to
the eager call for that signature, with one warning. Calls from several threads take turns (the recorded buffers are
shared). Each kept signature holds one forward's activations in a private pool; ``release_cuda_graphs(model)`` frees
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["GraphedDenoiser", "graphed_denoise", "release_cuda_graphs"]

#: captured input signatures kept per network (each holds a private memory pool of one forward's activations)
MAX_GRAPHS = 4
_WARMUP_CALLS = 2
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _param_fingerprint(model: nn.Module) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in model.parameters()) + tuple(t.data_ptr() for t in model.buffers())


class GraphedDenoiser:
    """``model.denoise(x_t, timesteps, condition)`` replayed from CUDA graphs, one per input signature.

    Args:
        model: a ``DiffusionModel`` (anything with ``denoise(x_t, timesteps, condition)``) on a CUDA device.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = weakref.ref(model)  # the cache is keyed by the model: a strong reference would keep it alive
        self._lock = threading.RLock()
        self.graphs: OrderedDict[tuple, Any] = OrderedDict()  # signature -> (graph, static inputs, output) or None
        self.fingerprint = _param_fingerprint(model)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise ReferenceError("the network of this GraphedDenoiser no longer exists.")
        return model

    @staticmethod
    def _flatten(x: torch.Tensor, timesteps: torch.Tensor,
                 condition: Any) -> tuple[list[torch.Tensor], tuple[str, ...], Callable]:
        """The call's tensors, the condition fields they came from, and a function that rebuilds
        ``(x, timesteps, condition)`` from a list like them."""
        fields = () if condition is None else tuple(
            f.name for f in dataclasses.fields(condition) if torch.is_tensor(getattr(condition, f.name)))
        tensors = [x, timesteps] + [getattr(condition, name) for name in fields]

        def rebuild(ts: list[torch.Tensor]) -> tuple:
            cond = None if condition is None else dataclasses.replace(condition, **dict(zip(fields, ts[2:])))
            return ts[0], ts[1], cond

        return tensors, fields, rebuild

    def _capture(self, tensors: list[torch.Tensor], rebuild: Callable) -> tuple:
        device = tensors[0].device
        static = [t.clone() for t in tensors]
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as PyTorch's CUDA-graph notes ask
            for _ in range(_WARMUP_CALLS):
                self.model.denoise(*rebuild(static))
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        caller_stream = torch.cuda.current_stream(device)
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.model.denoise(*rebuild(static))
        finally:  # a failed capture_end skips torch.cuda.graph's own stream restore
            torch.cuda.set_stream(caller_stream)
        return graph, static, out

    def clear(self) -> None:
        """Drop the recorded graphs and the memory their pools hold."""
        with self._lock:
            self.graphs.clear()

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, condition: Any = None) -> torch.Tensor:
        """Same as ``model.denoise(x, timesteps, condition)``; ``x`` ``(B, C, *spatial)``, ``timesteps`` ``(B,)``."""
        model = self.model
        tensors, fields, rebuild = self._flatten(x, timesteps, condition)
        # everything that decides what the recorded kernels read: shapes, dtypes, devices, which condition field each
        # tensor is, the network's mode, and inference mode (buffers made under it cannot be written outside it)
        key = (tuple((tuple(t.shape), t.dtype, t.device) for t in tensors), type(condition), fields, model.training,
               torch.is_inference_mode_enabled())
        on_device = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
        with self._lock, on_device:  # one caller at a time: the buffers are shared
            fingerprint = _param_fingerprint(model)
            if fingerprint != self.fingerprint:  # moved or reloaded: the recorded kernels point at old memory
                self.graphs.clear()
                self.fingerprint = fingerprint
            if key not in self.graphs:
                try:
                    self.graphs[key] = self._capture(tensors, rebuild)
                except Exception as e:  # noqa: BLE001 - any capture failure means: run this signature eagerly
                    warnings.warn(f"CUDA-graph capture of the denoiser failed ({type(e).__name__}: {e}); running it "
                                  "without graphs for these input shapes.", RuntimeWarning, stacklevel=2)
                    self.graphs[key] = None
                while len(self.graphs) > MAX_GRAPHS:
                    self.graphs.popitem(last=False)
            self.graphs.move_to_end(key)
            entry = self.graphs[key]
            if entry is None:
                return model.denoise(x, timesteps, condition)
            graph, static, out = entry
            for buffer, value in zip(static, tensors):
                buffer.copy_(value)
            graph.replay()
            return out.clone()


def graphed_denoise(model: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, condition: Any = None) -> torch.Tensor:
    """``model.denoise(x, timesteps, condition)``, replayed from a CUDA graph where that is safe (CUDA input,
    gradients off, no autocast); otherwise the eager call. One ``GraphedDenoiser`` per network is kept for the
    network's lifetime."""
    if (not x.is_cuda or torch.is_grad_enabled() or torch.is_autocast_enabled("cuda")
            or not isinstance(model, nn.Module)):
        return model.denoise(x, timesteps, condition)
    graphed = _CACHE.get(model)
    if graphed is None:
        graphed = _CACHE[model] = GraphedDenoiser(model)
    return graphed(x, timesteps, condition)


def release_cuda_graphs(model: nn.Module) -> None:
    """Free the CUDA graphs recorded for ``model`` (each kept input shape holds one forward's activations)."""
    graphed = _CACHE.pop(model, None)
    if graphed is not None:
        graphed.clear()
