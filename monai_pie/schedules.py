"""Noise schedules as ``x_t = alpha(t) * x_0 + sigma(t) * eps``, explicit timestep levels, and training targets.

Shared by the sampler core (``inferers``) and the training engines (``engines``), so neither reaches into the other.

MONAI's schedulers are used for their tables; the sampler core never calls their ``step``: MONAI 1.6's
``DDIMScheduler.step`` recomputes the previous timestep as ``t - T // n``, which disagrees with the ``linspace``
timesteps of its own ``set_timesteps`` at small ``n``. Here every update gets its explicit ``(t, t_prev)`` pair.

Two families share one form:

* variance preserving (DDPM/DDIM tables): ``alpha = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)``; the clean level
  is ``t = -1`` (``abar = 1``), the noisiest ``T - 1``.
* rectified flow (MONAI ``RFlowScheduler``): ``alpha = 1 - t / T``, ``sigma = t / T``; clean at ``t = 0``, pure
  noise at ``t = T``. Its velocity is MONAI's ``v = x_0 - eps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["NoiseSchedule", "PREDICTION_TYPES", "sample_training_timesteps", "training_target"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class NoiseSchedule:
    """Marginal coefficients of a diffusion process and how to read a model's output.

    Args:
        kind: ``"vp"`` (DDPM/DDIM tables) or ``"flow"`` (rectified flow).
        num_train_timesteps: ``T``.
        alphas_cumprod: ``(T,)`` table for ``"vp"``; unused for ``"flow"``.
        prediction_type: what the model outputs: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``
            (for ``"flow"``: the velocity ``x_0 - eps``).
    """

    kind: str
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor | None = None
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.kind not in ("vp", "flow"):
            raise ValueError(f"`kind` must be 'vp' or 'flow', got {self.kind!r}.")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}.")
        if self.kind == "vp":
            if self.alphas_cumprod is None or self.alphas_cumprod.numel() != self.num_train_timesteps:
                raise ValueError("a 'vp' schedule needs `alphas_cumprod` with `num_train_timesteps` entries.")
            self.alphas_cumprod = self.alphas_cumprod.detach().double().cpu()

    @classmethod
    def from_scheduler(cls, scheduler: object, prediction_type: str | None = None) -> NoiseSchedule:
        """Read the schedule of a MONAI scheduler (``DDPMScheduler``, ``DDIMScheduler``, ``PNDMScheduler``,
        ``RFlowScheduler``) or of any object with ``alphas_cumprod`` and ``num_train_timesteps``."""
        from monai.networks.schedulers import RFlowScheduler

        if isinstance(scheduler, NoiseSchedule):
            return scheduler if prediction_type is None else cls(
                scheduler.kind, scheduler.num_train_timesteps, scheduler.alphas_cumprod, prediction_type
            )
        if not hasattr(scheduler, "num_train_timesteps"):
            raise TypeError(f"cannot read a noise schedule from {type(scheduler).__name__}: no `num_train_timesteps`.")
        num_t = int(scheduler.num_train_timesteps)
        if isinstance(scheduler, RFlowScheduler):
            return cls("flow", num_t, None, prediction_type or "v_prediction")
        acp = getattr(scheduler, "alphas_cumprod", None)
        if acp is None:
            raise TypeError(f"cannot read a noise schedule from {type(scheduler).__name__}: no `alphas_cumprod`.")
        ptype = prediction_type or str(getattr(scheduler, "prediction_type", "epsilon"))
        return cls("vp", num_t, torch.as_tensor(acp), ptype)

    # ------------------------------------------------------------------ levels
    @property
    def clean_level(self) -> int:
        """The level of clean data (``alpha = 1``, ``sigma = 0``)."""
        return -1 if self.kind == "vp" else 0

    @property
    def max_level(self) -> int:
        """The noisiest level the model was trained on."""
        return self.num_train_timesteps - 1 if self.kind == "vp" else self.num_train_timesteps

    def strength_to_level(self, strength: float) -> int:
        """``strength`` in [0, 1] -> a level: 0 is clean, 1 the noisiest trained level."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"`strength` must be in [0, 1], got {strength}.")
        return int(round(self.clean_level + strength * (self.max_level - self.clean_level)))

    def noise_to_signal(self, level: int | float) -> float:
        """``sigma / alpha`` at ``level`` (``inf`` at pure noise): what a level means whatever the schedule."""
        a, s = self.alpha_sigma(level)
        return s / a if a > 0 else math.inf

    def matching_strength(self, strength: float, reference: NoiseSchedule) -> float:
        """The strength on this schedule whose noise-to-signal ratio equals ``reference``'s at ``strength``.

        A strength is a share of the timesteps, and equal shares of different schedules are different noise levels
        (0.3 of the brain bundles' DDPM tables is 0.55 of a rectified flow), so edit settings tuned on one schedule
        are carried to another through this.
        """
        target = reference.noise_to_signal(reference.strength_to_level(strength))
        lo, hi = self.clean_level, self.max_level
        ratios = torch.tensor([self.noise_to_signal(v) for v in range(lo, hi + 1)], dtype=torch.float64)
        level = lo + int(torch.argmin((ratios - target).abs()))
        return (level - lo) / (hi - lo)

    def levels(self, num_inference_steps: int, t_start: int | None = None, strength: float = 1.0) -> list[int]:
        """Levels ``[t_start, ..., clean]`` visited by a sampler; consecutive entries are the ``(t, t_prev)`` pairs.

        ``num_inference_steps`` is the step count of a full run (``strength = 1``); a partial run from ``t_start``
        takes a proportional share of it (at least one step), like diffusers' img2img: 50 steps at strength 0.5
        is 25 steps from level ``T/2``. Returns ``[clean]`` (no step) when ``t_start`` is the clean level.
        """
        if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        lo, hi = self.clean_level, self.max_level
        start = self.strength_to_level(strength) if t_start is None else int(t_start)
        if not lo <= start <= hi:
            raise ValueError(f"`t_start` must be in [{lo}, {hi}] for this schedule, got {t_start}.")
        span = start - lo
        if span == 0:
            return [lo]
        steps = max(1, round(num_inference_steps * span / (hi - lo)))
        steps = min(steps, span)  # never more steps than distinct integer levels
        grid = torch.linspace(float(start), float(lo), steps + 1, dtype=torch.float64).round().long().tolist()
        return [int(v) for v in grid]

    # ------------------------------------------------------------------ coefficients
    def alpha_sigma(self, level: int | float) -> tuple[float, float]:
        """``(alpha, sigma)`` of the marginal at ``level``."""
        if self.kind == "flow":
            s = float(level) / self.num_train_timesteps
            return 1.0 - s, s
        lvl = int(level)
        if lvl < -1 or lvl >= self.num_train_timesteps:
            raise ValueError(f"level {level} is outside [-1, {self.num_train_timesteps - 1}].")
        abar = 1.0 if lvl == -1 else float(self.alphas_cumprod[lvl])
        return math.sqrt(abar), math.sqrt(max(1.0 - abar, 0.0))

    def model_level(self, level: int | float) -> int | float:
        """The timestep at which the denoiser is evaluated for a sample at ``level`` (``-1`` is evaluated at 0)."""
        return max(level, 0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, level: int | float) -> torch.Tensor:
        """``alpha(level) * x0 + sigma(level) * noise``."""
        a, s = self.alpha_sigma(level)
        return a * x0 + s * noise

    def split(self, model_output: torch.Tensor, x_t: torch.Tensor, level: int | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output at ``level`` -> ``(x0_hat, eps_hat)``, both shaped like ``x_t``."""
        a, s = self.alpha_sigma(level)
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (x_t - s * eps) / max(a, 1e-12)
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (x_t - a * x0) / max(s, 1e-12)
        elif self.kind == "vp":  # v = alpha * eps - sigma * x0
            x0 = a * x_t - s * model_output
            eps = a * model_output + s * x_t
        else:  # flow velocity v = x0 - eps with alpha + sigma = 1
            x0 = x_t + s * model_output
            eps = x_t - a * model_output
        return x0, eps


def sample_training_timesteps(scheduler: object, x0: torch.Tensor) -> torch.Tensor:
    """Training timesteps ``(B,)`` for a batch ``x0`` ``(B, ...)``: uniform over ``[0, T)`` for DDPM/DDIM tables,
    the scheduler's own sampler for rectified flow (MONAI's ``RFlowScheduler.sample_timesteps``)."""
    schedule = NoiseSchedule.from_scheduler(scheduler)
    if schedule.kind == "flow" and hasattr(scheduler, "sample_timesteps"):
        return scheduler.sample_timesteps(x0).to(x0.device)  # type: ignore[attr-defined]
    return torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), device=x0.device).long()


def training_target(scheduler: object, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    prediction_type: str | None = None) -> torch.Tensor:
    """What the denoiser learns to output for ``x_t = add_noise(x0, noise, timesteps)``.

    Args:
        scheduler: the MONAI scheduler whose tables noise the batch.
        x0: clean samples ``(B, C, *spatial)``.
        noise: the noise ``(B, C, *spatial)``.
        timesteps: ``(B,)`` training timesteps.
        prediction_type: override of the scheduler's.

    Returns:
        ``noise`` (epsilon), ``x0`` (sample), the velocity ``alpha * eps - sigma * x0`` from the scheduler's own
        tables (v-prediction), or ``x0 - noise`` (rectified flow).
    """
    schedule = NoiseSchedule.from_scheduler(scheduler, prediction_type)
    if schedule.prediction_type == "epsilon":
        return noise
    if schedule.prediction_type == "sample":
        return x0
    if schedule.kind == "flow":
        return x0 - noise
    if hasattr(scheduler, "get_velocity"):  # MONAI's own tables, so training matches its add_noise bit for bit
        return scheduler.get_velocity(x0, noise, timesteps)  # type: ignore[attr-defined]
    ab = schedule.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[timesteps.long()]
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return ab.sqrt().reshape(shape) * noise - (1 - ab).sqrt().reshape(shape) * x0

