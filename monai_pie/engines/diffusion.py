"""Latent-diffusion training pieces for MONAI's ``SupervisedTrainer``.

``LatentDiffusionPrepareBatch`` encodes images with the frozen autoencoder, draws noise and timesteps, and returns
``(x_t, target, (), {"timesteps", "condition", "drop_mask"})``; with a ``SimpleInferer`` the trainer then calls
``LatentDiffusionModel.forward(x_t, timesteps=..., condition=..., drop_mask=...)``, so the conditioner trains with the
U-Net and DDP works (the forward is what DDP synchronises).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

from ..networks import LatentDiffusionModel
from ..schedules import NoiseSchedule, sample_training_timesteps, training_target

__all__ = ["LatentDiffusionPrepareBatch", "LatentScaleFactor", "collect_condition"]


def _unwrap(module: Any) -> Any:
    return module.module if hasattr(module, "module") and isinstance(module, torch.nn.Module) else module


def collect_condition(batch: dict, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor] | list[str] | None:
    """The raw condition for the conditioner from a collated batch dict (``None`` if no keys).

    Numeric keys give ``{key: (B,) float tensor}`` (covariates), image keys ``{key: (B, C, *spatial)}`` (a structure
    channel); a single key holding strings (a prompt or report column) gives the list of ``B`` strings, for a text
    conditioner.
    """
    if not keys:
        return None
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch lacks condition keys {missing}; it has {sorted(batch)}. Check the datalist.")
    texts = [k for k in keys if isinstance(batch[k], (list, tuple)) and batch[k] and isinstance(batch[k][0], str)]
    if texts:
        if len(keys) != 1:
            raise ValueError(f"a text condition must be the only condition key; got text keys {texts} among {list(keys)}.")
        return [str(t) for t in batch[texts[0]]]
    out = {}
    for k in keys:
        value = batch[k]
        value = value.as_tensor() if hasattr(value, "as_tensor") else value
        t = torch.as_tensor(value, dtype=torch.float32).to(device)
        out[k] = t if t.ndim >= 3 else t.reshape(-1)  # an image condition (B, C, *spatial) stays an image
    return out


class LatentDiffusionPrepareBatch:
    """Batch -> noisy latents, training target and the forward's keyword arguments.

    Args:
        model: the (unwrapped) ``LatentDiffusionModel`` whose autoencoder encodes the images.
        scheduler: MONAI scheduler (``DDPMScheduler``/``DDIMScheduler`` tables, or ``RFlowScheduler``).
        condition_keys: batch keys of the covariates given to the conditioner (in its ``names`` order).
        condition_dropout: probability of replacing a sample's condition by the null condition.
        image_key: key of the image in the batch dict.
        latent_cache_size: keep the latents of up to this many distinct images (least recently used dropped) and
            encode each image once. Exact, because the frozen autoencoder encodes with the posterior mean; images
            are keyed by their content, so random augmentations only cost misses. 0 (default) disables it. With a
            deterministic preprocessing this removes the encoder from every iteration after the first epoch (about
            3x faster for the brain bundle on CPU).
        scan_image_key: for a scan-conditioned model (``ScanCovariateConditioner``), the batch key of the image whose
            latent conditions the denoiser (e.g. ``"source_image"`` of ``longitudinal_pairs``); it is encoded like the
            image (and cached) and passed under the conditioner's ``scan_key``.
    """

    def __init__(self, model: LatentDiffusionModel, scheduler: Any, condition_keys: Sequence[str] = (),
                 condition_dropout: float = 0.1, image_key: str = "image", latent_cache_size: int = 0,
                 scan_image_key: str | None = None) -> None:
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"`condition_dropout` must be in [0, 1), got {condition_dropout}.")
        self.model = _unwrap(model)
        self.scheduler = scheduler
        self.schedule = NoiseSchedule.from_scheduler(scheduler)
        self.condition_keys = list(condition_keys)
        self.condition_dropout = float(condition_dropout)
        self.image_key = image_key
        if int(latent_cache_size) < 0:
            raise ValueError(f"`latent_cache_size` must be >= 0, got {latent_cache_size}.")
        self.latent_cache_size = int(latent_cache_size)
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.scan_image_key = scan_image_key
        self.scan_key = self.model.scan_key
        if scan_image_key is not None and self.scan_key is None:
            raise ValueError(f"`scan_image_key` {scan_image_key!r} is set, but the model's conditioner takes no scan "
                             "(use a ScanCovariateConditioner).")
        if scan_image_key is None and self.scan_key is not None:
            raise ValueError("the model is conditioned on the subject's scan (its conditioner has `scan_key`): set "
                             "`scan_image_key` to the batch key of the source image (e.g. 'source_image').")

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The training target for ``x0`` ``(B, C_lat, *spatial)`` noised with ``noise`` at ``timesteps`` ``(B,)``."""
        return training_target(self.scheduler, x0, noise, timesteps, self.schedule.prediction_type)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, C_lat, *latent_spatial)`` of ``images`` ``(B, C, *spatial)``, from the cache if on."""
        if self.latent_cache_size == 0:
            return self.model.encode(images)
        scale = float(self.model.scale_factor)  # part of the key: the factor is set once training starts
        keys = [(hashlib.blake2b(x.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest(),
                 tuple(x.shape), scale) for x in images]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            z_new = self.model.encode(images[missing])
            for i, z in zip(missing, z_new):
                self._cache[keys[i]] = z.detach().cpu()
        for k in keys:
            self._cache.move_to_end(k)
        out = torch.stack([self._cache[k] for k in keys]).to(images.device)
        while len(self._cache) > self.latent_cache_size:
            self._cache.popitem(last=False)
        return out

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False,
                 **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, Any]]:
        images = batchdata[self.image_key]
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        images = images.to(device, non_blocking=non_blocking)
        z = self.encode(images)
        noise = torch.randn_like(z)
        timesteps = sample_training_timesteps(self.scheduler, z)
        x_t = self.scheduler.add_noise(original_samples=z, noise=noise, timesteps=timesteps)
        target = self.target(z, noise, timesteps)
        cond = collect_condition(batchdata, self.condition_keys, z.device)
        if self.scan_image_key is not None:
            if self.scan_image_key not in batchdata:
                raise KeyError(f"batch lacks the scan image {self.scan_image_key!r}; it has {sorted(batchdata)}. "
                               "Pair the visits first (monai_pie.data.longitudinal_pairs).")
            scan = batchdata[self.scan_image_key]
            scan = (scan.as_tensor() if hasattr(scan, "as_tensor") else scan).to(device, non_blocking=non_blocking)
            cond = {**(cond or {}), self.scan_key: self.encode(scan)}
        fwd: dict[str, Any] = {"timesteps": timesteps}
        if cond is not None:
            fwd["condition"] = cond
            fwd["drop_mask"] = torch.rand(z.shape[0], device=z.device) < self.condition_dropout
        return x_t, target, (), fwd


class LatentScaleFactor:
    """At ``Events.STARTED``, set ``model.scale_factor = 1 / std`` of the latents of the first batches.

    Skipped when the model already carries a computed factor (e.g. after resuming), unless ``force``.
    """

    def __init__(self, model: LatentDiffusionModel, data_loader: Any, num_batches: int = 1, image_key: str = "image",
                 force: bool = False) -> None:
        self.model, self.data_loader = _unwrap(model), data_loader
        self.num_batches, self.image_key, self.force = int(num_batches), image_key, force

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        if not self.force and float(self.model.scale_factor) != 1.0:
            return
        device = self.model.scale_factor.device
        zs = []
        for i, batch in enumerate(self.data_loader):
            if i >= self.num_batches:
                break
            x = batch[self.image_key]
            x = (x.as_tensor() if hasattr(x, "as_tensor") else x).to(device)
            self.model.scale_factor.fill_(1.0)
            zs.append(self.model.encode(x).flatten())
        std = torch.cat(zs).std()
        if not torch.isfinite(std) or std <= 0:
            raise RuntimeError(f"cannot compute the latent scale factor: latent std is {float(std)}.")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(std)
            std = std / torch.distributed.get_world_size()
        self.model.scale_factor.fill_(float(1.0 / std))
        engine.logger.info(f"latent scale factor set to {float(self.model.scale_factor):.4f} (1 / std {float(std):.4f})")
