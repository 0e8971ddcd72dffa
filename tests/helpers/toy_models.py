"""Tiny models for tests: an exact-score Gaussian denoiser and small MONAI networks."""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from torch import nn

from monai_pie.schedules import NoiseSchedule


class GaussianToyDenoiser(nn.Module):
    """Exact denoiser for data ``x0 ~ N(mean, var)`` element-wise, for any schedule and prediction type.

    The condition chooses the distribution: ``class_labels`` index ``means``/``variances`` (label 0 is used when
    no condition is given), or a ``context`` ``(B, 1, 1)`` gives the mean directly with ``context_var``. ``means``
    may also be mean images ``(K, C, *spatial)``, one per class (a spatial pattern per class). Class label ``K``
    (one past the last) is the equal-weight mixture of the ``K`` classes, element-wise (an unconditional model
    trained with every class: use it as the ``null_class_label``).
    """

    def __init__(self, schedule: NoiseSchedule, means=(0.0,), variances=(1.0,), context_var: float = 1.0):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("means", torch.tensor(means, dtype=torch.float64))
        self.register_buffer("variances", torch.tensor(variances, dtype=torch.float64))
        self.context_var = context_var
        self.calls = 0

    def forward(self, x, timesteps, context=None, class_labels=None):
        self.calls += 1
        a, s = self.schedule.alpha_sigma(int(timesteps[0]))
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        if context is not None:
            mu = context.reshape(x.shape[0], -1)[:, 0].double().reshape(shape)
            var = torch.full_like(mu, self.context_var)
        else:
            idx = torch.zeros(x.shape[0], dtype=torch.long) if class_labels is None else class_labels
            if class_labels is not None and bool((idx == len(self.means)).any()):
                return self._mixture(x, a, s)
            var = self.variances[idx].reshape(shape)
            mu = self.means[idx] if self.means.ndim > 1 else self.means[idx].reshape(shape)
        xd = x.double()
        total = a * a * var + s * s
        eps = s * (xd - a * mu) / total
        x0 = mu + a * var * (xd - a * mu) / total
        return self._output(x0, eps, a, s).to(x.dtype)

    def _mixture(self, x, a, s):
        """Exact posterior mean of the equal-weight mixture of the classes, element-wise."""
        xd = x.double()
        shape = (1,) + (1,) * (x.ndim - 1)
        posts, logw = [], []
        for k in range(len(self.means)):
            mu = self.means[k][None] if self.means.ndim > 1 else self.means[k].reshape(shape)
            var = self.variances[k].reshape(shape)
            total = a * a * var + s * s
            posts.append(mu + a * var * (xd - a * mu) / total)
            logw.append(-0.5 * (xd - a * mu) ** 2 / total - 0.5 * torch.log(total))
        w = torch.softmax(torch.stack(logw), dim=0)
        x0 = (w * torch.stack(posts)).sum(0)
        eps = (xd - a * x0) / max(s, 1e-12)
        return self._output(x0, eps, a, s).to(x.dtype)

    def _output(self, x0, eps, a, s):
        ptype = self.schedule.prediction_type
        if ptype == "epsilon":
            return eps
        if ptype == "sample":
            return x0
        if self.schedule.kind == "vp":
            return a * eps - s * x0
        return x0 - eps


def tiny_unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, context_dim: int | None = None,
              num_classes: int | None = None) -> DiffusionModelUNet:
    torch.manual_seed(0)
    return DiffusionModelUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=(8, 16),
        attention_levels=(False, context_dim is not None), num_res_blocks=1, norm_num_groups=8, num_head_channels=8,
        with_conditioning=context_dim is not None, cross_attention_dim=context_dim, num_class_embeds=num_classes,
    )


def with_random_output(unet: DiffusionModelUNet, seed: int = 1) -> DiffusionModelUNet:
    """``unet`` in eval mode with its output layer randomised: MONAI zero-initialises it, and an all-zero denoiser
    tests nothing."""
    torch.manual_seed(seed)
    for p in unet.out.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return unet.eval()


def tiny_autoencoder(spatial_dims: int = 2, in_channels: int = 1, latent_channels: int = 3) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels, channels=(8, 16),
        latent_channels=latent_channels, attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
    )
