"""Benchmark of channel-sparse back-propagation (ssProp): FLOPs, seconds per step and a small DDPM quality run.

Not run by CI. Prints markdown tables and writes them to ``benchmarks/results/sparse_backprop.md`` (raw numbers in
``sparse_backprop.json``), figures to ``docs/figures/ssprop_loss.png`` and ``docs/figures/ssprop_samples.png``.

Usage::

    python benchmarks/bench_sparse_backprop.py            # full run (~15-20 min on 2 CPU cores)
    python benchmarks/bench_sparse_backprop.py --quick    # smoke run (~2-3 min)

Sections:

1. FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``, forward and backward separately, dense and at
   keep 0.6 / 0.2, for a 3D latent diffusion U-Net, a 3D autoencoder and a 2D diffusion U-Net. The paper's headline
   setting (interleave: dense and keep-0.2 epochs alternate, mean keep 0.6) is the mean of the dense and 0.2 rows.
2. Seconds per training step (forward + backward + Adam step), median over several steps after warm-up; configs are
   measured round-robin so that load from other processes hits all of them alike; CUDA is synchronised if used.
3. Quality: a 2D DDPM (MONAI ``DiffusionModelUNet``) trained dense and with interleave keep 0.2 for the same epochs,
   on the same data order and noise, on synthetic 32x32 slices of nilearn's bundled MNI152 template (no download).
   Samples with DDIM; quality as a Frechet distance on a fixed random conv feature extractor and as the 1-Wasserstein
   distance between pixel-intensity distributions, both against held-out real slices.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Must precede `import torch`. On a shared or oversubscribed CPU, spin-waiting OpenMP workers made training steps
# 5-10x slower and erratic (measured: 5 s vs 0.8 s per step); passive waiting costs little on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monai_pie.engines.sparse_schedule import SparseKeepSchedule  # noqa: E402
from monai_pie.networks.sparse_backprop import CHANNEL_BLOCK, convert_to_sparse_backprop, set_sparse_keep  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from _harness import header, load_average, median_min_flag  # noqa: E402

__all__ = ["main"]

KEEPS = (1.0, 0.6, 0.2)


# ----------------------------------------------------------------------------------------------------------- models
def _diffusion_unet(dims: int, channels: int) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=dims,
        in_channels=channels,
        out_channels=channels,
        channels=(32, 64, 64),
        attention_levels=(False, False, True),
        num_res_blocks=1,
        num_head_channels=16,
    )


def _autoencoder_3d() -> nn.Module:
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(32, 64, 64),
        latent_channels=3,
        attention_levels=(False, False, False),
        num_res_blocks=1,
    )


def _diffusion_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.mse_loss(model(batch["x"], batch["t"]), batch["noise"])


def _autoencoder_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    recon, mu, sigma = model(batch["x"])
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1).mean()
    return F.l1_loss(recon, batch["x"]) + 1e-6 * kl


def _model_specs(batch: int) -> list[dict[str, Any]]:
    """Name, builder, input shape (per sample) and loss of the benchmarked models."""
    return [
        dict(
            name="DiffusionModelUNet 3D (latent)",
            build=lambda: _diffusion_unet(3, 3),
            shape=(3, 16, 16, 16),
            loss=_diffusion_loss,
        ),
        dict(name="AutoencoderKL 3D", build=_autoencoder_3d, shape=(1, 32, 32, 32), loss=_autoencoder_loss),
        dict(
            name="DiffusionModelUNet 2D",
            build=lambda: _diffusion_unet(2, 1),
            shape=(1, 64, 64),
            loss=_diffusion_loss,
        ),
    ]


def _make_batch(shape: tuple[int, ...], batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g)
    return {
        "x": x.to(device),
        "noise": torch.randn(x.shape, generator=g).to(device),
        "t": torch.randint(0, 1000, (batch,), generator=g).to(device),
    }


def _realistic_init(model: nn.Module, seed: int) -> nn.Module:
    # MONAI zero-initialises output/residual convs; nudge them so gradients are not trivially zero everywhere
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and p.abs().max() == 0:
                p.add_(1e-3 * torch.randn(p.shape, generator=g).to(p.device))
    return model


def _variant(base: nn.Module, keep: float) -> nn.Module:
    """A copy of ``base``: plain for keep 1 (the true dense baseline), converted otherwise."""
    model = copy.deepcopy(base)
    return model if keep >= 1.0 else convert_to_sparse_backprop(model, keep=keep)


# ------------------------------------------------------------------------------------------------------------ FLOPs
def _split(counter: FlopCounterMode) -> tuple[int, int]:
    """(all, convolution) FLOPs recorded by ``counter``."""
    counts = counter.get_flop_counts().get("Global", {})
    conv = sum(v for k, v in counts.items() if "convolution" in str(k))
    return int(counter.get_total_flops()), int(conv)


def count_flops(spec: dict[str, Any], batch: int, device: torch.device) -> list[dict[str, Any]]:
    """Forward and backward FLOPs of one training step of ``spec`` at each keep in ``KEEPS``."""
    torch.manual_seed(0)
    base = _realistic_init(spec["build"]().to(device), 0)
    data = _make_batch(spec["shape"], batch, device)
    rows = []
    for keep in KEEPS:
        model = _variant(base, keep)
        with FlopCounterMode(display=False) as fwd:
            loss = spec["loss"](model, data)
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        (f_all, f_conv), (b_all, b_conv) = _split(fwd), _split(bwd)
        rows.append(dict(keep=keep, fwd=f_all, fwd_conv=f_conv, bwd=b_all, bwd_conv=b_conv))
    dense, sparse02 = rows[0], rows[-1]
    # interleave keep 0.2: dense and 0.2 epochs alternate, so each count is the mean of the two
    rows.append({k: (dense[k] + sparse02[k]) / 2 if k != "keep" else "interleave 0.2" for k in dense})
    return rows


def flops_table(results: dict[str, list[dict[str, Any]]], batch: int) -> str:
    lines = [
        f"| model (batch {batch}) | keep | fwd GFLOP | bwd GFLOP | bwd conv GFLOP | bwd conv vs dense | "
        "step (fwd+bwd) vs dense |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results.items():
        dense = rows[0]
        for r in rows:
            keep = r["keep"] if isinstance(r["keep"], str) else f"{r['keep']:g}"
            lines.append(
                f"| {name} | {keep} | {r['fwd'] / 1e9:.2f} | {r['bwd'] / 1e9:.2f} | {r['bwd_conv'] / 1e9:.2f} | "
                f"{_pct(r['bwd_conv'], dense['bwd_conv'])} | "
                f"{_pct(r['fwd'] + r['bwd'], dense['fwd'] + dense['bwd'])} |"
            )
    return "\n".join(lines)


def _pct(value: float, ref: float) -> str:
    return f"{100.0 * (value / ref - 1.0):+.1f} %"


# ----------------------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    spec: dict[str, Any], batch: int, device: torch.device, warmup: int, steps: int
) -> list[dict[str, Any]]:
    """Median seconds of a full training step (and of its backward) per keep, measured round-robin."""
    torch.manual_seed(0)
    base = _realistic_init(spec["build"]().to(device), 0)
    data = _make_batch(spec["shape"], batch, device)
    models = {keep: _variant(base, keep) for keep in KEEPS}
    opts = {keep: torch.optim.Adam(m.parameters(), lr=1e-5) for keep, m in models.items()}
    step_t: dict[float, list[float]] = {k: [] for k in KEEPS}
    bwd_t: dict[float, list[float]] = {k: [] for k in KEEPS}
    cpu_t: dict[float, list[float]] = {k: [] for k in KEEPS}
    for i in range(warmup + steps):
        for keep in KEEPS:  # round-robin: background load affects every config alike
            model, opt = models[keep], opts[keep]
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            loss = spec["loss"](model, data)
            _sync(device)
            t1 = time.perf_counter()
            loss.backward()
            _sync(device)
            t2 = time.perf_counter()
            opt.step()
            _sync(device)
            t3, c3 = time.perf_counter(), time.process_time()
            if i >= warmup:
                step_t[keep].append(t3 - t0)
                cpu_t[keep].append(c3 - c0)
                bwd_t[keep].append(t2 - t1)
    rows: list[dict[str, Any]] = [
        dict(
            keep=k,
            step=statistics.median(step_t[k]),
            flag=median_min_flag(step_t[k])[2],
            step_min=min(step_t[k]),
            cpu=statistics.median(cpu_t[k]),
            bwd=statistics.median(bwd_t[k]),
            n=len(step_t[k]),
        )
        for k in KEEPS
    ]
    # interleave keep 0.2: half the epochs dense, half at keep 0.2
    rows.append({k: (rows[0][k] + rows[-1][k]) / 2 for k in ("step", "step_min", "cpu", "bwd", "n")})
    rows[-1].update(keep="interleave 0.2", flag="")
    rows[0]["conv_bwd_share"] = _conv_backward_share(models[1.0], opts[1.0], spec, data, device)
    return rows


def _conv_backward_share(model: nn.Module, opt: Any, spec: dict[str, Any], data: Any, device: torch.device) -> float:
    """Share of a dense training step's operator time spent in ``aten::convolution_backward``: the only part ssProp
    shrinks, so ``1 - share`` is the part of the step it cannot touch."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            spec["loss"](model, data).backward()
            opt.step()
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, attr) for e in events)
    conv = sum(getattr(e, attr) for e in events if e.key == "aten::convolution_backward")
    return conv / max(total, 1e-9)


