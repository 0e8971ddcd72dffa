"""VAE-GAN training of a MONAI ``AutoencoderKL`` as a MONAI/ignite engine.

Generator loss: ``L1 + kl_weight * KL + spectral_weight * Jukebox(FFT) + perceptual_weight * P + adv_weight * adv``;
the patch discriminator trains with a least-squares adversarial loss after ``adv_start_epoch``. The perceptual term
only runs with a feature network the user gives by path (TorchScript); nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.inferers import Inferer, SimpleInferer
from monai.losses import JukeboxLoss, PatchAdversarialLoss
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.optim import Optimizer

__all__ = [
    "AutoencoderKLTrainer",
    "ReconstructionInferer",
    "ScriptedPerceptualLoss",
    "kl_divergence",
    "reconstruction_prepare_batch",
]


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels, averaged over the batch ``(B, C, *spatial)``."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


class ScriptedPerceptualLoss(nn.Module):
    """L1 distance between features of a user-supplied TorchScript network (loaded from a local path).

    The network maps ``(B, C, *spatial)`` to a feature tensor or a list of them. Its weights are frozen.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"perceptual network not found: {path} (give a local TorchScript file; nothing is downloaded)")
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fp, ft = self.net(pred), self.net(target)
        fp = fp if isinstance(fp, (list, tuple)) else [fp]
        ft = ft if isinstance(ft, (list, tuple)) else [ft]
        return sum(torch.mean(torch.abs(a - b)) for a, b in zip(fp, ft)) / len(fp)


