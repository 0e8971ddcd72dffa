"""Pure update rules between two explicit levels, in the ``x = alpha * x0 + sigma * eps`` form.

They hold for both schedule families (see ``schedule.py``). With ``sigma_prev`` and ``alpha_prev`` of the target
level:

* DDIM (Song et al. 2021, eq. 12/16): ``x_prev = a' x0 + sqrt(s'^2 - std^2) eps + std z``,
  ``std = eta * sqrt(posterior variance)``; ``eta = 0`` is deterministic, and for rectified flow it is exactly
  the Euler step ``x + v (sigma - sigma')``.
* DDPM ancestral: a draw from ``q(x_prev | x_t, x0_hat)``; equal to DDIM with ``eta = 1``.
* DDIM inversion: the deterministic DDIM rule run towards a noisier level.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ddim_update", "ddpm_update", "euler_update", "posterior_variance"]


def posterior_variance(a_t: float, s_t: float, a_prev: float, s_prev: float) -> float:
    """Variance of ``q(x_prev | x_t, x0)`` for marginals ``(a_t, s_t)`` and ``(a_prev, s_prev)``."""
    if s_t <= 0.0 or a_prev <= 0.0:
        return 0.0
    a_ts = a_t / a_prev
    var_ts = max(s_t**2 - a_ts**2 * s_prev**2, 0.0)
    return var_ts * s_prev**2 / s_t**2


def ddim_update(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a_prev: float,
    s_prev: float,
    std: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM step to the level ``(a_prev, s_prev)``; ``std > 0`` needs ``noise`` shaped like ``x0``."""
    out = a_prev * x0 + math.sqrt(max(s_prev**2 - std**2, 0.0)) * eps
    if std > 0.0:
        if noise is None:
            raise ValueError("a stochastic DDIM step (eta > 0) needs `noise`.")
        out = out + std * noise
    return out


def ddpm_update(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    a_t: float,
    s_t: float,
    a_prev: float,
    s_prev: float,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ancestral step: posterior mean of ``q(x_prev | x_t, x0)`` plus its standard deviation times ``noise``."""
    a_ts = a_t / a_prev
    var_ts = max(s_t**2 - a_ts**2 * s_prev**2, 0.0)
    mean = (a_ts * s_prev**2 / s_t**2) * x_t + (a_prev * var_ts / s_t**2) * x0
    var = var_ts * s_prev**2 / s_t**2
    if var > 0.0 and noise is not None:
        mean = mean + math.sqrt(var) * noise
    return mean


def euler_update(x_t: torch.Tensor, velocity: torch.Tensor, s_t: float, s_prev: float) -> torch.Tensor:
    """Rectified-flow Euler step ``x + v * (sigma_t - sigma_prev)`` with MONAI's velocity ``v = x0 - eps``."""
    return x_t + velocity * (s_t - s_prev)
