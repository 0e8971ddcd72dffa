"""PIE, progressive image editing (Liang et al., arXiv 2309.11745), as a MONAI ``Inferer``.

Per round ``n = 1..N`` (latent space throughout; only returned frames are decoded)::

    z_K   = noise(z_{n-1}, K)                  # stochastic forward noise, or DDIM inversion
    z     = denoise z_K from K to 0 with guidance, re-injecting the ORIGINAL z* outside the ROI at every step
    B     = blend_in * M + blend_out * (1 - M) # per-voxel blend weight on the latent grid
    z_n   = anchor + B * (z - anchor)          # anchor = z* ("original", PIE) or z_{n-1} ("previous")

With ``n_restarts > 1`` the denoised latents of several noise draws are averaged before blending (BrLP's latent
average stabilisation) and their per-voxel standard deviation is returned as an uncertainty map.

``edit_mode="counterfactual"`` (beyond PIE) brings the input to level K once and edits by a difference of
reconstructions from that same point::

    z_K^r = DDIM-invert z* to level K under the SOURCE condition (noise_mode="ddim_inversion"), or
            noise z* to level K with draw r = 1..R (noise_mode="stochastic")
    z_src = denoise z_K^r under the source condition          # the model's reconstruction of the input
    c_n   = lerp(source, target, n / N)                       # covariates interpolated, or embeddings
    z_n   = z* + M * mean_r (denoise z_K^r under c_n - z_src) # same latent, same steps: only the condition differs

A target equal to the source is the identity by construction (every frame is the input), whatever the
autoencoder's or the inversion's error; frame ``n`` is the counterfactual at ``n / N`` of the way, so intermediate
frames are a dose-response, not a repeated drift. The difference of one pair carries the denoiser's
start-dependent error; averaging ``R = n_restarts`` pairs (each pair shares its noise) keeps the part that the
condition explains, and their spread is returned as the uncertainty.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from torch import nn
from tqdm.auto import tqdm

from ..conditioning import DiffusionCondition
from ..networks import DiffusionModel
from ..utils import (
    check_finite,
    check_in_range,
    check_mask,
    check_positive_int,
    round_rows,
)
from .sampler import DiffusionSampler, make_generator

__all__ = ["MAX_ROUNDS", "ProgressionInferer", "ProgressionResult", "resize_mask"]

ANCHORS = ("original", "previous")
#: an upper bound on rounds, far above PIE's 10-20: a mistyped 10000 fails at once instead of running for days
MAX_ROUNDS = 200
#: per-round statistics of a result, ``(N, B)`` each
ROUND_STATISTICS = ("change_norm", "change_inside", "change_outside", "drift_inside", "drift_outside")
NOISE_MODES = ("stochastic", "ddim_inversion")
DECODE_MODES = ("residual", "direct")
EDIT_MODES = ("pie", "counterfactual")


def resize_mask(mask: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """Resize a soft mask ``(B, 1, *spatial)`` to ``spatial_shape`` by area averaging (stays in [0, 1])."""
    if tuple(mask.shape[2:]) == tuple(spatial_shape):
        return mask
    return F.adaptive_avg_pool3d(mask, spatial_shape) if mask.ndim == 5 else F.adaptive_avg_pool2d(mask, spatial_shape)


def with_own_scan(model: Any, condition: Any, z_star: torch.Tensor) -> Any:
    """A raw covariate condition with the input's own latent ``z_star`` added under the conditioner's ``scan_key``,
    for a scan-conditioned model (``ScanCovariateConditioner``); any other condition is returned as it is."""
    key = getattr(model, "scan_key", None)
    if key is None or not isinstance(condition, Mapping) or key in condition:
        return condition
    return {**condition, key: z_star}


def _interpolate_condition(model: DiffusionModel, source: Any, target: Any, src: DiffusionCondition,
                           tgt: DiffusionCondition, weight: float, like: torch.Tensor) -> DiffusionCondition:
    """The condition ``weight`` of the way from source to target: raw covariates (mappings with the same keys) are
    interpolated before the conditioner, so an intermediate frame is the model's image at an intermediate stage;
    other conditions (text embeddings) are interpolated after it."""
    if weight >= 1.0:
        return tgt
    if isinstance(source, Mapping) and isinstance(target, Mapping) and set(source) == set(target):
        as_row = lambda v: torch.as_tensor(v, dtype=torch.float32).reshape(-1).cpu()
        # an image-valued entry (the scan of a scan-conditioned model) is the same on both sides: kept, not lerped
        raw = {k: source[k] if torch.is_tensor(source[k]) and source[k].ndim >= 3 else
               torch.lerp(as_row(source[k]), as_row(target[k]), float(weight)) for k in source}
        cond, _ = DiffusionSampler.prepare_conditions(model, raw, like)
        return cond
    return src.lerp(tgt, weight)


def _weighted_mean_abs(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``|delta|`` ``(B, C, *sp)`` weighted by ``weight`` ``(B|1, 1, *sp)``; NaN if no weight."""
    w = weight.expand(delta.shape[0], delta.shape[1], *delta.shape[2:])
    num = (delta.abs() * w).flatten(1).sum(1)
    den = w.flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))


