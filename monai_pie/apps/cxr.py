"""Chest X-ray applications the bundles call: text-guided generation and PIE progression toward a report.

Images are 2D, grayscale, ``(1, H, W)`` in [0, 1] on the model grid (``image_size``); files are read with
:func:`monai_pie.data.load_2d_image` (PNG/JPEG/DICOM/NIfTI). Frames are written as 16-bit PNGs at the input's own
resolution: the simulated change is computed on the model grid and resized back onto the original image, so
pixels the model never changed keep their original values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..data.cxr_readers import load_2d_image
from ..inferers import DiffusionSampler, ProgressionInferer, ProgressionResult, make_generator
from ..networks import LatentDiffusionModel
from ..utils import atomic_write, atomic_write_text
from .datalist_runner import run_image_or_datalist
from .visualize import frame_strip, save_gif, save_png, to_uint8

__all__ = [
    "CXR_ROI_REGIONS",
    "check_prompts",
    "default_cxr_roi",
    "generate_cxr_images",
    "latent_shape_for",
    "load_cxr",
    "progression_main",
    "run_cxr_progression",
    "sample_cxr_images",
    "save_png16",
    "simulate_cxr_progression",
]

#: default ROIs as super-ellipses ``(centre row, centre col, radius rows, radius cols, exponent)`` in fractions of the
#: image (exponent 2: an ellipse; 4: a rounded rectangle that keeps the costophrenic angles). Placed from the phantom
#: masks of held-out subjects, so they cover a PA film that shows the whole thorax: ``thorax`` the lung fields,
#: ``heart`` the heart up to severe cardiomegaly, ``lower_lungs`` where pleural fluid collects.
CXR_ROI_REGIONS: dict[str, tuple[float, float, float, float, float]] = {
    "thorax": (0.43, 0.50, 0.37, 0.42, 4.0),
    "heart": (0.56, 0.60, 0.22, 0.30, 2.0),
    "lower_lungs": (0.56, 0.50, 0.23, 0.42, 4.0),
}


def check_prompts(prompts: str | Sequence[str], network: LatentDiffusionModel | None = None) -> list[str]:
    """Prompts as a non-empty list of non-empty strings; with ``network``, also encoded once by its conditioner
    so that an unknown finding or modality fails before any sampling (the conditioner's message names it)."""
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("give at least one prompt, e.g. 'A chest X-ray image, cardiomegaly'.")
    for p in items:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompts must be non-empty strings, got {p!r}; e.g. 'A chest X-ray image, no finding' "
                             "for a normal film.")
    if network is not None and network.conditioner is not None:
        with torch.no_grad():
            network.make_condition(sorted(set(items)))
    return items


def latent_shape_for(network: LatentDiffusionModel, image_size: Sequence[int],
                     device: str | torch.device = "cpu") -> tuple[int, ...]:
    """Latent ``(C, h, w)`` of an ``image_size`` image; raises if the autoencoder cannot round-trip that size."""
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`image_size` must be (H, W) with positive sides, got {list(image_size)}.")
    with torch.no_grad():
        z = network.encode(torch.zeros(1, 1, *size, device=device))
        back = tuple(network.decode(z).shape[2:])
    if back != size:
        raise ValueError(f"`image_size` {list(size)} does not round-trip through the autoencoder (decodes to "
                         f"{list(back)}); use sides divisible by its downsampling factor, e.g. the bundle's "
                         "training size.")
    return tuple(z.shape[1:])


def _check_network(network: LatentDiffusionModel) -> None:
    if not isinstance(network, LatentDiffusionModel):
        raise TypeError(f"`network` must be a monai_pie LatentDiffusionModel, got {type(network).__name__}.")


def _labelled_tile(img: np.ndarray, label: str, height: int) -> np.ndarray:
    pic = Image.fromarray(img).resize((height, height), Image.BILINEAR).convert("RGB")
    if label:
        ImageDraw.Draw(pic).text((3, 2), label, fill=(255, 255, 0))
    return np.asarray(pic)


