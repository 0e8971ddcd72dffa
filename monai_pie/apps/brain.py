"""Brain MRI applications the bundles call: PIE progression of a T1, and covariate-conditioned generation."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..data.brain_cohort import diagnosis_from_stage
from ..inferers import DiffusionSampler, ProgressionInferer, make_generator
from ..networks import LatentDiffusionModel
from ..utils import atomic_write_text
from .brain_io import load_to_model_grid, from_model_grid, save_like
from .datalist_runner import run_image_or_datalist
from .visualize import frame_strip, save_gif, save_png

__all__ = [
    "DIAGNOSIS_STAGE",
    "default_brain_roi",
    "generate_brain_volumes",
    "progression_main",
    "run_brain_progression",
    "target_stage",
]

#: stage used when the target is given as a diagnosis (centres of the cohort's CN / MCI / AD stage bands)
DIAGNOSIS_STAGE = {"CN": 0.15, "MCI": 0.5, "AD": 0.9}


def target_stage(stage: float | None = None, diagnosis: str | None = None) -> float:
    """The target disease stage from a stage in [0, 1] or a diagnosis name (CN, MCI, AD)."""
    if stage is None and diagnosis is None:
        raise ValueError("give a target: `target_stage` in [0, 1] or `target_diagnosis` in CN/MCI/AD.")
    if stage is not None:
        if not 0.0 <= float(stage) <= 1.0:
            raise ValueError(f"`target_stage` must be in [0, 1], got {stage}.")
        return float(stage)
    key = str(diagnosis).upper()
    if key not in DIAGNOSIS_STAGE:
        raise ValueError(f"`target_diagnosis` must be one of {sorted(DIAGNOSIS_STAGE)}, got {diagnosis!r}.")
    return DIAGNOSIS_STAGE[key]


def default_brain_roi(image: torch.Tensor, threshold: float = 0.08, dilate: int = 1) -> torch.Tensor:
    """Whole-brain ROI ``(1, 1, *spatial)`` from a scaled T1 ``(1, 1, *spatial)``: foreground above ``threshold``,
    largest component, holes filled, dilated by ``dilate`` voxels."""
    fg = image[0, 0].cpu().numpy() > threshold
    fg = ndimage.binary_opening(fg, iterations=1)
    lab, n = ndimage.label(fg)
    if n == 0:
        raise ValueError("could not find the brain (no voxel above the threshold); give an ROI mask file.")
    sizes = ndimage.sum(np.ones_like(lab), lab, index=range(1, n + 1))
    brain = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    if dilate:
        brain = ndimage.binary_dilation(brain, iterations=dilate)
    return torch.from_numpy(brain.astype(np.float32))[None, None]


def _covariates(stage: float, age: float, sex: int) -> dict[str, list[float]]:
    return {"age": [float(age)], "sex": [float(sex)], "stage": [float(stage)]}


def run_brain_progression(
    network: LatentDiffusionModel,
    scheduler: Any,
    image_path: str,
    output_dir: str,
    pixdim: Sequence[float] = (2.0, 2.0, 2.0),
    image_size: Sequence[int] = (80, 96, 80),
    target_stage_value: float | None = None,
    target_diagnosis: str | None = "AD",
    age: float = 70.0,
    sex: int = 0,
    roi_path: str | None = None,
    num_rounds: int = 8,
    strength: float = 0.3,
    num_inference_steps: int = 50,
    guidance_scale: float = 3.0,
    blend_in: float = 0.3,
    blend_out: float = 0.01,
    anchor: str = "previous",
    n_restarts: int = 1,
    noise_mode: str = "stochastic",
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """PIE progression of one T1 toward a target stage/diagnosis; writes NIfTI frames, PNG strip, GIF and JSON.

    Outputs under ``output_dir`` (nothing else is touched; the input is never overwritten):
    ``frame_00.nii.gz`` (the input) ... ``frame_NN.nii.gz`` on the input's grid and affine, ``change_NN.nii.gz``
    (frame minus input), ``progression_strip.png``, ``progression.gif`` and ``progression.json``.

    Returns:
        The JSON summary (paths, parameters, per-round statistics, seconds).
    """
    t0 = time.perf_counter()
    out = Path(output_dir)
    image_path = str(image_path)
    if out.resolve() == Path(image_path).resolve().parent and Path(image_path).name.startswith("frame_"):
        raise ValueError("output_dir would overwrite the input; choose another folder.")
    stage = target_stage(target_stage_value, target_diagnosis if target_stage_value is None else None)
    if sex not in (0, 1):
        raise ValueError(f"`sex` must be 0 or 1, got {sex}.")
    vol = load_to_model_grid(image_path, pixdim, image_size, roi_path)
    device = torch.device(device)
    network = network.to(device).eval()
    roi = vol.roi if vol.roi is not None else default_brain_roi(vol.image)
    inferer = ProgressionInferer(
        scheduler, num_rounds=num_rounds, strength=strength, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, blend_in=blend_in, blend_out=blend_out, anchor=anchor,
        n_restarts=n_restarts, noise_mode=noise_mode, progress=progress,
    )
    cond = _covariates(stage, age, sex)
    result = inferer(vol.image.to(device), network, condition=cond, roi_mask=roi.to(device), seed=seed)

    out.mkdir(parents=True, exist_ok=True)
    frames_in, paths = [], []
    original = vol.original
    for n in range(result.frames.shape[0]):
        change = result.frames[n, 0] - result.frames[0, 0]  # (1, *image_size), model units
        delta = from_model_grid(vol, change) if n else torch.zeros_like(original)
        frame = original.as_tensor().float() + delta
        frames_in.append(frame[0].numpy())
        paths.append(str(save_like(frame, original, out / f"frame_{n:02d}.nii.gz")))
        if n:
            save_like(delta, original, out / f"change_{n:02d}.nii.gz")
    labels = ["input"] + [f"round {n}" for n in range(1, len(frames_in))]
    save_png(frame_strip(frames_in, labels), out / "progression_strip.png")
    save_gif(frames_in, out / "progression.gif", labels=labels)
    summary = {
        "input": image_path,
        "roi": roi_path or "whole brain (automatic)",
        "target": {"stage": stage, "diagnosis": diagnosis_from_stage(stage), "age": age, "sex": sex},
        "params": result.params,
        "seed": seed,
        "rounds": result.statistics(),
        "frames": paths,
        "strip": str(out / "progression_strip.png"),
        "gif": str(out / "progression.gif"),
        "seconds": round(time.perf_counter() - t0, 2),
        "device": str(device),
    }
    atomic_write_text(out / "progression.json", json.dumps(summary, indent=2))
    return summary


def generate_brain_volumes(
    network: LatentDiffusionModel,
    scheduler: Any,
    output_dir: str,
    reference_image: str,
    covariates: Mapping[str, float] | None = None,
    num_samples: int = 2,
    pixdim: Sequence[float] = (2.0, 2.0, 2.0),
    image_size: Sequence[int] = (80, 96, 80),
    num_inference_steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``num_samples`` T1 volumes for the given covariates; NIfTI files on the model grid.

    ``reference_image`` supplies the model grid's affine (any T1 on the training template, e.g. the bundle's example).
    """
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
    t0 = time.perf_counter()
    cov = dict(covariates or {"age": 70.0, "sex": 0, "stage": 0.0})
    ref = load_to_model_grid(reference_image, pixdim, image_size).reference
    device = torch.device(device)
    network = network.to(device).eval()
    with torch.no_grad():
        latent_shape = tuple(network.encode(torch.zeros(1, 1, *image_size, device=device)).shape[1:])
    sampler = DiffusionSampler(scheduler, num_inference_steps, progress=progress)
    g = make_generator(seed, device)
    out = Path(output_dir)
    paths = []
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        cond = {k: [float(v)] * b for k, v in cov.items()}
        with torch.no_grad():
            z = sampler.generate(network, (b, *latent_shape), generator=g, device=device, condition=cond,
                                 guidance_scale=guidance_scale)
            x = network.decode(z).clamp(0, 1).cpu()
        for i in range(b):
            paths.append(str(save_like(x[i], ref, out / f"sample_{start + i:03d}.nii.gz")))
    summary = {"covariates": cov, "num_samples": num_samples, "guidance_scale": guidance_scale,
               "num_inference_steps": num_inference_steps, "seed": seed, "samples": paths,
               "seconds": round(time.perf_counter() - t0, 2), "seconds_per_volume": round((time.perf_counter() - t0) / num_samples, 2)}
    atomic_write_text(out / "generation.json", json.dumps(summary, indent=2))
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
    """Bundle entry point: one ``image`` (+ optional ``roi``), or every item of ``datalist[datalist_split]``.

    Datalist items use ``image`` and optionally ``roi``, ``age``, ``sex``; each goes to ``output_dir/<image stem>/``.
    """
    options = {"roi": ("roi_path", str), "age": ("age", float), "sex": ("sex", int)}

    def run_one(path: str, out: str, **kw: Any) -> dict[str, Any]:
        return run_brain_progression(network, scheduler, path, out, **kw)

    return run_image_or_datalist(run_one, output_dir, image, roi, datalist, dataset_dir, datalist_split, options,
                                 image_hint="a T1 NIfTI", **kwargs)
