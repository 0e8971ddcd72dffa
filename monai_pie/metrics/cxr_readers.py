"""Networks that read findings back from (generated) chest X-rays, and the metrics built on them.

* :class:`FindingClassifier` - MONAI DenseNet121 (2D), one logit per finding; its pooled 1024-d features stand in
  for CLIP image embeddings (fidelity cosine) and for Inception features (FID), since neither CLIP nor Inception
  weights can be downloaded here and a radiograph-trained feature space is closer to what matters anyway.
* :class:`CXRMaskNet` - a small MONAI UNet that segments lungs, heart, thorax and effusion, so the cardiothoracic
  ratio and the effusion height can be *measured* on a generated image with the same definitions as the phantom
  truth (:mod:`monai_pie.metrics.cxr_measures`).

Both train in minutes on CPU on the phantom cohort (:func:`fit`, in-memory tensors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cxr_measures import measure_ctr, measure_effusion_fraction

__all__ = [
    "MASK_CHANNELS",
    "CXRMaskNet",
    "FindingClassifier",
    "embedding_cosine",
    "fid_from_features",
    "fit",
    "measure_from_masks",
    "prompt_adherence",
    "soft_ctr",
]

MASK_CHANNELS: tuple[str, ...] = ("lungs", "heart", "thorax", "effusion")


class FindingClassifier(nn.Module):
    """Multi-label finding classifier on ``(B, 1, H, W)`` radiographs in [0, 1]: MONAI DenseNet121.

    Args:
        findings: finding names, one output logit each.
    """

    def __init__(self, findings: Sequence[str]) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        self.findings = tuple(findings)
        self.net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=len(self.findings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, F)``."""
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(N, F)`` and pooled features ``(N, 1024)`` (the last feature map, ReLU, global average
        pool) of ``(N, 1, H, W)`` images, from one pass, in eval mode."""
        self.eval()
        probs, feats = [], []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(next(self.parameters()).device)
            f = F.relu(self.net.features(xb))
            feats.append(F.adaptive_avg_pool2d(f, 1).flatten(1).cpu())
            probs.append(torch.sigmoid(self.net.class_layers(f)).cpu())
        return torch.cat(probs).numpy(), torch.cat(feats).numpy()


class CXRMaskNet(nn.Module):
    """Segments :data:`MASK_CHANNELS` (independent sigmoids) on ``(B, 1, H, W)`` radiographs: a MONAI UNet."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.net = UNet(spatial_dims=2, in_channels=1, out_channels=len(MASK_CHANNELS), channels=tuple(channels),
                        strides=(2,) * (len(channels) - 1), num_res_units=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 4, H, W)``."""
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Boolean masks ``(N, 4, H, W)``."""
        self.eval()
        return self.probabilities(x, batch_size) > 0.5

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Per-pixel probabilities ``(N, 4, H, W)`` of ``(N, 1, H, W)`` images."""
        self.eval()
        out = [torch.sigmoid(self.net(x[i : i + batch_size])).cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out).numpy()


def soft_ctr(probabilities: np.ndarray) -> tuple[float, float]:
    """Cardiothoracic ratio and thoracic width (px) from one ``(4, H, W)`` probability stack: widths are sums of
    probabilities (the heart's per-column maximum over rows; the thorax's per-row sum, widest row), so a sub-pixel
    border shift moves them, where :func:`measure_ctr` on binary masks moves in whole pixels (0.02 of CTR at 64 px).
    """
    heart, thorax = probabilities[MASK_CHANNELS.index("heart")], probabilities[MASK_CHANNELS.index("thorax")]
    heart_w, thorax_w = float(heart.max(axis=0).sum()), float(thorax.sum(axis=1).max())
    return (heart_w / thorax_w if thorax_w > 0 else 0.0), thorax_w


def measure_from_masks(masks: np.ndarray) -> dict[str, float]:
    """CTR, thoracic width (px) and effusion height (max of the two sides, split at the thorax's middle column; each
    side as ``effusion_fraction_right`` / ``_left``, patient sides: the patient's right is the image left) from one
    ``(4, H, W)`` boolean mask stack ordered as :data:`MASK_CHANNELS`."""

    lungs, heart, thorax, effusion = (np.asarray(m, dtype=bool) for m in masks)
    ctr, _, thorax_w = measure_ctr(heart, thorax)
    cols = np.nonzero(thorax.any(axis=0))[0]
    mid = int((cols[0] + cols[-1] + 1) // 2) if cols.size else masks.shape[-1] // 2
    sides = []
    for sl in (np.s_[:, :mid], np.s_[:, mid:]):
        side_lung, side_eff = np.zeros_like(lungs), np.zeros_like(effusion)
        side_lung[sl], side_eff[sl] = lungs[sl] | effusion[sl], effusion[sl]
        sides.append(measure_effusion_fraction(side_lung, side_eff))
    return {"ctr": float(ctr), "thoracic_width_px": float(thorax_w), "effusion_fraction": float(max(sides)),
            "effusion_fraction_right": float(sides[0]), "effusion_fraction_left": float(sides[1])}


def _augment(x: torch.Tensor, shift_px: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """Shift, blur (half the batches, sigma up to 1 px), contrast/brightness jitter and noise: robustness to
    generated and decoded images, which are smoother than the phantoms. No flips: laterality (the heart on the image
    right) is anatomy."""
    b = x.shape[0]
    x = torch.roll(x, shifts=shift_px, dims=(2, 3))
    if float(torch.rand(1, generator=g)) < 0.5:
        sigma = 0.2 + 0.8 * float(torch.rand(1, generator=g))
        r = torch.arange(-3, 4, dtype=x.dtype)
        k = torch.exp(-0.5 * (r / sigma) ** 2)
        k = k / k.sum()
        x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7))
        x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1))
    scale = 1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1)
    shift = 0.05 * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1)
    return (x * scale + shift + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def fit(
    network: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    augment: bool = True,
    progress: bool = True,
    desc: str = "train",
) -> list[float]:
    """Train ``network`` on in-memory ``images (N, 1, H, W)`` and ``targets (N, ...)`` for ``steps`` Adam steps with
    cosine learning-rate decay; returns the loss per step. Augmentation moves targets with the image when they are
    maps (``targets.ndim == 4``)."""
    if images.shape[0] != targets.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and targets ({targets.shape[0]}) differ in number.")
    if images.shape[0] == 0:
        raise ValueError("no training images.")
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(steps), 1))
    network.train()
    losses: list[float] = []
    it: Any = range(int(steps))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, unit="step")
    for _ in it:
        idx = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=g)
        x, y = images[idx], targets[idx]
        if augment:
            shift = tuple(int(v) for v in torch.randint(-3, 4, (2,), generator=g))  # up to 3 px
            x = _augment(x, shift, g)
            if y.ndim == 4:  # maps move with the image; no intensity change
                y = torch.roll(y, shifts=shift, dims=(2, 3))
        opt.zero_grad(set_to_none=True)
        value = loss(network(x), y)
        value.backward()
        opt.step()
        sched.step()
        losses.append(float(value.detach()))
    network.eval()
    return losses


def embedding_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(N, D)`` feature arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"feature arrays differ in shape: {a.shape} vs {b.shape}.")
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between two feature sets ``(N, D)``, ``(M, D)`` with MONAI's ``FIDMetric``."""
    from monai.metrics import FIDMetric

    if min(len(a), len(b)) < 2:
        raise ValueError("FID needs at least 2 feature vectors per set.")
    return float(FIDMetric()(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)))


def prompt_adherence(probabilities: np.ndarray, prompted: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """How often the classifier reads the prompted findings back.

    Args:
        probabilities: ``(N, F)`` classifier probabilities of generated images.
        prompted: ``(N, F)`` 0/1 findings named in each image's prompt.

    Returns:
        ``exact``: fraction whose thresholded prediction equals the prompted set; ``present``: per finding, fraction
        of images prompted with it that are read as having it (``None`` if never prompted); ``absent``: the same for
        images prompted without it.
    """
    pred = np.asarray(probabilities) > threshold
    want = np.asarray(prompted).astype(bool)
    if pred.shape != want.shape:
        raise ValueError(f"probabilities {pred.shape} and prompted {want.shape} differ in shape.")
    present = [float(pred[want[:, j], j].mean()) if want[:, j].any() else None for j in range(want.shape[1])]
    absent = [float((~pred[~want[:, j], j]).mean()) if (~want[:, j]).any() else None for j in range(want.shape[1])]
    return {"exact": float((pred == want).all(1).mean()), "present": present, "absent": absent}