def save_png16(image: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W)`` image in [0, 1] as a 16-bit grayscale PNG, atomically (read back with load_2d_image)."""
    arr = (np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 65535 + 0.5).astype(np.uint16)
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"), suffix=".tmp.png")


def sample_cxr_images(
    network: LatentDiffusionModel,
    scheduler: Any,
    prompts: Sequence[str],
    image_size: Sequence[int] = (64, 64),
    num_inference_steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """One image per prompt: ``(N, 1, H, W)`` in [0, 1] on the CPU, sampled in batches of ``batch_size`` from one
    seeded generator (the same call gives the same images)."""
    device = torch.device(device)
    prompts = check_prompts(prompts, network)
    latent = latent_shape_for(network, image_size, device)
    sampler = DiffusionSampler(scheduler, num_inference_steps, progress=progress)
    g = make_generator(seed, device)
    out = []
    for start in range(0, len(prompts), int(batch_size)):
        batch = prompts[start : start + int(batch_size)]
        with torch.no_grad():
            z = sampler.generate(network, (len(batch), *latent), generator=g, device=device, condition=list(batch),
                                 guidance_scale=guidance_scale)
            out.append(network.decode(z).clamp(0, 1).cpu())
    return torch.cat(out)


def generate_cxr_images(
    network: LatentDiffusionModel,
    scheduler: Any,
    output_dir: str,
    prompts: str | Sequence[str],
    num_samples_per_prompt: int = 4,
    image_size: Sequence[int] = (64, 64),
    num_inference_steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``num_samples_per_prompt`` images per prompt; 16-bit PNGs, a labelled grid and a JSON summary.

    Outputs under ``output_dir``: ``prompt_PP/sample_SSS.png``, ``grid.png`` (one row per prompt) and
    ``generation.json`` (prompts, settings, paths, seconds per image).

    Returns:
        The JSON summary.
    """
    _check_network(network)
    if int(num_samples_per_prompt) < 1:
        raise ValueError(f"`num_samples_per_prompt` must be >= 1, got {num_samples_per_prompt}.")
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    device = torch.device(device)
    network = network.to(device).eval()
    prompts = check_prompts(prompts)  # the conditioner checks them in sample_cxr_images, before any sampling
    t0 = time.perf_counter()
    jobs = [(p, i) for p in range(len(prompts)) for i in range(int(num_samples_per_prompt))]
    x = sample_cxr_images(network, scheduler, [prompts[p] for p, _ in jobs], image_size, num_inference_steps,
                          guidance_scale, seed, batch_size, device, progress)[:, 0].numpy()
    out = Path(output_dir)
    images: dict[tuple[int, int], np.ndarray] = {}
    paths: list[list[str]] = [[] for _ in prompts]
    for (p, i), img in zip(jobs, x):
        images[(p, i)] = img
        paths[p].append(str(save_png16(img, out / f"prompt_{p:02d}" / f"sample_{i:03d}.png")))
    seconds = time.perf_counter() - t0
    rows = [np.concatenate([_labelled_tile(to_uint8(images[(p, i)], 0, 1), "" if i else f"{p}", 96)
                            for i in range(int(num_samples_per_prompt))], axis=1) for p in range(len(prompts))]
    save_png(np.concatenate(rows, axis=0), out / "grid.png")
    summary = {
        "prompts": {f"{p}": prompt for p, prompt in enumerate(prompts)},
        "num_samples_per_prompt": int(num_samples_per_prompt),
        "image_size": list(image_size),
        "num_inference_steps": int(num_inference_steps),
        "guidance_scale": float(guidance_scale),
        "seed": int(seed),
        "samples": {f"{p}": paths[p] for p in range(len(prompts))},
        "grid": str(out / "grid.png"),
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / len(jobs), 3),
        "device": str(device),
    }
    atomic_write_text(out / "generation.json", json.dumps(summary, indent=2))
    return summary


def default_cxr_roi(image_size: Sequence[int], region: str = "thorax") -> torch.Tensor:
    """ROI ``(1, 1, H, W)`` for a named region of a PA film (:data:`CXR_ROI_REGIONS`)."""
    if region not in CXR_ROI_REGIONS:
        raise ValueError(f"`roi_region` must be one of {sorted(CXR_ROI_REGIONS)}, got {region!r}.")
    h, w = (int(s) for s in image_size)
    cr, cc, rr, rc, power = CXR_ROI_REGIONS[region]
    rows = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    cols = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    inside = ((rows[:, None] - cr) / rr).abs() ** power + ((cols[None, :] - cc) / rc).abs() ** power <= 1.0
    return inside.float()[None, None]


def _resize(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    kw = {} if mode in ("nearest", "area") else {"align_corners": False}
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, **kw)


