"""Generation checks of the brain LDM bundle on the synthetic cohort; writes a markdown report with figures.

    monai-pie validate brain COHORT --stage generation [--model_path bundles/brain_mri_ldm/models/model.pt]

Samples come from the ``brain_mri_ldm`` bundle's own workflow. Reported: MS-SSIM diversity, a memorisation audit
against every training image and every test image, and whether the stage condition reaches the samples. Progression
has its own protocol with tuning and evaluation splits: :mod:`monai_pie.validation.brain_protocol`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from ..bundle_tools import (
    bundle_dir,
    load_bundle_model,
    parse_bundle,
    run_bundle,
)
from ..data import foreground_roi, load_datalist, volume_transforms
from ..metrics import (
    BrainMarkers,
    ms_ssim_diversity,
    nearest_neighbour_distances,
)
from ..utils import atomic_write_text
from ..visualize import frame_strip, save_png
from ..vocabulary import DIAGNOSIS_THRESHOLDS, diagnosis_from_stage
from .settings import ProgressionSettings

__all__ = ["load_brain_bundle", "validate_brain"]



def load_brain_bundle(bundle: str | Path, model_path: str | Path | None = None, device: str = "cpu",
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a brain bundle's ``inference.json`` (with optional config ``overrides``): network, scheduler, grid, and
    what the validation passes on to the bundle runs (model path, device, network overrides)."""
    loaded = load_bundle_model(bundle, model_path, device, overrides)
    return {**loaded, "pixdim": loaded["parser"]["pixdim"], "image_size": loaded["parser"]["image_size"],
            "device": device, "overrides": dict(overrides or {})}


def _mean_markers(readings: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([m[k] for m in readings])) for k in readings[0]} if readings else {}


def _model_grid_markers(preprocessing: Any, cohort_dir: Path, ref_image: str, pixdim: Any, datalist: list[dict],
                        train: torch.Tensor) -> BrainMarkers:
    """``BrainMarkers`` on the model grid: the cohort's ROIs resampled by the progression bundle's own pipeline,
    class means from the first real CN training image (``train`` is ``(N, 1, *image_size)`` on the model grid, in
    datalist order)."""
    rois = {name: preprocessing({"image": ref_image, "roi": str(cohort_dir / "rois" / f"{name}_roi.nii.gz")})["roi"][0]
            .numpy() for name in ("hippocampal", "ventricle")}
    cn = next((i for i, d in enumerate(datalist[:len(train)]) if float(d["stage"]) < DIAGNOSIS_THRESHOLDS[0]), 0)
    reference = train[cn, 0].numpy()
    brain = foreground_roi(train[cn])[0].numpy()
    return BrainMarkers(brain, rois, float(np.prod(pixdim)) / 1000.0, reference=reference)


def covariate_matched(items: list[dict[str, Any]], covariates: dict[str, float], limit: int,
                      age_window: float = 10.0) -> list[int]:
    """Indices of up to ``limit`` items of the same diagnosis and sex as ``covariates`` and an age within
    ``age_window`` years, one per subject (a subject's later visits share its anatomy and would make the reference
    look less diverse than the cohort)."""
    want, seen, out = diagnosis_from_stage(covariates["stage"]), set(), []
    for i, d in enumerate(items):
        subject = d.get("subject_id", i)
        same_age = abs(float(d["age"]) - covariates["age"]) <= age_window
        if (subject not in seen and int(d["sex"]) == int(covariates["sex"]) and same_age
                and diagnosis_from_stage(d["stage"]) == want):
            seen.add(subject)
            out.append(i)
    return out[:limit]


def _generate(bundle: dict[str, Any], ldm_bundle: str | Path, covariates: dict[str, float], num_samples: int,
              out_dir: Path, settings: ProgressionSettings) -> dict[str, Any]:
    """Samples of the LDM bundle's own workflow for ``covariates`` (seed 1); its ``generation.json`` summary."""
    run_bundle(ldm_bundle, {**bundle["overrides"], "covariates": covariates, "num_samples": num_samples, "seed": 1,
                            "output_dir": str(out_dir), "num_inference_steps": settings.num_inference_steps,
                            "guidance_scale": settings.guidance_scale, "model_path": bundle["model_path"],
                            "device": torch.device(bundle["device"]), "progress": False})
    return json.loads((out_dir / "generation.json").read_text())


