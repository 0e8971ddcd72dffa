"""The one sampler core: run a denoiser from any noise level to clean data, with explicit level pairs.

Every task inferer (generation, SDEdit, PIE progression, inpainting, anomaly, normative) is a thin layer over
``DiffusionSampler``. It owns: the level list and its ``(t, t_prev)`` pairs, starting at any level (strength),
DDIM (``eta``), DDPM ancestral and rectified-flow Euler updates, DDIM inversion, classifier-free guidance in one
batched forward, the known-region rule (RePaint / PIE background re-injection), a progress bar and seeding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..conditioning import DiffusionCondition
from ..networks import PRECISIONS, DiffusionModel, accelerate_for_inference, as_diffusion_model, inference_autocast
from ..networks.compiled import compiled_denoise
from ..networks.cuda_graphs import graphed_denoise
from ..schedules import NoiseSchedule
from .updates import ddim_update, ddpm_update, euler_update, posterior_variance

__all__ = ["DiffusionSampler", "KnownRegion", "make_generator", "randn_like"]

#: the known image at every level: a clean tensor (re-noised with fresh noise at each step), or a function of the
#: level returning the noisy known image at that level (e.g. a DDIM-inversion trajectory).
KnownRegion = Union[torch.Tensor, Callable[[int], torch.Tensor]]

METHODS = ("ddim", "ddpm", "euler")


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (``None`` -> ``None``: global RNG)."""
    if seed is None:
        return None
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` when given."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class DiffusionSampler:
    """Sampler core shared by all task inferers.

    Args:
        scheduler: a MONAI scheduler (``DDPMScheduler``, ``DDIMScheduler``, ``RFlowScheduler``, ...) or a
            ``NoiseSchedule``; only its tables are used.
        num_inference_steps: steps of a full run (strength 1); partial runs take a proportional share.
        method: ``"ddim"`` (with ``eta``), ``"ddpm"`` (ancestral) or ``"euler"`` (rectified flow only).
        eta: DDIM stochasticity, 0 = deterministic, 1 = DDPM-like.
        prediction_type: override the scheduler's (``"epsilon"``, ``"sample"``, ``"v_prediction"``).
        clip_sample: optional ``(low, high)`` clamp of the predicted clean sample (pixel models; keep off for latents).
        progress: show a progress bar over steps.
        precision: the denoiser's arithmetic, one of ``PRECISIONS``: ``"fp32"``, or ``"bf16"`` autocast (faster on
            hardware with bf16 units; the sample stays float32 between steps). Decoding is always float32.
        accelerate: prepare each network once with ``accelerate_for_inference`` (fused attention, channels-last
            weights, slab-wise large layers; same outputs to float rounding). Off only to measure what it gains.
        cuda_graphs: with ``accelerate``, replay the denoiser from CUDA graphs when the sample is on a GPU
            (``monai_pie.networks.cuda_graphs``: the same kernels without the per-step launch overhead; fp32 only).
            No effect on the CPU.
        compile_denoiser: call the denoiser through ``torch.compile`` (``monai_pie.networks.compiled``): guided
            calls 1.17-1.34x faster on the CPU, after a first call per input shape that compiles (tens of seconds
            cold, seconds from inductor's cache). For long jobs; off by default. On a GPU it replaces CUDA-graph
            replay (not measured there yet); calls it does not compile take the eager path.
    """

    def __init__(
        self,
        scheduler: Any,
        num_inference_steps: int = 50,
        method: str = "ddim",
        eta: float = 0.0,
        prediction_type: str | None = None,
        clip_sample: Sequence[float] | None = None,
        progress: bool = True,
        precision: str = "fp32",
        accelerate: bool = True,
        cuda_graphs: bool = True,
        compile_denoiser: bool = False,
    ) -> None:
        self.schedule = NoiseSchedule.from_scheduler(scheduler, prediction_type)
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
        if method == "euler" and self.schedule.kind != "flow":
            raise ValueError("`method='euler'` is the rectified-flow update; use an RFlowScheduler or method 'ddim'.")
        if eta < 0:
            raise ValueError(f"`eta` must be >= 0, got {eta}.")
        if clip_sample is not None and (len(clip_sample) != 2 or clip_sample[0] >= clip_sample[1]):
            raise ValueError(f"`clip_sample` must be (low, high) with low < high, got {clip_sample}.")
        self.levels(num_inference_steps)  # validates the step count
        self.num_inference_steps = int(num_inference_steps)
        self.method = method
        self.eta = float(eta)
        self.clip_sample = None if clip_sample is None else (float(clip_sample[0]), float(clip_sample[1]))
        self.progress = progress
        if precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}, got {precision!r}.")
        self.precision = precision
        self.accelerate = bool(accelerate)
        self.cuda_graphs = bool(cuda_graphs)
        self.compile_denoiser = bool(compile_denoiser)

    def prepare_model(self, network: Any) -> DiffusionModel:
        """``network`` as a ``DiffusionModel`` (a bare denoiser is wrapped), accelerated once when ``accelerate``; every
        run and task inferer takes its network through here."""
        if self.accelerate and isinstance(network, nn.Module):
            accelerate_for_inference(network)
        return as_diffusion_model(network)

    # ------------------------------------------------------------------ levels and noise
    def levels(self, num_inference_steps: int | None = None, strength: float = 1.0, t_start: int | None = None) -> list[int]:
        """Levels ``[t_start, ..., clean]`` of a run; see ``NoiseSchedule.levels``."""
        n = self.num_inference_steps if num_inference_steps is None else num_inference_steps
        return self.schedule.levels(n, t_start=t_start, strength=strength)

    def add_noise(
        self, x0: torch.Tensor, level: int, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Forward process: ``alpha(level) * x0 + sigma(level) * noise`` (noise drawn from ``generator`` if not given)."""
        if noise is None:
            noise = randn_like(x0, generator)
        return self.schedule.add_noise(x0, noise, level)

    # ------------------------------------------------------------------ conditions, and one model call, guided
    @staticmethod
    def prepare_conditions(
        model: DiffusionModel,
        condition: Any,
        like: torch.Tensor,
        null_condition: Any = None,
        guidance_scale: float = 1.0,
    ) -> tuple[DiffusionCondition, DiffusionCondition | None]:
        """The conditional and null conditions of a run, batched like ``like`` and on its device and dtype.

        Every run (``sample``, ``invert``, ``edit``) and every task inferer prepares its conditions here.

        Args:
            model: the diffusion model; its conditioner turns raw conditions into a ``DiffusionCondition``.
            condition: raw or ``DiffusionCondition``; ``None`` for an unconditional model.
            like: a working-space tensor ``(B, ...)`` whose batch size, device and dtype the conditions take.
            null_condition: the unconditional counterpart; default the model's ``null_condition``.
            guidance_scale: classifier-free guidance weight; at 1 (or without a condition) no null is needed.

        Returns:
            ``(condition, null)``; ``null`` is ``None`` when guidance is off.
        """
        batch = like.shape[0]

        def prepare(raw: Any) -> DiffusionCondition:
            cond = model.make_condition(raw)
            return cond if cond.is_empty else cond.expand_to(batch).to(device=like.device, dtype=like.dtype)

        cond = prepare(condition)
        if guidance_scale == 1.0 or cond.is_empty:
            return cond, None
        return cond, (prepare(null_condition) if null_condition is not None else model.null_condition(cond))

    def model_output(
        self,
        model: DiffusionModel,
        x: torch.Tensor,
        level: int,
        condition: DiffusionCondition,
        null_condition: DiffusionCondition | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Denoiser output at ``level``; classifier-free guidance ``u + w (c - u)`` in one batched forward."""
        t = self.schedule.model_level(level)
        timesteps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        with inference_autocast(self.precision, x.device):  # nested in a run's own: its weight casts are reused
            denoise = self.denoiser(model)
            if null_condition is None or guidance_scale == 1.0:
                return denoise(x, timesteps, condition).to(x.dtype)
            both = DiffusionCondition.cat([condition, null_condition])
            out = denoise(torch.cat([x, x]), torch.cat([timesteps, timesteps]), both).to(x.dtype)
        out_c, out_u = out.chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    def denoiser(self, model: DiffusionModel) -> Callable[..., torch.Tensor]:
        """``model.denoise`` as this sampler calls it: compiled, replayed from CUDA graphs, or eager."""
        eager = partial(graphed_denoise, model) if self.accelerate and self.cuda_graphs else model.denoise
        return partial(compiled_denoise, model, eager=eager) if self.compile_denoiser else eager

    # ------------------------------------------------------------------ one update
    def step(
        self,
        model_out: torch.Tensor,
        x: torch.Tensor,
        level: int,
        level_prev: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Move ``x`` from ``level`` to the less noisy ``level_prev`` given the denoiser output at ``level``."""
        sch = self.schedule
        a_t, s_t = sch.alpha_sigma(level)
        a_p, s_p = sch.alpha_sigma(level_prev)
        x0, eps = sch.split(model_out, x, level)
        if self.clip_sample is not None:
            x0 = x0.clamp(*self.clip_sample)
            eps = (x - a_t * x0) / max(s_t, 1e-12)
        if self.method == "euler":
            return euler_update(x, x0 - eps, s_t, s_p)
        if self.method == "ddpm":
            noise = randn_like(x, generator) if level_prev != sch.clean_level else None
            return ddpm_update(x, x0, a_t, s_t, a_p, s_p, noise)
        std = self.eta * posterior_variance(a_t, s_t, a_p, s_p) ** 0.5
        noise = randn_like(x, generator) if std > 0 else None
        return ddim_update(x0, eps, a_p, s_p, std, noise)

    # ------------------------------------------------------------------ runs
    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        levels: Sequence[int] | None = None,
        strength: float = 1.0,
        t_start: int | None = None,
        condition: Any = None,
        null_condition: Any = None,
        guidance_scale: float = 1.0,
        known: KnownRegion | None = None,
        mask: torch.Tensor | None = None,
        paste_known: bool = True,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        desc: str = "sampling",
    ) -> torch.Tensor:
        """Denoise ``x`` (already at ``levels[0]``) down to clean data.

        Args:
            model: a ``LatentDiffusionModel`` (or any module with ``denoise``), or a bare denoiser with
                ``DiffusionModelUNet``'s signature. Works on whatever space ``x`` is in (latents for LDMs).
            x: ``(B, C, *spatial)`` sample at ``levels[0]``.
            levels: explicit level list (``[t_start, ..., clean]``); default from ``strength``/``t_start``.
            condition, null_condition: raw or ``DiffusionCondition``; the null one defaults to the model's.
            guidance_scale: classifier-free guidance weight ``w``; 1 = the conditional model alone.
            known: known image (clean ``(B, C, *spatial)`` or a function of the level) kept outside ``mask``.
            mask: soft mask ``(B|1, 1, *spatial)`` in [0, 1], 1 = generated; outside it the sample is replaced by
                the known image at the current level before every model call (RePaint / PIE re-injection).
            paste_known: also replace the region outside ``mask`` by the clean known image at the end.
            generator: ``torch.Generator`` for all noise drawn here.

        Returns:
            ``(B, C, *spatial)`` clean sample.
        """
        model = self.prepare_model(model)
        lv = list(levels) if levels is not None else self.levels(strength=strength, t_start=t_start)
        if (known is None) != (mask is None):
            raise ValueError("`known` and `mask` go together: give both (known-region rule) or neither.")
        cond, null = self.prepare_conditions(model, condition, x, null_condition, guidance_scale)
        model.check_denoiser_input(x, cond)
        known_at = self._known_fn(known, generator) if known is not None else None
        show = self.progress if progress is None else progress
        pairs = list(zip(lv[:-1], lv[1:]))
        with inference_autocast(self.precision, x.device):
            for t, t_prev in tqdm(pairs, desc=desc, disable=not show or not pairs, leave=False):
                if known_at is not None:
                    x = mask * x + (1.0 - mask) * known_at(t)
                out = self.model_output(model, x, t, cond, null, guidance_scale)
                x = self.step(out, x, t, t_prev, generator)
        if known_at is not None and paste_known:
            x = mask * x + (1.0 - mask) * known_at(lv[-1])
        return x

    def _known_fn(self, known: KnownRegion, generator: torch.Generator | None) -> Callable[[int], torch.Tensor]:
        if callable(known):
            return known
        return lambda level: self.add_noise(known, level, generator)

    def edit(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        *,
        strength: float = 0.5,
        t_start: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **sample_kwargs: Any,
    ) -> torch.Tensor:
        """SDEdit: noise ``x0`` ``(B, C, *spatial)`` to the start level, then ``sample`` (same keyword arguments)."""
        levels = self.levels(strength=strength, t_start=t_start)
        x = self.add_noise(x0, levels[0], generator, noise)
        return self.sample(model, x, levels=levels, generator=generator, **sample_kwargs)

    def generate(
        self,
        model: nn.Module,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        **sample_kwargs: Any,
    ) -> torch.Tensor:
        """Sample from pure noise of ``shape`` ``(B, C, *spatial)`` (in the model's working space)."""
        if generator is not None and device is None:
            device = generator.device
        x = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return self.sample(model, x, levels=self.levels(strength=1.0), generator=generator, **sample_kwargs)

    @torch.no_grad()
    def invert(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        *,
        strength: float = 1.0,
        t_start: int | None = None,
        levels: Sequence[int] | None = None,
        condition: Any = None,
        null_condition: Any = None,
        guidance_scale: float = 1.0,
        refine_steps: int = 0,
        return_trajectory: bool = False,
        progress: bool | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """DDIM inversion: map clean ``x0`` ``(B, C, *spatial)`` deterministically to the start level.

        Runs the deterministic DDIM rule along the same levels as ``sample`` in reverse, so ``sample`` with
        ``eta = 0`` on the result approximately returns ``x0`` (first-order error in the step size).
        ``refine_steps > 0`` solves each step's implicit equation by fixed-point iteration (one extra model call
        each): the model is evaluated at the noisier level, exactly where ``sample`` will evaluate it, so sampling
        retraces the inversion to numerical precision when the iteration converges. With ``return_trajectory``
        also returns ``{level: x_level}`` for every visited level (usable as ``known`` in ``sample``).
        """
        model = self.prepare_model(model)
        if int(refine_steps) != refine_steps or refine_steps < 0:
            raise ValueError(f"`refine_steps` must be an integer >= 0, got {refine_steps!r}.")
        lv = list(levels) if levels is not None else self.levels(strength=strength, t_start=t_start)
        cond, null = self.prepare_conditions(model, condition, x0, null_condition, guidance_scale)
        model.check_denoiser_input(x0, cond)
        sch = self.schedule
        x = x0
        traj = {lv[-1]: x0}
        show = self.progress if progress is None else progress
        pairs = list(zip(lv[::-1][:-1], lv[::-1][1:]))
        for t, t_next in tqdm(pairs, desc="inverting", disable=not show or not pairs, leave=False):
            t_eval = sch.model_level(t)
            out = self.model_output(model, x, t_eval, cond, null, guidance_scale)
            x0_hat, eps = sch.split(out, x, t_eval)
            a_n, s_n = sch.alpha_sigma(t_next)
            x_next = ddim_update(x0_hat, eps, a_n, s_n)  # the deterministic DDIM rule, toward the noisier level
            a_c, s_c = sch.alpha_sigma(t)
            for _ in range(refine_steps):
                out = self.model_output(model, x_next, t_next, cond, null, guidance_scale)
                _, eps = sch.split(out, x_next, t_next)
                x_next = ddim_update((x - s_c * eps) / a_c, eps, a_n, s_n)  # the x_next whose DDIM step lands on x
            x = x_next
            traj[t_next] = x
        return (x, traj) if return_trajectory else x