def load_cxr(path: str | Path, image_size: Sequence[int]) -> tuple[np.ndarray, torch.Tensor]:
    """Read a radiograph: the original ``(H0, W0)`` array in [0, 1] and its model-grid ``(1, 1, H, W)`` tensor."""
    original = load_2d_image(path)
    if min(original.shape) < 16:
        raise ValueError(f"{path}: image is {original.shape[0]}x{original.shape[1]} pixels; at least 16 per side needed.")
    if float(original.max()) == float(original.min()):
        raise ValueError(f"{path}: image is constant; is the file empty?")
    model = _resize(torch.from_numpy(original)[None, None], image_size, "area")
    return original, model


def _load_roi(path: str | Path, original_shape: tuple[int, ...], image_size: Sequence[int]) -> torch.Tensor:
    mask = load_2d_image(path)
    if mask.shape != original_shape:
        raise ValueError(f"ROI mask {path} is {mask.shape[0]}x{mask.shape[1]} but the image is "
                         f"{original_shape[0]}x{original_shape[1]}; the mask must be drawn on the input image.")
    if float(mask.max()) <= 0:
        raise ValueError(f"ROI mask {path} is empty (all pixels 0).")
    binary = mask > 0.5 * float(mask.max())  # 0/255, 0/1 and 0/65535 label files alike
    # a model-grid cell belongs to the ROI when a quarter of it is covered, so thin ROIs survive downsampling
    roi = _resize(torch.from_numpy(binary.astype(np.float32))[None, None], image_size, "area") >= 0.25
    if not roi.any():
        raise ValueError(f"ROI mask {path} covers no model-grid cell after resizing to {list(image_size)}; "
                         "draw a larger region.")
    return roi.float()