def timing_table(results: dict[str, list[dict[str, Any]]], batch: int, device: torch.device) -> str:
    lines = [
        f"| model (batch {batch}, {device.type}) | keep | s / step (median) | vs dense | min s / step | "
        "CPU s / step | CPU vs dense | s backward | backward vs dense | conv backward share of dense step | flag |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in results.items():
        dense = rows[0]
        for r in rows:
            keep = r["keep"] if isinstance(r["keep"], str) else f"{r['keep']:g}"
            lines.append(
                f"| {name} | {keep} | {r['step']:.3f} | {_pct(r['step'], dense['step'])} | {r['step_min']:.3f} | "
                f"{r['cpu']:.3f} | {_pct(r['cpu'], dense['cpu'])} | {r['bwd']:.3f} | {_pct(r['bwd'], dense['bwd'])} | "
                + (f"{r['conv_bwd_share']:.0%} | " if "conv_bwd_share" in r else "| ")
                + f"{r.get('flag', '')} |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- synthetic slices
def _mni_volume() -> torch.Tensor:
    """MNI152 2 mm template shipped inside nilearn (no download), as a (D0, D1, D2) float tensor in [0, 1]."""
    from nilearn.datasets import load_mni152_template

    vol = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    return torch.from_numpy(vol / max(float(vol.max()), 1e-6))


def synthetic_slices(n: int, size: int, seed: int, vol: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` random axial MNI152 slices with smooth elastic warps, small affines and intensity jitter.

    Returns
    -------
    torch.Tensor
        ``(n, 1, size, size)`` in [-1, 1].
    """
    vol = _mni_volume() if vol is None else vol
    g = torch.Generator().manual_seed(seed)
    depth = vol.shape[2]
    z = torch.randint(int(0.35 * depth), int(0.7 * depth), (n,), generator=g)
    sl = vol.permute(2, 1, 0)[z].flip(1)[:, None]  # (n, 1, A-P, L-R), anterior up
    h, w = sl.shape[-2:]
    side = max(h, w)
    sl = F.pad(sl, ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2))
    sl = F.interpolate(sl, size=(2 * size, 2 * size), mode="area")
    # affine (rotation +-10 deg, scale 0.9-1.1, shift +-4 %) and a smooth elastic field from a 5x5 control grid
    ang = (torch.rand(n, generator=g) - 0.5) * math.radians(20)
    scale = 0.9 + 0.2 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.08
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang) / scale, -torch.sin(ang) / scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang) / scale, torch.cos(ang) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(sl.shape), align_corners=False)
    disp = 0.04 * torch.randn(n, 2, 5, 5, generator=g)
    grid = grid + F.interpolate(disp, size=sl.shape[-2:], mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    sl = F.grid_sample(sl, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sl = F.interpolate(sl, size=(size, size), mode="area").clamp(0, 1)
    # intensity jitter: gamma, gain, and a smooth multiplicative bias field
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.5)
    gain = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    bias = 1 + F.interpolate(0.08 * torch.randn(n, 1, 3, 3, generator=g), size=(size, size), mode="bicubic")
    sl = (sl.pow(gamma) * gain * bias).clamp(0, 1)
    return sl * 2 - 1


# ---------------------------------------------------------------------------------------------------- quality metric
class _RandomFeatures(nn.Module):
    """Fixed, randomly initialised conv feature extractor (seeded): 3 strided convs, mean+std pooled, 128-d."""

    def __init__(self, seed: int = 1234) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [1, 32, 48, 64]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        with torch.no_grad():
            for c in self.convs:
                c.weight.copy_(torch.randn(c.weight.shape, generator=g) * math.sqrt(2.0 / c.weight[0].numel()))
                c.bias.zero_()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = F.leaky_relu(c(x), 0.2)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` (N, F) and ``b`` (M, F)."""
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def intensity_w1(a: torch.Tensor, b: torch.Tensor) -> float:
    """1-Wasserstein distance between the pixel-intensity distributions of image sets ``a`` and ``b``."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a.flatten().numpy(), b.flatten().numpy()))


# ---------------------------------------------------------------------------------------------------- quality run
def _small_unet() -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(32, 64, 64),
        attention_levels=(False, False, True),
        num_res_blocks=1,
        num_head_channels=32,
    )


def _schedulers() -> tuple[Any, Any]:
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    kw = dict(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    return DDPMScheduler(**kw), DDIMScheduler(**kw)


@torch.no_grad()
def _val_loss(model: nn.Module, ddpm: Any, val: torch.Tensor, batch: int) -> float:
    g = torch.Generator().manual_seed(7)  # fixed noise and timesteps: comparable across epochs and models
    model.eval()
    total = 0.0
    for i in range(0, len(val), batch):
        x = val[i : i + batch]
        noise = torch.randn(x.shape, generator=g)
        t = torch.randint(0, ddpm.num_train_timesteps, (len(x),), generator=g)
        total += F.mse_loss(model(ddpm.add_noise(x, noise, t), t), noise, reduction="sum").item()
    model.train()
    return total / val.numel()


@torch.no_grad()
def _sample(model: nn.Module, ddim: Any, n: int, size: int, steps: int, batch: int, seed: int) -> torch.Tensor:
    from monai.inferers import DiffusionInferer

    model.eval()
    ddim.set_timesteps(steps)
    inferer = DiffusionInferer(ddim)
    g = torch.Generator().manual_seed(seed)  # the same starting noise for every model
    noise = torch.randn(n, 1, size, size, generator=g)
    out = [inferer.sample(noise[i : i + batch], model, scheduler=ddim, verbose=False) for i in range(0, n, batch)]
    model.train()
    return torch.cat(out).clamp(-1, 1)


def quality_run(args: argparse.Namespace) -> dict[str, Any]:
    """Train a dense and an interleave-keep-0.2 DDPM in lockstep; return losses, timings and sample metrics."""
    q = args.quick
    size, batch = 32, 32
    n_train, n_val, n_ref = (256, 64, 128) if q else (1024, 256, 512)
    epochs = args.epochs or (4 if q else 16)
    n_samples, ddim_steps = (64, 20) if q else (256, 25)
    ema_decay = 0.99 if q else 0.995
    t_data = time.perf_counter()
    vol = _mni_volume()
    train = synthetic_slices(n_train, size, seed=0, vol=vol)
    val = synthetic_slices(n_val, size, seed=1, vol=vol)
    ref = synthetic_slices(n_ref, size, seed=2, vol=vol)
    ref2 = synthetic_slices(n_ref, size, seed=3, vol=vol)
    ddpm, ddim = _schedulers()
    print(f"synthetic slices ready in {time.perf_counter() - t_data:.0f}s", flush=True)

    torch.manual_seed(0)
    base = _small_unet()
    schedule = SparseKeepSchedule("interleave", keep=0.2, period=2, total=epochs)
    runs: dict[str, dict[str, Any]] = {}
    for name in ("dense", "interleave 0.2"):
        model = copy.deepcopy(base)
        if name != "dense":
            convert_to_sparse_backprop(model, keep=1.0)
        runs[name] = dict(
            model=model,
            opt=torch.optim.Adam(model.parameters(), lr=1e-3),
            gen=torch.Generator().manual_seed(42),  # same batches, noise and timesteps for both models
            ema=copy.deepcopy(model).requires_grad_(False),  # sampled from: cleaner samples after short training
            train_loss=[],
            val_loss=[],
            epoch_s=[],
            epoch_cpu_s=[],
            keep=[],
        )
    steps_per_epoch = n_train // batch
    t_run = time.perf_counter()
    print(f"quality run: {epochs} epochs x {steps_per_epoch} steps of {batch} at {size}x{size}", flush=True)
    for epoch in range(epochs):
        for name, r in runs.items():  # lockstep: background load hits both runs alike
            model, opt, g = r["model"], r["opt"], r["gen"]
            keep = 1.0 if name == "dense" else schedule.value(epoch)
            if name != "dense":
                set_sparse_keep(model, keep)
            t0, c0 = time.perf_counter(), time.process_time()
            perm = torch.randperm(n_train, generator=g)
            losses = []
            for s in range(steps_per_epoch):
                x = train[perm[s * batch : (s + 1) * batch]]
                noise = torch.randn(x.shape, generator=g)
                t = torch.randint(0, ddpm.num_train_timesteps, (len(x),), generator=g)
                opt.zero_grad(set_to_none=True)
                loss = F.mse_loss(model(ddpm.add_noise(x, noise, t), t), noise)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    torch._foreach_lerp_(list(r["ema"].parameters()), list(model.parameters()), 1 - ema_decay)
                losses.append(loss.item())
            r["epoch_s"].append(time.perf_counter() - t0)
            r["epoch_cpu_s"].append(time.process_time() - c0)
            r["train_loss"].append(float(np.mean(losses)))
            r["val_loss"].append(_val_loss(model, ddpm, val, 128))
            r["keep"].append(keep)
            print(
                f"  epoch {epoch + 1:2d} {name:>15s} keep={keep:.1f} train={r['train_loss'][-1]:.4f} "
                f"val={r['val_loss'][-1]:.4f} {r['epoch_s'][-1]:.1f}s (CPU {r['epoch_cpu_s'][-1]:.1f}s) "
                f"[{time.perf_counter() - t_run:.0f}s]",
                flush=True,
            )

    # FLOPs of one step at keep 1 and 0.2 of this very model, to state the run's backward-conv saving
    step_flops = {}
    for keep in (1.0, 0.2):
        m = _variant(base, keep)
        x = train[:batch]
        t = torch.randint(0, 1000, (batch,))
        with FlopCounterMode(display=False) as fwd:
            loss = F.mse_loss(m(x, t), torch.randn_like(x))
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        step_flops[keep] = (_split(fwd), _split(bwd))

    feats = _RandomFeatures()
    ref_f, ref2_f = feats(ref), feats(ref2)
    out: dict[str, Any] = dict(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch=batch,
        size=size,
        n_train=n_train,
        n_samples=n_samples,
        ddim_steps=ddim_steps,
        ema_decay=ema_decay,
        fd_real_vs_real=frechet_distance(ref_f, ref2_f[:n_samples]),  # same set sizes as for the samples
        w1_real_vs_real=intensity_w1(ref, ref2[:n_samples]),
        real_mean=float(ref.mean()),
        real_std=float(ref.std()),
        step_flops={str(k): v for k, v in step_flops.items()},
        runs={},
    )
    samples = {}
    for name, r in runs.items():
        t0 = time.perf_counter()
        s = _sample(r["ema"], ddim, n_samples, size, ddim_steps, 128, seed=123)
        samples[name] = s
        s_f = feats(s)
        out["runs"][name] = dict(
            train_loss=r["train_loss"],
            val_loss=r["val_loss"],
            epoch_s=r["epoch_s"],
            epoch_cpu_s=r["epoch_cpu_s"],
            keep=r["keep"],
            train_s=float(sum(r["epoch_s"])),
            train_cpu_s=float(sum(r["epoch_cpu_s"])),
            fd=frechet_distance(ref_f, s_f),
            w1=intensity_w1(ref, s),
            mean=float(s.mean()),
            std=float(s.std()),
            sample_s=time.perf_counter() - t0,
        )
        print(f"  sampled {name} in {time.perf_counter() - t0:.0f}s [{time.perf_counter() - t_run:.0f}s]", flush=True)
    out["figures"] = _figures(out, samples, ref, Path(args.figures))
    return out


def quality_tables(q: dict[str, Any]) -> str:
    dense = q["runs"]["dense"]
    ((f_d, _), (b_d, bc_d)), ((f_s, _), (b_s, bc_s)) = q["step_flops"]["1.0"], q["step_flops"]["0.2"]
    keep_mean = float(np.mean(q["runs"]["interleave 0.2"]["keep"]))
    lines = [
        f"Training: {q['epochs']} epochs x {q['steps_per_epoch']} steps, batch {q['batch']}, "
        f"{q['size']}x{q['size']} slices, {q['n_train']} training images, Adam lr 1e-3. Samples: {q['n_samples']} per "
        f"model from an EMA of the weights (decay {q['ema_decay']}), DDIM {q['ddim_steps']} steps, same starting "
        "noise. FD: Frechet distance of 128-d features (mean and std pooled) of a fixed random 3-layer conv net; "
        "intensity W1: 1-Wasserstein distance of pixel intensities in [-1, 1]; both against 512 held-out real slices.",
        "",
        "| run | final train loss | final val loss | train s | train time vs dense | train CPU s | "
        "CPU vs dense | CPU s / epoch (dense epochs) | CPU s / epoch (sparse epochs) | backward conv FLOPs vs dense | step FLOPs vs dense | FD (random conv features) | "
        "intensity W1 | sample mean / std |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in q["runs"].items():
        dense_ep = [s for s, k in zip(r["epoch_cpu_s"], r["keep"]) if k >= 1.0]
        sparse_ep = [s for s, k in zip(r["epoch_cpu_s"], r["keep"]) if k < 1.0]
        # FLOPs of the run relative to dense: its epochs are either dense or keep 0.2 (same steps per epoch)
        frac = len(sparse_ep) / len(r["keep"])
        conv_ratio = 1 - frac + frac * bc_s / bc_d
        step_ratio = 1 - frac + frac * (f_s + b_s) / (f_d + b_d)
        lines.append(
            f"| {name} | {r['train_loss'][-1]:.4f} | {r['val_loss'][-1]:.4f} | {r['train_s']:.0f} | "
            f"{_pct(r['train_s'], dense['train_s'])} | {r['train_cpu_s']:.0f} | "
            f"{_pct(r['train_cpu_s'], dense['train_cpu_s'])} | "
            f"{np.median(dense_ep):.1f} | {f'{np.median(sparse_ep):.1f}' if sparse_ep else '-'} | "
            f"{100 * (conv_ratio - 1):+.1f} % | {100 * (step_ratio - 1):+.1f} % | {r['fd']:.3f} | {r['w1']:.4f} | {r['mean']:.3f} / {r['std']:.3f} |"
        )
    lines += [
        f"| real vs real (held-out sets) | | | | | | | | | | | {q['fd_real_vs_real']:.3f} | {q['w1_real_vs_real']:.4f} | "
        f"{q['real_mean']:.3f} / {q['real_std']:.3f} |",
        "",
        f"Mean keep of the interleave run: {keep_mean:.2f}.",
    ]
    return "\n".join(lines)


def _figures(q: dict[str, Any], samples: dict[str, torch.Tensor], real: torch.Tensor, folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e '.[bench]'): no figures", flush=True)
        return []
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = np.arange(1, q["epochs"] + 1)
    sparse_keep = q["runs"]["interleave 0.2"]["keep"]
    for ax, key, title in zip(axes, ("train_loss", "val_loss"), ("training loss (epoch mean)", "validation loss")):
        for e, k in zip(epochs, sparse_keep):
            if k < 1.0:
                ax.axvspan(e - 0.5, e + 0.5, color="0.92", lw=0)
        for name, style in (("dense", "-o"), ("interleave 0.2", "-s")):
            ax.plot(epochs, q["runs"][name][key], style, ms=3, label=name)
        ax.set_xlabel("epoch (grey: sparse epochs, keep 0.2)")
        ax.set_ylabel("noise-prediction MSE")
        ax.set_title(title)
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    loss_png = folder / "ssprop_loss.png"
    fig.savefig(loss_png, dpi=120)
    plt.close(fig)

    n = 8
    rows = [("real (held out)", real[: 2 * n])] + [(k, v[: 2 * n]) for k, v in samples.items()]
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.9, len(rows) * 2.1))
    for ax, (title, imgs) in zip(axes, rows):
        grid = imgs.reshape(2, n, *imgs.shape[-2:]).permute(0, 2, 1, 3).reshape(2 * imgs.shape[-2], -1)
        ax.imshow(grid.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    samples_png = folder / "ssprop_samples.png"
    fig.savefig(samples_png, dpi=120)
    plt.close(fig)
    return [_rel(loss_png), _rel(samples_png)]


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ------------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (minutes)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the FLOP and timing sections")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the quality run")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per keep (default 7; 3 with --quick)")
    parser.add_argument("--skip-flops", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sparse_backprop.md"))
    parser.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = _model_specs(args.batch)
    warmup, steps = (1, 3) if args.quick else (2, 7)
    steps = args.repeats or steps
    report = header("# Sparse back-propagation (ssProp) benchmark", steps, load_average(), str(device)) + [
        f"{'Quick' if args.quick else 'Full'} run, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}. Converted "
        f"convolutions round the kept channels up to a multiple of {CHANNEL_BLOCK} (`CHANNEL_BLOCK`; the FLOPs below "
        "count what is computed). The conv-backward share is the part of a dense step ssProp acts on (torch "
        "profiler, operator self time); the rest (forward, norms, activations, attention, optimiser) it cannot touch.",
    ]
    raw: dict[str, Any] = {}
    t_start = time.perf_counter()

    if not args.skip_flops:
        flops = {s["name"] + f" {s['shape']}": count_flops(s, args.batch, device) for s in specs}
        raw["flops"] = flops
        report += ["", "## FLOPs per training step (FlopCounterMode)", "", flops_table(flops, args.batch)]
        print("\n".join(report[-3:]), flush=True)

    if not args.skip_timing:
        timing = {s["name"] + f" {s['shape']}": time_steps(s, args.batch, device, warmup, steps) for s in specs}
        raw["timing"] = timing
        report += [
            "",
            f"## Seconds per training step (forward + backward + Adam; median of {steps} after {warmup} warm-up, "
            f"round-robin; load average now {os.getloadavg()[0]:.1f})",
            "",
            timing_table(timing, args.batch, device),
        ]
        print("\n".join(report[-3:]), flush=True)

    if not args.skip_quality:
        q = quality_run(args)
        raw["quality"] = q
        report += ["", "## Quality: 2D DDPM on synthetic MNI152 slices, dense vs interleave keep 0.2", "", quality_tables(q)]
        if q["figures"]:
            report += ["", "Figures: " + ", ".join(q["figures"])]
        print("\n".join(report[-4:]), flush=True)

    report += ["", f"Total benchmark time {time.perf_counter() - t_start:.0f} s."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report) + "\n")
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    print(f"\nwrote {out}", flush=True)


if __name__ == "__main__":
    main()