class ReconstructionInferer(Inferer):
    """``inferer(images, autoencoder)`` -> ``decode(z_mu)``: the deterministic reconstruction the LDM relies on.

    (MONAI's ``AutoencoderKL.forward`` samples ``z`` even in eval mode, which would add noise to validation.)
    """

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        net = network.module if hasattr(network, "module") else network
        if hasattr(net, "encode") and hasattr(net, "decode"):
            out = net.encode(inputs)
            return net.decode(out[0] if isinstance(out, (tuple, list)) else out)
        out = network(inputs, *args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


class AutoencoderKLTrainer(Trainer):
    """Train ``AutoencoderKL`` (+ optional ``PatchDiscriminator``) with MONAI's engine machinery.

    Handlers, metrics, TensorBoard and checkpointing attach as for any MONAI trainer. ``engine.state.output`` holds
    ``image``, ``pred`` (reconstruction), ``loss`` (generator), and the loss terms ``l1``, ``kl``, ``spectral``,
    ``adv_g``, ``adv_d`` (floats).

    Args:
        autoencoder: ``AutoencoderKL`` (possibly DDP-wrapped); called as ``autoencoder(x) -> (recon, mu, sigma)``.
        g_optimizer: optimiser of the autoencoder.
        discriminator, d_optimizer: optional ``PatchDiscriminator`` and its optimiser.
        kl_weight, spectral_weight, adv_weight, perceptual_weight: loss weights.
        adv_start_epoch: epochs of pure reconstruction before the adversarial terms switch on.
        perceptual_network_path: local TorchScript feature network for the perceptual term (off when ``None``).
        image_key: key of the image in the batch dict.
        inferer: runs the forward, ``inferer(images, autoencoder) -> (recon, z_mu, z_sigma)``; default
            ``SimpleInferer`` (the bundles' ``train#inferer``).
        other args: as ``monai.engines.Trainer``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        autoencoder: nn.Module,
        g_optimizer: Optimizer,
        discriminator: nn.Module | None = None,
        d_optimizer: Optimizer | None = None,
        kl_weight: float = 1e-6,
        spectral_weight: float = 1.0,
        adv_weight: float = 0.01,
        perceptual_weight: float = 0.0,
        adv_start_epoch: int = 1,
        perceptual_network_path: str | None = None,
        image_key: str = "image",
        inferer: Inferer | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        decollate: bool = False,
    ) -> None:
        if (discriminator is None) != (d_optimizer is None):
            raise ValueError("`discriminator` and `d_optimizer` go together: give both or neither.")
        if perceptual_weight > 0 and perceptual_network_path is None:
            raise ValueError("`perceptual_weight` > 0 needs `perceptual_network_path` (a local TorchScript file).")
        super().__init__(
            device=device, max_epochs=max_epochs, data_loader=train_data_loader, epoch_length=epoch_length,
            non_blocking=non_blocking, iteration_update=iteration_update, postprocessing=postprocessing,
            key_metric=key_train_metric, additional_metrics=additional_metrics, metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers, amp=amp, decollate=decollate,
        )
        self.autoencoder = autoencoder
        self.g_optimizer = g_optimizer
        self.discriminator = discriminator
        self.d_optimizer = d_optimizer
        self.kl_weight, self.spectral_weight = float(kl_weight), float(spectral_weight)
        self.adv_weight, self.perceptual_weight = float(adv_weight), float(perceptual_weight)
        self.adv_start_epoch = int(adv_start_epoch)
        self.image_key = image_key
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.spectral_loss: JukeboxLoss | None = None
        self.perceptual_loss = ScriptedPerceptualLoss(perceptual_network_path).to(device) if perceptual_network_path else None

    def _images(self, batchdata: Any) -> torch.Tensor:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x = batchdata[self.image_key] if isinstance(batchdata, dict) else batchdata[0]
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.to(self.state.device, non_blocking=self.non_blocking)

    def _iteration(self, engine: AutoencoderKLTrainer, batchdata: Any) -> dict[str, Any]:  # type: ignore[override]
        images = engine._images(batchdata)
        if engine.spectral_loss is None:
            engine.spectral_loss = JukeboxLoss(spatial_dims=images.ndim - 2)
        use_adv = engine.discriminator is not None and engine.state.epoch > engine.adv_start_epoch
        engine.autoencoder.train()
        engine.g_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=images.device.type, enabled=engine.amp):
            recon, z_mu, z_sigma = engine.inferer(images, engine.autoencoder)
            l1 = torch.mean(torch.abs(recon.float() - images.float()))
            kl = kl_divergence(z_mu.float(), z_sigma.float())
            spectral = engine.spectral_loss(recon.float(), images.float()) if engine.spectral_weight > 0 else l1 * 0
            g_loss = l1 + engine.kl_weight * kl + engine.spectral_weight * spectral
            if engine.perceptual_loss is not None:
                g_loss = g_loss + engine.perceptual_weight * engine.perceptual_loss(recon.float(), images.float())
            adv_g = torch.zeros((), device=images.device)
            if use_adv:
                logits_fake = engine.discriminator(recon.contiguous().float())[-1]
                adv_g = engine.adv_loss(logits_fake, target_is_real=True, for_discriminator=False)
                g_loss = g_loss + engine.adv_weight * adv_g
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        g_loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.g_optimizer.step()

        adv_d = torch.zeros((), device=images.device)
        if use_adv:
            engine.discriminator.train()
            engine.d_optimizer.zero_grad(set_to_none=True)
            logits_fake = engine.discriminator(recon.contiguous().detach().float())[-1]
            logits_real = engine.discriminator(images.contiguous().float())[-1]
            adv_d = 0.5 * (engine.adv_loss(logits_fake, target_is_real=False, for_discriminator=True)
                           + engine.adv_loss(logits_real, target_is_real=True, for_discriminator=True))
            (engine.adv_weight * adv_d).backward()
            engine.d_optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {
            Keys.IMAGE: images, Keys.PRED: recon.detach(), Keys.LOSS: g_loss.detach(), "l1": float(l1), "kl": float(kl),
            "spectral": float(spectral), "adv_g": float(adv_g), "adv_d": float(adv_d),
        }


def reconstruction_prepare_batch(batchdata: dict, device: str | torch.device | None = None,
                                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, image)``: the target of a reconstruction evaluator is its input."""
    x = batchdata["image"]
    x = (x.as_tensor() if hasattr(x, "as_tensor") else x).to(device, non_blocking=non_blocking)
    return x, x