def simulate_cxr_progression(
    network: LatentDiffusionModel,
    scheduler: Any,
    image: torch.Tensor,
    prompt: str,
    roi: torch.Tensor | None = None,
    roi_region: str = "thorax",
    num_rounds: int = 8,
    strength: float = 0.3,
    num_inference_steps: int = 50,
    guidance_scale: float = 3.0,
    blend_in: float = 0.3,
    blend_out: float = 0.01,
    anchor: str = "previous",
    n_restarts: int = 1,
    noise_mode: str = "stochastic",
    composite_background: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> ProgressionResult:
    """PIE on model-grid CXRs ``(B, 1, H, W)`` toward ``prompt`` (one for the batch); ROI ``(B|1, 1, H, W)``
    or the default ``roi_region``. Returns the inferer's result (frames ``(N+1, B, 1, H, W)``).

    Defaults (strength 0.3, blend_in 0.3, ``anchor="previous"``: each round edits the previous frame a little) are the
    setting that gave a gradual, monotone CTR rise in ``docs/validation/cxr.md``; PIE's published setting (0.5, 0.75,
    ``"original"``) reaches the end state in one round.

    ``composite_background`` pastes the input's pixels outside the ROI into every frame; off by default, so that the
    decoder's spill-over outside the ROI stays visible (and measured) rather than hidden."""
    _check_network(network)
    if image.ndim != 4:
        raise ValueError(f"`image` must be (B, 1, H, W), got shape {tuple(image.shape)}.")
    if image.shape[1] != 1:
        raise ValueError(f"`image` must be grayscale (1 channel), got {image.shape[1]} channels; convert RGB to "
                         "grayscale first (monai_pie.data.load_2d_image does).")
    if not torch.isfinite(image).all():
        raise ValueError("`image` contains NaN or infinite values.")
    prompt = check_prompts(prompt, network)
    if len(prompt) != 1:
        raise ValueError("give one prompt for a progression.")
    latent_shape_for(network, image.shape[2:], image.device)
    if roi is None:
        roi = default_cxr_roi(image.shape[2:], roi_region)
    inferer = ProgressionInferer(
        scheduler, num_rounds=num_rounds, strength=strength, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, blend_in=blend_in, blend_out=blend_out, anchor=anchor, n_restarts=n_restarts,
        noise_mode=noise_mode, composite_background=composite_background, progress=progress,
    )
    condition = prompt * image.shape[0]
    return inferer(image, network, condition=condition, roi_mask=roi.to(image.device), seed=seed)


def run_cxr_progression(
    network: LatentDiffusionModel,
    scheduler: Any,
    image_path: str,
    output_dir: str,
    prompt: str = "A chest X-ray image, cardiomegaly, pleural effusion",
    roi_path: str | None = None,
    roi_region: str = "thorax",
    image_size: Sequence[int] = (64, 64),
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> dict[str, Any]:
    """PIE progression of one radiograph toward ``prompt``; writes frames, change maps, strip, GIF and JSON.

    Outputs under ``output_dir`` (the input is never overwritten): ``frame_00.png`` (the input) ...
    ``frame_NN.png`` as 16-bit PNGs at the input's resolution, ``roi.png``, ``progression_strip.png`` (frames and
    change from the input in blue/red), ``progression.gif`` and ``progression.json``. ``kwargs`` go to
    :func:`simulate_cxr_progression` (rounds, strength, steps, guidance, blending, seed).

    Returns:
        The JSON summary (paths, parameters, per-round statistics, seconds).
    """
    t0 = time.perf_counter()
    out = Path(output_dir)
    src = Path(image_path)
    outputs = {"roi.png", "progression_strip.png", "progression.gif", "progression.json"}
    for given in [src] + ([Path(roi_path)] if roi_path else []):
        if out.resolve() == given.resolve().parent and (given.name in outputs or given.name.startswith("frame_")):
            raise ValueError(f"output_dir would overwrite {str(given)!r}; choose another folder.")
    original, model_image = load_cxr(src, image_size)
    roi = _load_roi(roi_path, original.shape, image_size) if roi_path else None
    device = torch.device(device)
    network = network.to(device).eval()
    t_edit = time.perf_counter()
    result = simulate_cxr_progression(network, scheduler, model_image.to(device), prompt,
                                      roi=None if roi is None else roi.to(device), roi_region=roi_region, **kwargs)
    edit_seconds = time.perf_counter() - t_edit
    frames = result.frames[:, 0, 0].float().cpu()  # (N+1, H, W) model grid
    change = _resize((frames - frames[0])[:, None], original.shape, "bilinear")[:, 0].numpy()
    full = [np.clip(original + change[n], 0, 1) if n else original for n in range(frames.shape[0])]
    paths = [str(save_png16(f, out / f"frame_{n:02d}.png")) for n, f in enumerate(full)]
    roi_full = _resize(result.roi_mask[:1].float().cpu(), original.shape, "nearest")[0, 0].numpy()
    save_png((roi_full > 0.5).astype(np.uint8) * 255, out / "roi.png")
    labels = ["input"] + [f"round {n}" for n in range(1, len(full))]
    save_png(frame_strip(full, labels), out / "progression_strip.png")
    save_gif(full, out / "progression.gif", labels=labels)
    summary = {
        "input": str(src),
        "prompt": prompt,
        "roi": roi_path or f"default {roi_region} region",
        "image_size": list(image_size),
        "input_shape": list(original.shape),
        "params": result.params,
        "rounds": result.statistics(),
        "frames": paths,
        "roi_png": str(out / "roi.png"),
        "strip": str(out / "progression_strip.png"),
        "gif": str(out / "progression.gif"),
        "seconds": round(time.perf_counter() - t0, 2),
        "seconds_per_round": round(edit_seconds / max(len(full) - 1, 1), 3),  # PIE only, without file I/O
        "device": str(device),
    }
    atomic_write_text(out / "progression.json", json.dumps(summary, indent=2))
    return summary


def progression_main(
    network: LatentDiffusionModel,
    scheduler: Any,
    output_dir: str,
    image: str | None = None,
    roi: str | None = None,
    datalist: str | None = None,
    dataset_dir: str | None = None,
    datalist_split: str = "test",
    **kwargs: Any,
) -> dict[str, Any]:
    """Bundle entry point: one ``image`` (+ optional ``roi`` mask file), or every item of
    ``datalist[datalist_split]`` (items: ``image``, optional ``roi`` and ``prompt``), each to
    ``output_dir/<image stem>/``."""
    options = {"roi": ("roi_path", str), "prompt": ("prompt", str)}

    def run_one(path: str, out: str, **kw: Any) -> dict[str, Any]:
        return run_cxr_progression(network, scheduler, path, out, **kw)

    return run_image_or_datalist(run_one, output_dir, image, roi, datalist, dataset_dir, datalist_split, options,
                                 image_hint="a PNG/JPEG/DICOM/NIfTI radiograph", **kwargs)