@dataclass
class ProgressionResult:
    """What ``ProgressionInferer`` returns. ``N`` rounds, batch ``B``.

    Attributes:
        frames: ``(N+1, B, C, *spatial)``; frame 0 is the input itself.
        latents: ``(N+1, B, C_lat, *latent_spatial)``; ``latents[0]`` is the encoded input ``z*``.
        change_norm: ``(N, B)`` L2 norm of ``z_n - z_{n-1}`` (decays geometrically when PIE converges).
        change_inside, change_outside: ``(N, B)`` mean ``|z_n - z_{n-1}|`` inside / outside the ROI (NaN if empty).
        drift_inside, drift_outside: ``(N, B)`` mean ``|z_n - z*|`` inside / outside the ROI.
        roi_mask: ``(B|1, 1, *spatial)`` ROI on the image grid (ones when none was given).
        uncertainty: ``(N, B, 1, *spatial)`` restart spread on the image grid (``None`` when ``n_restarts == 1``).
        latent_uncertainty: ``(N, B, C_lat, *latent_spatial)`` per-voxel std of the restarts, or ``None``.
        params: the inferer's parameters, for reports.
        seconds: wall time of the call.
    """

    frames: torch.Tensor
    latents: torch.Tensor
    change_norm: torch.Tensor
    change_inside: torch.Tensor
    change_outside: torch.Tensor
    drift_inside: torch.Tensor
    drift_outside: torch.Tensor
    roi_mask: torch.Tensor
    uncertainty: torch.Tensor | None = None
    latent_uncertainty: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def num_rounds(self) -> int:
        return int(self.change_norm.shape[0])

    def _stats(self) -> dict[str, torch.Tensor]:
        stats = {k: getattr(self, k) for k in ROUND_STATISTICS}
        if self.latent_uncertainty is not None:
            stats["mean_restart_std"] = self.latent_uncertainty.flatten(2).mean(2)
        return stats

    def statistics(self) -> list[dict[str, Any]]:
        """Per-round statistics as JSON-serialisable dicts (one per round, lists over the batch)."""
        return round_rows(self._stats())

    def batch_first(self) -> dict[str, torch.Tensor]:
        """The result as batch-first tensors, so MONAI's ``decollate_batch`` splits it into one dict per image:
        ``frames`` ``(B, N+1, C, *spatial)``, ``latents`` ``(B, N+1, C_lat, *lat)``, each round statistic ``(B, N)``,
        ``roi_mask`` ``(B, 1, *spatial)``, ``uncertainty`` ``(B, N, 1, *spatial)`` when there are restarts, and
        ``seconds_per_round`` ``(B,)`` (the call's wall time per round)."""
        batch = self.frames.shape[1]
        out = {"frames": self.frames.transpose(0, 1), "latents": self.latents.transpose(0, 1),
               "roi_mask": self.roi_mask.expand(batch, *self.roi_mask.shape[1:]),
               "seconds_per_round": torch.full((batch,), self.seconds / max(self.num_rounds, 1), dtype=torch.float64)}
        out.update({k: v.transpose(0, 1) for k, v in self._stats().items()})
        if self.uncertainty is not None:
            out["uncertainty"] = self.uncertainty.transpose(0, 1)
        return out


