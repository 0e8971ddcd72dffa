"""Conditional generation from pure noise, as a MONAI ``Inferer``: the LDM bundles' inferer.

``inferer(conditions, network)`` draws noise in the model's working space (latents for an LDM), samples with the
sampler core, decodes, and returns images ``(B, C, *image_size)``. The noise comes from one seeded stream per
inferer, so the same calls in the same order give the same images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from ..conditioning import DiffusionCondition
from ..networks import DiffusionModel
from .sampler import DiffusionSampler, make_generator

__all__ = ["GenerationInferer", "condition_batch_size"]


def condition_batch_size(condition: Any) -> int:
    """How many images a condition asks for: the length of a prompt list, of a covariate dict's tensors or lists, a
    ``DiffusionCondition``'s batch, or an int (an unconditional batch)."""
    if isinstance(condition, bool):
        raise TypeError("a condition cannot be a bool.")
    if isinstance(condition, int):
        return condition
    if isinstance(condition, DiffusionCondition):
        size = condition.batch_size()
    elif isinstance(condition, str):
        size = 1
    elif isinstance(condition, Mapping):
        first = next(iter(condition.values()), None)
        size = None if first is None else (int(first.shape[0]) if torch.is_tensor(first) and first.ndim else
                                           len(first) if isinstance(first, Sequence) else 1)
    elif torch.is_tensor(condition):
        size = int(condition.shape[0])
    elif isinstance(condition, Sequence):
        size = len(condition)
    else:
        size = None
    if not size:
        raise ValueError(f"cannot tell how many images to generate from the condition {condition!r}.")
    return int(size)


class GenerationInferer(Inferer):
    """Sample images for a batch of conditions: noise -> sampler core -> decode.

    Args:
        scheduler: the MONAI scheduler the model was trained with (its tables are used).
        image_size: spatial size of the generated images, e.g. ``(64, 80, 64)``; the working-space shape is found by
            encoding a blank image once (and the size must survive the autoencoder's round trip).
        num_inference_steps: sampler steps.
        guidance_scale: classifier-free guidance weight ``w >= 0`` (1 = the conditional model alone).
        seed: seed of the noise stream (``None``: the global RNG).
        method, eta, prediction_type, clip_sample: passed to the ``DiffusionSampler``.
        output_range: clamp of the decoded images (``None`` to keep them as decoded).
        device: where the images are put; default the network's device.
        progress: progress bar over steps.
        precision, accelerate, compile_denoiser: passed to the ``DiffusionSampler`` (``"bf16"`` denoiser autocast;
            fused attention and channels-last weights, slab-wise large layers; the denoiser through ``torch.compile``,
            for long jobs).

    Call ``inferer(conditions, network)`` -> ``(B, C, *image_size)``; ``conditions`` is what the network's conditioner
    takes for ``B`` images (a list of prompts, a dict of ``(B,)`` covariates), or an int ``B`` for an unconditional
    model.
    """

    def __init__(
        self,
        scheduler: Any,
        image_size: Sequence[int],
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        seed: int | None = None,
        method: str = "ddim",
        eta: float = 0.0,
        prediction_type: str | None = None,
        clip_sample: tuple[float, float] | None = None,
        output_range: tuple[float, float] | None = (0.0, 1.0),
        device: torch.device | str | None = None,
        progress: bool = True,
        precision: str = "fp32",
        accelerate: bool = True,
        compile_denoiser: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}.")
        size = tuple(int(s) for s in image_size)
        if not size or min(size) < 1 or len(size) not in (2, 3):
            raise ValueError(f"`image_size` must be 2 or 3 positive sides, got {list(image_size)}.")
        self.sampler = DiffusionSampler(scheduler, num_inference_steps, method, eta, prediction_type, clip_sample,
                                        progress, precision, accelerate, compile_denoiser=compile_denoiser)
        self.image_size = size
        self.guidance_scale = float(guidance_scale)
        self.seed = seed
        self.output_range = None if output_range is None else (float(output_range[0]), float(output_range[1]))
        self.device = None if device is None else torch.device(device)
        self._generator: torch.Generator | None = None
        self._latent_shapes: dict[int, tuple[int, ...]] = {}

    def reset(self) -> None:
        """Restart the noise stream at ``seed``."""
        self._generator = None

    def params(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "num_inference_steps": self.sampler.num_inference_steps,
                "guidance_scale": self.guidance_scale, "seed": self.seed, "method": self.sampler.method,
                "eta": self.sampler.eta}

    def latent_shape(self, model: DiffusionModel, device: torch.device) -> tuple[int, ...]:
        """Working-space shape ``(C_lat, *latent_spatial)`` of an ``image_size`` image (computed once per model)."""
        key = id(model)
        if key not in self._latent_shapes:
            channels = getattr(model, "image_channels", None) or 1
            with torch.no_grad():
                z = model.encode(torch.zeros(1, channels, *self.image_size, device=device))
                back = tuple(model.decode(z).shape[2:])
            if back != self.image_size:
                raise ValueError(f"`image_size` {list(self.image_size)} does not round-trip through the autoencoder "
                                 f"(decodes to {list(back)}); use sides divisible by its downsampling factor, e.g. the "
                                 "bundle's training size.")
            self._latent_shapes[key] = tuple(z.shape[1:])
        return self._latent_shapes[key]

    @torch.no_grad()
    def __call__(self, inputs: Any, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Generate one image per condition in ``inputs``; see the class docstring."""
        model = self.sampler.prepare_model(network)
        device = next(network.parameters(), torch.empty(0)).device
        batch = condition_batch_size(inputs)
        condition = None if isinstance(inputs, int) else inputs
        shape = (batch, *self.latent_shape(model, device))
        if self._generator is None or self._generator.device != device:
            self._generator = make_generator(self.seed, device)
        z = self.sampler.generate(model, shape, generator=self._generator, device=device, condition=condition,
                                  guidance_scale=self.guidance_scale)
        x = model.decode(z)
        if self.output_range is not None:
            x = x.clamp(*self.output_range)
        return x.to(self.device) if self.device is not None else x