def validate_generation(bundle: dict[str, Any], ldm_bundle: str | Path, progression_bundle: str | Path,
                        cohort_dir: Path, out_dir: Path, num_samples: int, settings: ProgressionSettings,
                        max_train: int | None = None) -> dict[str, Any]:
    from monai.transforms import Compose

    device = bundle["device"]
    datalist = load_datalist(cohort_dir / "datalist.json", "training", cohort_dir)
    pre = Compose(volume_transforms(bundle["pixdim"], bundle["image_size"]))
    train = torch.stack([pre({"image": d["image"]})["image"] for d in datalist[:max_train]])
    test_items = load_datalist(cohort_dir / "datalist.json", "test", cohort_dir)
    test = torch.stack([pre({"image": d["image"]})["image"] for d in test_items]) if test_items else train[:0]
    ref_image = datalist[0]["image"]
    out = {}
    net = bundle["network"]
    with torch.no_grad():  # training images through the autoencoder: the floor of any sample-to-training distance
        recon = torch.cat([net.decode(net.encode(train[i:i + 4].to(device))).clamp(0, 1).cpu()
                           for i in range(0, len(train), 4)])
    ae_floor = float((recon - train).abs().mean())
    for name, cov in (("CN", {"age": 70.0, "sex": 0, "stage": 0.05}), ("AD", {"age": 70.0, "sex": 0, "stage": 0.9})):
        matched = covariate_matched(datalist[:len(train)], cov, max(num_samples, 8))
        summary = _generate(bundle, ldm_bundle, cov, num_samples, out_dir / "generated" / name, settings)
        samples = torch.stack([torch.from_numpy(nib.load(p).get_fdata().astype(np.float32))[None] for p in summary["samples"]])
        nn_gen = nearest_neighbour_distances(samples, train)
        nn_train = nearest_neighbour_distances(train, train, exclude_self=True)
        nn_test = nearest_neighbour_distances(samples, test) if len(test) else torch.full((1,), float("nan"))
        out[name] = {
            "ms_ssim": ms_ssim_diversity(samples), "ms_ssim_train": ms_ssim_diversity(train[:num_samples]),
            "ms_ssim_matched_reconstructed": ms_ssim_diversity(recon[matched]) if len(matched) > 1 else None,
            "num_matched": len(matched),
            "nn_gen_mean": float(nn_gen.mean()), "nn_gen_min": float(nn_gen.min()),
            "nn_train_mean": float(nn_train.mean()), "nn_train_min": float(nn_train.min()),
            "nn_test_mean": float(nn_test.mean()), "nn_test_min": float(nn_test.min()),
            "num_train": len(train), "num_test": len(test),
            "seconds_per_volume": summary["seconds_per_volume"], "samples": samples, "ae_reconstruction_mae": ae_floor,
        }
    # conditioning check: the same marker reader on generated CN / AD samples and on real training CN / AD images
    preprocessing = parse_bundle(progression_bundle, bundle["overrides"]).get_parsed_content("preprocessing")
    markers = _model_grid_markers(preprocessing, cohort_dir, ref_image, bundle["pixdim"], datalist, train)
    stages = np.array([float(d["stage"]) for d in datalist[:len(train)]])
    for name, pick in (("CN", stages < DIAGNOSIS_THRESHOLDS[0]), ("AD", stages >= DIAGNOSIS_THRESHOLDS[1])):
        s = out[name].pop("samples")
        gen_m = [markers(v[0].numpy()) for v in s]
        pick = torch.from_numpy(pick)  # the reconstructions show what the reader sees of real images at the AE's blur
        real_m, recon_m = [markers(v[0].numpy()) for v in train[pick]], [markers(v[0].numpy()) for v in recon[pick]]
        out[name].update(markers=_mean_markers(gen_m), real_markers=_mean_markers(real_m),
                         real_reconstructed_markers=_mean_markers(recon_m), marker_samples=gen_m,
                         reconstructed_marker_samples=recon_m)
        out[name]["num_real"] = len(real_m)
        save_png(frame_strip([v[0].numpy() for v in s[:3]], [f"{name} sample {k}" for k in range(min(3, len(s)))],
                             diff=False, height=120), out_dir / "figures" / f"brain_generated_{name}.png")
    return out