def check_image_batch(inputs: torch.Tensor, model: Any) -> torch.Tensor:
    """``inputs`` as a plain float tensor ``(B, C, H, W[, D])``, checked (finite, the model's channels and sizes);
    the input check of every inferer that edits or maps an image."""
    if not torch.is_tensor(inputs):
        raise TypeError(f"`inputs` must be a tensor (B, C, H, W[, D]), got {type(inputs).__name__}.")
    x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
    if x.ndim not in (4, 5):
        raise ValueError(f"`inputs` must have shape (B, C, H, W) or (B, C, H, W, D), got {tuple(x.shape)}.")
    check_finite(x, "inputs")
    model.check_image(x, "inputs")
    return x if x.is_floating_point() else x.float()


class ProgressionInferer(Inferer):
    """Simulate progression toward a condition as a sequence of frames (PIE), for 2D/3D, pixel or latent models.

    Args:
        scheduler: MONAI scheduler whose tables the model was trained with (DDPM/DDIM/RFlow).
        num_rounds: number of editing rounds ``N`` (frames returned: ``N + 1``).
        strength: noise level of each round as a fraction of the schedule (PIE: 0.5); ignored if ``t_start`` is set.
        t_start: explicit start level instead of ``strength``.
        num_inference_steps: steps of a full-strength run; a round takes ``strength`` of them (50 -> 25 at 0.5).
        guidance_scale: classifier-free guidance weight (PIE code: 7.5); 1 = conditional model alone.
        blend_in, blend_out: per-round blend weight inside / outside the ROI (PIE: 0.75 / 0.01).
        anchor: ``"original"`` (PIE: pull back toward ``z*``) or ``"previous"`` (toward ``z_{n-1}``).
        reinject_background: replace the region outside the ROI by the re-noised original at every step.
        noise_mode: ``"stochastic"`` forward noising (PIE) or ``"ddim_inversion"`` (deterministic, edit-friendly).
        n_restarts: denoise this many noise draws per round (batched) and average them; the std is returned.
        method, eta, prediction_type, clip_sample: passed to the ``DiffusionSampler``.
        decode: ``"residual"`` returns ``x0 + D(z_n) - D(z*)`` so autoencoder reconstruction error never shows up as a
            change (strength 0 returns the input exactly); ``"direct"`` returns ``D(z_n)``. Same for pixel models.
        composite_background: paste the input's pixels outside the ROI into every frame (soft mask on the image grid).
        device: where the result's tensors are put (e.g. ``"cpu"`` to keep GPU memory free for the model); default
            the inputs' device. 3D Slicer's bundle runner sets it.
        edit_mode: ``"pie"`` (the paper's rounds) or ``"counterfactual"`` (the input brought to level K once by
            ``noise_mode``, then frames as differences of target- and source-conditioned reconstructions from there,
            averaged over ``n_restarts`` noise draws; needs ``source_condition``; ``blend_*`` and ``anchor`` do not
            apply). See the module docstring.
        progress: progress bars over rounds and steps.
        precision, accelerate, compile_denoiser: passed to the ``DiffusionSampler``: ``"bf16"`` autocasts the denoiser
            (faster on bf16 hardware; error on the shipped brain bundle in docs/performance.md); ``accelerate``
            switches attention to the fused kernel, weights to channels-last and large layers to slabs (same outputs
            to float rounding); ``compile_denoiser`` calls the denoiser through ``torch.compile`` (faster steps after
            a first call that compiles: for long jobs).

    Call ``inferer(inputs, network, condition=..., roi_mask=..., seed=...)`` -> ``ProgressionResult``; see ``__call__``.
    """

    def __init__(
        self,
        scheduler: Any,
        num_rounds: int = 10,
        strength: float = 0.5,
        t_start: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        blend_in: float = 0.75,
        blend_out: float = 0.01,
        anchor: str = "original",
        reinject_background: bool = True,
        noise_mode: str = "stochastic",
        n_restarts: int = 1,
        method: str = "ddim",
        eta: float = 0.0,
        prediction_type: str | None = None,
        clip_sample: tuple[float, float] | None = None,
        decode: str = "residual",
        composite_background: bool = False,
        device: torch.device | str | None = None,
        edit_mode: str = "pie",
        progress: bool = True,
        precision: str = "fp32",
        accelerate: bool = True,
        compile_denoiser: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int(num_rounds, "num_rounds")
        if num_rounds > MAX_ROUNDS:
            raise ValueError(f"`num_rounds` must be at most {MAX_ROUNDS} (PIE uses 10-20), got {num_rounds}.")
        check_in_range(strength, "strength")
        check_in_range(blend_in, "blend_in")
        check_in_range(blend_out, "blend_out")
        check_positive_int(n_restarts, "n_restarts")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale}.")
        for name, value, allowed in (("anchor", anchor, ANCHORS), ("noise_mode", noise_mode, NOISE_MODES),
                                     ("decode", decode, DECODE_MODES), ("edit_mode", edit_mode, EDIT_MODES)):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
        self.sampler = DiffusionSampler(scheduler, num_inference_steps, method, eta, prediction_type, clip_sample, progress,
                                        precision, accelerate, compile_denoiser=compile_denoiser)
        self.levels = self.sampler.levels(strength=strength, t_start=t_start)
        if noise_mode == "ddim_inversion" and n_restarts > 1 and eta == 0 and method == "ddim":
            warnings.warn("n_restarts > 1 with ddim_inversion and eta=0 gives identical restarts; set eta > 0.", stacklevel=2)
        self.num_rounds = int(num_rounds)
        self.strength = float(strength)
        self.t_start = t_start
        self.guidance_scale = float(guidance_scale)
        self.blend_in = float(blend_in)
        self.blend_out = float(blend_out)
        self.anchor = anchor
        self.reinject_background = reinject_background
        self.noise_mode = noise_mode
        self.n_restarts = int(n_restarts)
        self.decode = decode
        self.composite_background = composite_background
        if (edit_mode == "counterfactual" and n_restarts > 1 and noise_mode == "ddim_inversion"
                and (eta == 0 or method != "ddim")):
            raise ValueError("`n_restarts` > 1 with edit_mode='counterfactual' and noise_mode='ddim_inversion' repeats "
                             "one deterministic edit; use noise_mode='stochastic' (a noise draw per restart), or "
                             "n_restarts=1.")
        self.device = None if device is None else torch.device(device)
        self.edit_mode = edit_mode
        self.progress = progress

    def params(self) -> dict[str, Any]:
        return {
            "num_rounds": self.num_rounds, "strength": self.strength, "t_start": self.levels[0],
            "num_steps_per_round": len(self.levels) - 1, "guidance_scale": self.guidance_scale,
            "blend_in": self.blend_in, "blend_out": self.blend_out, "anchor": self.anchor,
            "reinject_background": self.reinject_background, "noise_mode": self.noise_mode,
            "n_restarts": self.n_restarts, "method": self.sampler.method, "eta": self.sampler.eta,
            "decode": self.decode, "composite_background": self.composite_background, "edit_mode": self.edit_mode,
            "precision": self.sampler.precision,
        }

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        condition: Any = None,
        roi_mask: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        null_condition: Any = None,
        source_condition: Any = None,
    ) -> ProgressionResult:
        """Run PIE on ``inputs``.

        Args:
            inputs: images ``(B, C, H, W[, D])``.
            network: a ``LatentDiffusionModel`` or a bare denoiser (``DiffusionModelUNet`` signature, pixel space).
            condition: the target: a context tensor ``(B|1, L, D)``, a dict with ``context``/``class_labels``/
                ``concat``, a ``DiffusionCondition``, or what the model's conditioner takes.
            roi_mask: soft ROI ``(H, W[, D])``, ``(1|B, 1, H, W[, D])`` in [0, 1], 1 = may change; ``None`` = everywhere.
            seed, generator: reproducibility (a generator wins over a seed).
            null_condition: the unconditional counterpart for guidance (default: the model's).
            source_condition: the input's own condition (same form as ``condition``): the condition of DDIM inversion
                (``noise_mode="ddim_inversion"``, default unconditional) and, required, of
                ``edit_mode="counterfactual"``.
        """
        started = time.perf_counter()
        model = self.sampler.prepare_model(network)
        x0 = self._check_inputs(inputs, model)
        gen = generator if generator is not None else make_generator(seed, x0.device)
        sampler, R = self.sampler, self.n_restarts

        z_star = model.encode(x0)
        batch, lat_shape = z_star.shape[0], tuple(z_star.shape[2:])
        base = model.decode(z_star)  # the input's reconstruction: residual decoding, and the round-trip check
        if tuple(base.shape[2:]) != tuple(x0.shape[2:]):
            raise ValueError(f"`inputs` of spatial size {list(x0.shape[2:])} do not round-trip through the "
                             f"autoencoder (they decode to {list(base.shape[2:])}); use sides divisible by its "
                             "downsampling factor, e.g. the bundle's image_size.")
        mask_img = torch.ones((1, 1, *x0.shape[2:]), device=x0.device, dtype=x0.dtype)
        mask_lat = None
        if roi_mask is not None:
            mask_img = check_mask(roi_mask, x0.shape[2:], batch).to(device=x0.device, dtype=x0.dtype)
            if float(mask_img.flatten(1).sum(1).min()) == 0.0:
                raise ValueError("`roi_mask` is empty (all zeros) for at least one image: nothing may change.")
            mask_lat = resize_mask(mask_img, lat_shape)
        weight_lat = mask_lat if mask_lat is not None else torch.ones_like(z_star[:, :1])

        condition, source_condition = (with_own_scan(model, c, z_star) for c in (condition, source_condition))
        cond, null = sampler.prepare_conditions(model, condition, z_star, null_condition, self.guidance_scale)
        model.check_denoiser_input(z_star, cond, name="inputs")
        if self.edit_mode == "counterfactual":
            latents, stds = self._counterfactual(model, z_star, condition, cond, source_condition, null, weight_lat,
                                                 gen)
            result = self._result(model, x0, latents, stds, mask_img, weight_lat, base)
            result.seconds = time.perf_counter() - started
            return result
        cond_r = cond.repeat_interleave(R) if not cond.is_empty else cond
        null_r = null.repeat_interleave(R) if null is not None and not null.is_empty else null
        source_r = self._source_condition(model, cond, source_condition, z_star, R)

        levels = self.levels
        known, mask_r = None, None
        if self.reinject_background and mask_lat is not None:
            mask_r = mask_lat.repeat_interleave(R, 0) if mask_lat.shape[0] > 1 else mask_lat
            known = self._known_region(model, z_star, source_r, R, levels)
        blend = self.blend_in * weight_lat + self.blend_out * (1.0 - weight_lat)

        latents, stds = [z_star], []
        rounds = tqdm(range(self.num_rounds), desc="PIE rounds", disable=not self.progress)
        for _ in rounds:
            z_prev = latents[-1]
            z_rep = z_prev.repeat_interleave(R, 0)
            if self.noise_mode == "stochastic":
                z_k = sampler.add_noise(z_rep, levels[0], gen)
            else:
                z_k = sampler.invert(model, z_rep, levels=levels, condition=source_r, progress=False)
            z_hat = sampler.sample(
                model, z_k, levels=levels, condition=cond_r, null_condition=null_r,
                guidance_scale=self.guidance_scale, known=known, mask=mask_r, paste_known=False, generator=gen,
                progress=self.progress, desc="denoising",
            )
            z_hat = z_hat.reshape(batch, R, *z_hat.shape[1:])
            z_mean = z_hat.mean(1)
            if R > 1:
                stds.append(z_hat.std(1))
            anchor = z_star if self.anchor == "original" else z_prev
            latents.append(anchor + blend * (z_mean - anchor))

        result = self._result(model, x0, latents, stds, mask_img, weight_lat, base)
        result.seconds = time.perf_counter() - started
        return result

    # ------------------------------------------------------------------ counterfactual mode
    def _counterfactual(self, model: DiffusionModel, z_star: torch.Tensor, target: Any, tgt: DiffusionCondition,
                        source: Any, null: DiffusionCondition | None, weight_lat: torch.Tensor,
                        gen: torch.Generator | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Latents ``[z*, z_1, ..., z_N]`` of a counterfactual edit (see the module docstring) and, with restarts, the
        per-frame spread of the restarts' differences; ``target`` is the raw target condition, ``tgt`` the same
        prepared."""
        if source is None:
            raise ValueError("edit_mode='counterfactual' needs `source_condition`: the input's own condition (e.g. its "
                             "age, sex and current stage), so that an edit toward it changes nothing.")
        sampler, levels, R = self.sampler, self.levels, self.n_restarts
        repeat = lambda c: c.repeat_interleave(R) if c is not None and not c.is_empty else c
        src, _ = sampler.prepare_conditions(model, source, z_star)
        src_r, null_r = repeat(src), repeat(null)
        z_rep = z_star.repeat_interleave(R, 0)
        if self.noise_mode == "ddim_inversion":
            z_k = sampler.invert(model, z_rep, levels=levels, condition=src_r, progress=False)
        else:
            z_k = sampler.add_noise(z_rep, levels[0], gen)
        state = gen.get_state() if gen is not None else None

        def reconstruct(cond: DiffusionCondition, desc: str) -> torch.Tensor:
            if gen is not None:  # the same noise for every condition (matters only when eta > 0)
                gen.set_state(state)
            return sampler.sample(model, z_k, levels=levels, condition=cond, null_condition=null_r,
                                  guidance_scale=self.guidance_scale, generator=gen, progress=self.progress, desc=desc)

        z_src = reconstruct(src_r, "source")
        latents, stds = [z_star], []
        for n in tqdm(range(1, self.num_rounds + 1), desc="counterfactual frames", disable=not self.progress):
            cond_n = _interpolate_condition(model, source, target, src, tgt, n / self.num_rounds, z_star)
            diff = (reconstruct(repeat(cond_n), "target") - z_src).reshape(z_star.shape[0], R, *z_star.shape[1:])
            latents.append(z_star + weight_lat * diff.mean(1))
            if R > 1:
                stds.append(diff.std(1))
        return latents, stds

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_inputs(inputs: torch.Tensor, model: Any) -> torch.Tensor:
        return check_image_batch(inputs, model)

    def _source_condition(self, model: DiffusionModel, cond: DiffusionCondition, source: Any, z: torch.Tensor,
                          repeats: int) -> DiffusionCondition:
        """The condition DDIM inversion runs under: ``source``, else the null condition (unconditional)."""
        if source is not None:
            src, _ = self.sampler.prepare_conditions(model, source, z)
        else:
            src = cond if cond.is_empty else model.null_condition(cond)
        return src.repeat_interleave(repeats) if not src.is_empty else src

    def _known_region(self, model: Any, z_star: torch.Tensor, source_r: DiffusionCondition, repeats: int,
                      levels: list[int]) -> Any:
        z_rep = z_star.repeat_interleave(repeats, 0)
        if self.noise_mode == "stochastic":
            return z_rep  # re-noised with fresh noise at every step by the sampler
        # deterministic mode: the original's own DDIM-inversion trajectory, computed once for all rounds
        _, traj = self.sampler.invert(model, z_rep, levels=levels, condition=source_r, return_trajectory=True,
                                      progress=False)
        return lambda level: traj[level]

    def _result(self, model: Any, x0: torch.Tensor, latents: list[torch.Tensor], stds: list[torch.Tensor],
                mask_img: torch.Tensor, weight_lat: torch.Tensor, base: torch.Tensor) -> ProgressionResult:
        z = torch.stack(latents)  # (N+1, B, C_lat, *lat)
        delta = z[1:] - z[:-1]
        drift = z[1:] - z[:1]
        outside = 1.0 - weight_lat
        stat = lambda d, w: torch.stack([_weighted_mean_abs(di, w) for di in d])
        base = base if self.decode == "residual" else None
        frames = [x0]
        # one frame per decode call, shaped like the base decode: equal latents then decode to bit-equal images, so
        # an unchanged latent (a null counterfactual edit) gives exactly the input
        for zn in tqdm(z[1:], desc="decoding", disable=not self.progress, leave=False):
            xn = model.decode(zn)
            if base is not None:
                xn = x0 + (xn - base)
            if self.composite_background:
                xn = mask_img * xn + (1.0 - mask_img) * x0
            frames.append(xn.contiguous())
        unc = lat_unc = None
        if stds:
            lat_unc = torch.stack(stds)
            spread = lat_unc.mean(2, keepdim=True)  # (N, B, 1, *lat)
            mode = "trilinear" if spread.ndim == 6 else "bilinear"
            unc = torch.stack([F.interpolate(s, size=x0.shape[2:], mode=mode, align_corners=False) for s in spread])
        result = ProgressionResult(
            frames=torch.stack(frames),
            latents=z,
            change_norm=delta.flatten(2).norm(dim=2),
            change_inside=stat(delta, weight_lat),
            change_outside=stat(delta, outside),
            drift_inside=stat(drift, weight_lat),
            drift_outside=stat(drift, outside),
            roi_mask=mask_img,
            uncertainty=unc,
            latent_uncertainty=lat_unc,
            params=self.params(),
        )
        if self.device is not None:
            for name, value in vars(result).items():
                if torch.is_tensor(value):
                    setattr(result, name, value.to(self.device))
        return result
