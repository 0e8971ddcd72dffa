"""Anomaly detection from pseudo-healthy and pseudo-unhealthy reconstructions (TauAD), as a MONAI ``Inferer``.

The image is brought to a start level ``t0`` once (deterministic DDIM inversion, or seeded partial noising), and
from that same point the sampler core reconstructs it twice: under the healthy condition (``x_H``) and under the
unhealthy one (``x_U``). ``L_H = |x - x_H|`` is what a healthy model cannot explain; ``L_U = |x - x_U|`` what an
unhealthy one cannot. Structure present in both classes (off-target binding, anatomy, the autoencoder's error) is
reproduced by both, so it cancels in the complementary map ``relu(L_H - L_U)``, while disease only the unhealthy
model explains remains. The map is restricted to a brain mask and averaged per region of a label map.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.inferers import Inferer

from ..utils.checks import check_in_range, check_mask
from .progression import check_image_batch
from .sampler import DiffusionSampler, make_generator

__all__ = ["ANOMALY_MAPS", "START_MODES", "AnomalyInferer", "AnomalyResult", "anomaly_map", "regional_means"]

#: the anomaly maps (REFERENCE.md, TauAD; measured against each other in docs/validation/tau_pet.md):
#:
#: * ``complementary``: relu(L_H - L_U), TauAD v1's combination of the two loss maps;
#: * ``healthy_excess``: relu(x - x_H) where L_U < L_H (uptake above the healthy reconstruction that the unhealthy
#:   model explains better);
#: * ``supported_difference``: min(relu(x_U - x_H), relu(x - x_H)): what the unhealthy reconstruction adds over the
#:   healthy one, only as far as the image itself exceeds the healthy reconstruction. The difference of the two
#:   reconstructions is free of the image noise and the autoencoder's error that dominate L_H - L_U; the second term
#:   keeps it from marking disease the unhealthy model would add to a scan that has none;
#: * ``difference``: relu(x_U - x_H) alone: where the model puts disease for this anatomy, present or not (a
#:   location prior; scores well per subject and marks subjects without disease too);
#: * ``healthy_residual``: L_H alone (AnoDDPM-style, the generative baseline).
ANOMALY_MAPS: tuple[str, ...] = ("complementary", "healthy_excess", "supported_difference", "difference",
                                 "healthy_residual")
#: how the image reaches the start level: ``ddim_inversion`` (deterministic) or ``partial_noise`` (seeded)
START_MODES: tuple[str, ...] = ("ddim_inversion", "partial_noise")
#: the condition DDIM inversion runs under
INVERSION_CONDITIONS: tuple[str, ...] = ("null", "healthy", "unhealthy")


def anomaly_map(x: torch.Tensor, healthy: torch.Tensor, unhealthy: torch.Tensor, kind: str = "complementary") -> torch.Tensor:
    """The anomaly map of ``x`` from its two reconstructions, all ``(B, C, *spatial)``; returns ``(B, 1, *spatial)``
    (channels averaged). ``kind`` is one of :data:`ANOMALY_MAPS`."""
    if kind not in ANOMALY_MAPS:
        raise ValueError(f"`anomaly_map` must be one of {ANOMALY_MAPS}, got {kind!r}.")
    loss_h, loss_u = (x - healthy).abs(), (x - unhealthy).abs()
    if kind == "complementary":
        out = torch.relu(loss_h - loss_u)
    elif kind == "healthy_excess":
        out = torch.relu(x - healthy) * (loss_u < loss_h)
    elif kind == "supported_difference":
        out = torch.minimum(torch.relu(unhealthy - healthy), torch.relu(x - healthy))
    elif kind == "difference":
        out = torch.relu(unhealthy - healthy)
    else:
        out = loss_h
    return out.mean(1, keepdim=True)


def regional_means(values: torch.Tensor, labels: torch.Tensor, num_regions: int | None = None) -> torch.Tensor:
    """Mean of ``values`` ``(B, 1, *spatial)`` in each region ``1..R`` of an integer label map ``(B|1, 1, *spatial)``
    (0 = background); returns ``(B, R)``, NaN for a region with no voxel."""
    lab = labels.long().expand(values.shape[0], *labels.shape[1:]).flatten(1)
    num = int(lab.max()) if num_regions is None else int(num_regions)
    flat = values.flatten(1).to(torch.float64)
    sums = torch.zeros(values.shape[0], num + 1, dtype=torch.float64, device=values.device)
    counts = torch.zeros_like(sums)
    sums.scatter_add_(1, lab, flat)
    counts.scatter_add_(1, lab, torch.ones_like(flat))
    means = sums / counts
    return means[:, 1:].to(values.dtype)


@dataclass
class AnomalyResult:
    """What :class:`AnomalyInferer` returns; batch ``B``, image channels ``C``.

    Attributes:
        anomaly: ``(B, 1, *spatial)`` the anomaly map (zero outside the mask).
        healthy, unhealthy: ``(B, C, *spatial)`` the pseudo-healthy and pseudo-unhealthy reconstructions.
        loss_healthy, loss_unhealthy: ``(B, 1, *spatial)`` ``|x - x_H|`` and ``|x - x_U|`` (channel mean), masked.
        mask: ``(B|1, 1, *spatial)`` the region the map is restricted to (ones when none was given).
        regional: ``(B, R)`` mean anomaly per region of the label map, or ``None`` without one.
        params: the inferer's settings, for reports.
        seconds: wall time of the call.
    """

    anomaly: torch.Tensor
    healthy: torch.Tensor
    unhealthy: torch.Tensor
    loss_healthy: torch.Tensor
    loss_unhealthy: torch.Tensor
    mask: torch.Tensor
    regional: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def batch_first(self) -> dict[str, torch.Tensor]:
        """Batch-first tensors, so MONAI's ``decollate_batch`` gives one dict per image (the evaluator's prediction)."""
        batch = self.anomaly.shape[0]
        out = {"anomaly": self.anomaly, "healthy": self.healthy, "unhealthy": self.unhealthy,
               "loss_healthy": self.loss_healthy, "loss_unhealthy": self.loss_unhealthy,
               "mask": self.mask.expand(batch, *self.mask.shape[1:]),
               "seconds": torch.full((batch,), self.seconds / max(batch, 1), dtype=torch.float64)}
        if self.regional is not None:
            out["regional"] = self.regional
        return out


class AnomalyInferer(Inferer):
    """Pseudo-healthy / pseudo-unhealthy reconstructions and the anomaly map, on the sampler core; 2D and 3D.

    Args:
        scheduler: the MONAI scheduler the model was trained with.
        num_inference_steps: sampler steps of a full run; a run from ``t0`` takes ``round(t0 * steps)``.
        t0: start level as a share of the noise range (TauAD: 0.3-0.5).
        start: one of :data:`START_MODES`.
        inversion_condition: the condition DDIM inversion runs under (:data:`INVERSION_CONDITIONS`): ``"null"``
            (the unconditional model; needs condition dropout in training), ``"healthy"`` or ``"unhealthy"``.
        anomaly_map: one of :data:`ANOMALY_MAPS`.
        guidance_scale: classifier-free guidance of both reconstructions (1 = the conditional model alone).
        refine_steps: fixed-point refinement of each DDIM inversion step (see ``DiffusionSampler.invert``).
        seed: seed of the partial noise and of stochastic samplers; both reconstructions get the same noise.
        method, eta, prediction_type, clip_sample: passed to the ``DiffusionSampler``.
        progress: progress bars.
        precision, accelerate, compile_denoiser: passed to the ``DiffusionSampler`` (``"bf16"`` denoiser autocast;
            fused attention and channels-last weights, slab-wise large layers; the denoiser through ``torch.compile``,
            for long jobs).
        device: where the result's tensors are put (default the inputs' device); 3D Slicer's bundle runner sets it.

    Call ``inferer(inputs, network, healthy=..., unhealthy=..., mask=None, labels=None)``: ``inputs`` ``(B, C,
    *spatial)`` images; ``healthy`` / ``unhealthy`` raw conditions the network's conditioner takes (e.g. ``{"class_labels":
    tensor([0]), "concat": structure}``); ``mask`` a brain mask; ``labels`` an integer region map for regional scores.
    """

    def __init__(
        self,
        scheduler: Any,
        num_inference_steps: int = 50,
        t0: float = 0.4,
        start: str = "ddim_inversion",
        inversion_condition: str = "null",
        anomaly_map: str = "complementary",
        guidance_scale: float = 1.0,
        refine_steps: int = 0,
        seed: int | None = 0,
        method: str = "ddim",
        eta: float = 0.0,
        prediction_type: str | None = None,
        clip_sample: Sequence[float] | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        accelerate: bool = True,
        compile_denoiser: bool = False,
    ) -> None:
        super().__init__()
        self.device = None if device is None else torch.device(device)
        check_in_range(t0, "t0", 1e-3, 1.0)
        for name, value, allowed in (("start", start, START_MODES), ("anomaly_map", anomaly_map, ANOMALY_MAPS),
                                     ("inversion_condition", inversion_condition, INVERSION_CONDITIONS)):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}.")
        self.sampler = DiffusionSampler(scheduler, num_inference_steps, method, eta, prediction_type, clip_sample,
                                        progress, precision, accelerate, compile_denoiser=compile_denoiser)
        self.t0, self.start, self.inversion_condition = float(t0), start, inversion_condition
        self.anomaly_map, self.guidance_scale, self.refine_steps = anomaly_map, float(guidance_scale), int(refine_steps)
        self.seed = seed

    def params(self) -> dict[str, Any]:
        """The settings, for reports."""
        return {"t0": self.t0, "start": self.start, "inversion_condition": self.inversion_condition,
                "anomaly_map": self.anomaly_map, "guidance_scale": self.guidance_scale,
                "num_inference_steps": self.sampler.num_inference_steps, "start_level": self.sampler.levels(
                    strength=self.t0)[0], "method": self.sampler.method, "eta": self.sampler.eta, "seed": self.seed}

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Any,
        *args: Any,
        healthy: Any = None,
        unhealthy: Any = None,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> AnomalyResult:
        """Reconstruct ``inputs`` both ways and map the anomaly.

        Args:
            inputs: ``(B, C, *spatial)`` images (finite).
            network: a ``LatentDiffusionModel`` or a bare denoiser (pixel space).
            healthy, unhealthy: the two raw conditions (required, distinct).
            mask: ``spatial``, ``(1, *spatial)`` or ``(B|1, 1, *spatial)`` region in [0, 1] (binary: a brain mask);
                the map is zero outside it.
            labels: integer region map of the same shapes (0 = background) for regional mean scores.
            seed: overrides the inferer's seed for this call.
        """
        start_time = time.perf_counter()
        if healthy is None or unhealthy is None:
            raise ValueError("give both conditions: `healthy` and `unhealthy` (e.g. class labels 0 and 1).")
        model = self.sampler.prepare_model(network)
        x = check_image_batch(inputs, model)
        batch, spatial = x.shape[0], tuple(x.shape[2:])
        region = torch.ones((1, 1, *spatial), device=x.device) if mask is None else \
            check_mask(mask, spatial, batch, "mask").to(x.device)
        if float(region.sum()) == 0:
            raise ValueError("`mask` is empty (all zeros): the anomaly map would have no voxel.")
        lab = None if labels is None else self._check_labels(labels, spatial, batch).to(x.device)
        z = model.encode(x)
        levels = self.sampler.levels(strength=self.t0)
        run_seed = self.seed if seed is None else seed
        cond_h, _ = self.sampler.prepare_conditions(model, healthy, z)
        cond_u, _ = self.sampler.prepare_conditions(model, unhealthy, z)
        z_t = self._start(model, z, levels, cond_h, cond_u, run_seed)
        recon = []
        for cond in (healthy, unhealthy):  # from the same point and the same noise stream
            gen = make_generator(run_seed, z.device)
            z0 = self.sampler.sample(model, z_t, levels=levels, condition=cond, guidance_scale=self.guidance_scale,
                                     generator=gen, desc="reconstructing")
            recon.append(model.decode(z0))
        x_h, x_u = recon
        if x_h.shape != x.shape:
            raise ValueError(f"`inputs` of spatial size {list(spatial)} do not round-trip through the autoencoder "
                             f"(they decode to {list(x_h.shape[2:])}); use sides divisible by its downsampling.")
        binary = (region > 0.5).to(x.dtype)
        amap = anomaly_map(x, x_h, x_u, self.anomaly_map) * binary
        loss_h = (x - x_h).abs().mean(1, keepdim=True) * binary
        loss_u = (x - x_u).abs().mean(1, keepdim=True) * binary
        regional = None if lab is None else regional_means(amap, lab * (binary > 0).long(), int(lab.max()))
        if self.device is not None:
            x_h, x_u, amap, loss_h, loss_u, binary = (t.to(self.device) for t in (x_h, x_u, amap, loss_h, loss_u,
                                                                                 binary))
            regional = None if regional is None else regional.to(self.device)
        return AnomalyResult(anomaly=amap, healthy=x_h, unhealthy=x_u, loss_healthy=loss_h, loss_unhealthy=loss_u,
                             mask=binary, regional=regional, params=self.params(),
                             seconds=time.perf_counter() - start_time)

    def _start(self, model: Any, z: torch.Tensor, levels: list[int], cond_h: Any, cond_u: Any,
               seed: int | None) -> torch.Tensor:
        """``z`` at ``levels[0]``: DDIM inversion under the chosen condition, or seeded partial noise."""
        if self.start == "partial_noise":
            return self.sampler.add_noise(z, levels[0], make_generator(seed, z.device))
        if self.inversion_condition == "healthy":
            cond = cond_h
        elif self.inversion_condition == "unhealthy":
            cond = cond_u
        else:
            cond = cond_h if cond_h.is_empty else model.null_condition(cond_h)
        return self.sampler.invert(model, z, levels=levels, condition=cond, refine_steps=self.refine_steps)

    @staticmethod
    def _check_labels(labels: torch.Tensor, spatial: tuple[int, ...], batch: int) -> torch.Tensor:
        lab = labels.as_tensor() if hasattr(labels, "as_tensor") else labels
        if lab.ndim == len(spatial):
            lab = lab[None, None]
        elif lab.ndim == len(spatial) + 1:
            lab = lab[None]
        if lab.ndim != len(spatial) + 2 or tuple(lab.shape[2:]) != spatial or lab.shape[1] != 1 or \
                lab.shape[0] not in (1, batch):
            raise ValueError(f"`labels` of shape {tuple(labels.shape)} do not match the image's spatial shape "
                             f"{spatial}; expected {spatial}, (1, *spatial) or (B|1, 1, *spatial).")
        if lab.is_floating_point() and not torch.equal(lab, lab.round()):
            raise ValueError("`labels` must hold whole numbers (0 = background, 1..R = regions).")
        if float(lab.min()) < 0:
            raise ValueError("`labels` must be >= 0 (0 = background, 1..R = regions).")
        return lab.long()