def _fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def write_report(gen: dict[str, Any], params: dict[str, Any], path: Path) -> str:
    lines = [
        "# Brain LDM generation checks (synthetic cohort)", "",
        f"Command: `{params['command']}`  ",
        f"Model: `{params['model_path']}`; {params['num_samples']} samples per covariate set "
        f"({params.get('num_inference_steps', '?')} sampler steps, guidance {params.get('guidance_scale', '?')}); "
        "memorisation searched "
        f"all {params['num_train']} training images and {params['num_test']} test images; device {params['device']}; "
        f"{params['seconds']:.0f} s in all.", "",
        "**Synthetic to real caveat: the model was trained on this generator's images; nothing here shows the same on "
        "real scans.** Progression (PIE and the counterfactual mode) is validated separately, with null controls and "
        "baselines: `brain_progression.md`.", "",
        "| covariates | MS-SSIM between samples (lower = more diverse) | MS-SSIM between training images | "
        "MS-SSIM between covariate-matched training images through the autoencoder (n) | "
        "nearest training image, mean / min MAE | training-to-training nearest, mean / min MAE | "
        "nearest test image, mean / min MAE | s / volume |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in gen.items():
        matched_ms_ssim = g.get("ms_ssim_matched_reconstructed")
        lines.append(f"| {name} | {g['ms_ssim']:.3f} | {g['ms_ssim_train']:.3f} | "
                     f"{_fmt(matched_ms_ssim)} ({g.get('num_matched', 0)}) | {g['nn_gen_mean']:.4f} / "
                     f"{g['nn_gen_min']:.4f} | {g['nn_train_mean']:.4f} / {g['nn_train_min']:.4f} | "
                     f"{g['nn_test_mean']:.4f} / {g['nn_test_min']:.4f} | {g['seconds_per_volume']:.1f} |")
    lines += ["", "Diversity is compared with real images of the same diagnosis, sex and age (within 10 years; one per "
              "subject) through the autoencoder: its blur alone makes images more alike, so that column, not the "
              "sharp training images, is what a sampler that covers the data would show.", "",
              "A sample closer to a training image than training images are to each other, or much closer to "
              "training than to test images, would suggest memorisation. The autoencoder alone reconstructs training "
              f"images with MAE {next(iter(gen.values())).get('ae_reconstruction_mae', float('nan')):.4f}: no sample "
              "can come closer to a training image than that floor.", "",
              "### Does the stage condition reach the samples? (same reader, model grid)", "",
              "| covariates | " + " | ".join(f"generated {k}" for k in next(iter(gen.values()))["markers"]) +
              " | real training images of that diagnosis: " + ", ".join(next(iter(gen.values()))["markers"]) +
              " | the same real images through the autoencoder |",
              "|---" * (len(next(iter(gen.values()))["markers"]) + 3) + "|"]
    for name, g in gen.items():
        real = ", ".join(f"{v:.1f}" for v in g["real_markers"].values()) or "none"
        recon = ", ".join(f"{v:.1f}" for v in g["real_reconstructed_markers"].values()) or "none"
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in g["markers"].values()) +
                     f" | {real} (n = {g['num_real']}) | {recon} |")
    lines += ["", "Generated at age 70, sex 0, stage 0.05 (CN) and 0.9 (AD) from the same seeds; real images "
              "span all ages. The reader's tissue classes come from a sharp real image, so the autoencoder's blur alone "
              "moves its absolute readings (compare with the last column); the CN -> AD difference is the "
              "conditioning check.", "", "![CN samples](../figures/brain_generated_CN.png)", "",
              "![AD samples](../figures/brain_generated_AD.png)", ""]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def validate_brain(cohort_dir: str, model_path: str | None = None, bundle: str = "brain_mri_ldm",
                   progression_bundle: str = "brain_mri_progression", output_dir: str = "outputs",
                   num_samples: int = 4, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                   device: str = "cpu", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generation checks of the LDM bundle: diversity, memorisation against every training and test image, and
    whether the stage condition reaches the samples. Writes ``<output_dir>/validation/brain_generation.md`` (and
    ``.json``) and figures under ``<output_dir>/figures``. Sampling steps and guidance default to the LDM bundle's
    own (what its users get). The cohort is checked before anything long runs.
    """
    t0 = time.perf_counter()
    cohort = Path(cohort_dir)
    load_datalist(cohort / "datalist.json", "training", cohort)  # fail now, not after sampling
    for name in ("hippocampal", "ventricle"):
        if not (cohort / "rois" / f"{name}_roi.nii.gz").is_file():
            raise FileNotFoundError(f"{cohort} lacks rois/{name}_roi.nii.gz: make the cohort with "
                                    "`monai-pie synth brain DIR`.")
    ldm, progression = bundle_dir(bundle), bundle_dir(progression_bundle)
    loaded = load_brain_bundle(ldm, model_path, device, overrides)
    ldm_config = loaded["parser"]  # the user's overrides (e.g. steps) included
    settings = ProgressionSettings.from_config(
        parse_bundle(progression).config,
        num_inference_steps=num_inference_steps if num_inference_steps is not None
        else ldm_config["num_inference_steps"],
        guidance_scale=guidance_scale if guidance_scale is not None else ldm_config["guidance_scale"])
    out = Path(output_dir)
    work = out / "validation" / "brain_work"
    gen = validate_generation(loaded, ldm, progression, cohort, work, num_samples, settings)
    for png in (work / "figures").glob("*.png"):
        (out / "figures").mkdir(parents=True, exist_ok=True)
        png.replace(out / "figures" / png.name)
    counts = {k: gen[next(iter(gen))].pop(k) for k in ("num_train", "num_test")}
    for g in gen.values():
        g.pop("num_train", None), g.pop("num_test", None)
    command = (f"monai-pie validate brain {cohort_dir} --stage generation --output_dir {output_dir} "
               f"--num_samples {num_samples}" + (f" --model_path {model_path}" if model_path else ""))
    params = {"model_path": loaded["model_path"], "num_samples": num_samples, **counts, "device": device,
              "seconds": time.perf_counter() - t0, "command": command,
              "num_inference_steps": settings.num_inference_steps, "guidance_scale": settings.guidance_scale}
    write_report(gen, params, out / "validation" / "brain_generation.md")
    atomic_write_text(out / "validation" / "brain_generation.json",
                      json.dumps({"generation": gen, "params": params}, indent=2, default=float))
    return {"report": str(out / "validation" / "brain_generation.md"), "seconds": params["seconds"]}
