"""Validation of the brain bundles on synthetic subjects with known truth; writes a markdown report with figures.

    monai-pie validate brain --cohort_dir COHORT --model_path bundles/brain_mri_ldm/models/model.pt

Progression: held-out CN subjects (new seeds, never in the cohort) are edited toward AD; per round we read GM,
hippocampal-region GM and ventricle volume with ``BrainMarkers`` and report Spearman rho against the round, the change
outside the ROI, the per-round change decay, and how the edit compares with the subject's TRUE change (the same
subject, same noise, re-rendered at the target stage). Generation: MS-SSIM diversity and a memorisation audit.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from ..data.brain_cohort import load_brain_template, synthesize_brain_subject
from ..bundle_tools import load_bundle_model
from ..metrics import BrainMarkers, ms_ssim_diversity, nearest_neighbour_distances, spearman_rho
from ..utils import atomic_write_text
from .brain import default_brain_roi, generate_brain_volumes, run_brain_progression
from .visualize import frame_strip, save_png

__all__ = ["load_brain_bundle", "validate_brain"]

HELD_OUT_SEED = 900_000  # subject seeds far from any cohort's spawn keys


def load_brain_bundle(bundle_dir: str | Path, model_path: str | Path | None = None, device: str = "cpu",
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a brain bundle's ``inference.json`` (with optional config ``overrides``): network, scheduler, grid."""
    bundle = load_bundle_model(bundle_dir, model_path, device, overrides)
    return {**bundle, "pixdim": bundle["parser"]["pixdim"], "image_size": bundle["parser"]["image_size"]}


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), str(path))
    return str(path)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def validate_progression(bundle: dict[str, Any], out_dir: Path, num_subjects: int, num_rounds: int,
                         num_inference_steps: int, guidance_scale: float, strength: float, device: str,
                         target_stage: float = 0.9) -> dict[str, Any]:
    template = load_brain_template()
    voxel_ml = float(abs(np.linalg.det(template.affine[:3, :3]))) / 1000.0
    rois = {"hippocampal": template.hippocampal_roi, "ventricle": template.ventricle_roi}
    subjects, strips = [], []
    tmp = Path(tempfile.mkdtemp(prefix="brain_val_"))
    for i in range(num_subjects):
        seed, age, sex = HELD_OUT_SEED + i, 65.0 + 3 * i, i % 2
        cn = synthesize_brain_subject(seed, stage=0.05, age=age, sex=sex, template=template)
        ad = synthesize_brain_subject(seed, stage=target_stage, age=age, sex=sex, template=template)
        path = _save(cn["image"], cn["affine"], tmp / f"held_out_{i}.nii.gz")
        summary = run_brain_progression(
            bundle["network"], bundle["scheduler"], path, str(out_dir / "runs" / f"subject_{i}"),
            pixdim=bundle["pixdim"], image_size=bundle["image_size"], target_stage_value=target_stage, age=age, sex=sex,
            num_rounds=num_rounds, strength=strength, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, seed=i, device=device, progress=False)
        frames = [nib.load(p).get_fdata().astype(np.float32) for p in summary["frames"]]
        brain = ndimage.binary_dilation(template.mask > 0.5, iterations=2)
        x0 = frames[0] / max(float(np.percentile(frames[0], 99.5)), 1e-6)
        own_brain = default_brain_roi(torch.from_numpy(x0)[None, None])[0, 0].numpy()  # from the image, not the truth
        markers = BrainMarkers(own_brain, rois, voxel_ml, reference=frames[0])
        series = [markers(f) for f in frames]
        true_cn, true_ad = markers(cn["image"]), markers(ad["image"])
        edit = ndimage.gaussian_filter(frames[-1] - frames[0], 1.5)
        truth = ndimage.gaussian_filter(ad["image"] - cn["image"], 1.5)
        norms = [r["change_norm"][0] for r in summary["rounds"]]
        subjects.append({
            "seed": seed, "age": age, "sex": sex, "seconds": summary["seconds"],
            "markers": series, "true_cn": true_cn, "true_ad": true_ad,
            "rho": {k: spearman_rho(range(len(series)), [m[k] for m in series]) for k in series[0]},
            "change_inside": float(np.abs(frames[-1] - frames[0])[brain].mean()),
            "change_outside": float(np.abs(frames[-1] - frames[0])[~brain].mean()),
            "decay_ratio": float(np.median(np.array(norms[1:]) / np.array(norms[:-1]))) if len(norms) > 1 else float("nan"),
            "change_norms": norms,
            "direction_corr": _corr(edit[brain], truth[brain]),
        })
        strips.append((frames, summary["strip"]))
    frames, _ = strips[0]
    save_png(frame_strip([frames[0], frames[len(frames) // 2], frames[-1]],
                         ["held-out CN", f"round {len(frames) // 2}", f"round {len(frames) - 1}"], height=140),
             out_dir / "figures" / "brain_progression_strip.png")
    cn0 = synthesize_brain_subject(HELD_OUT_SEED, stage=0.05, age=65.0, sex=0, template=template)
    ad0 = synthesize_brain_subject(HELD_OUT_SEED, stage=target_stage, age=65.0, sex=0, template=template)
    save_png(frame_strip([cn0["image"], ad0["image"]], ["truth: stage 0.05", f"truth: stage {target_stage}"], height=140),
             out_dir / "figures" / "brain_true_atrophy_strip.png")
    return {"subjects": subjects, "voxel_ml": voxel_ml}


def validate_generation(bundle: dict[str, Any], cohort_dir: Path, out_dir: Path, num_samples: int,
                        num_inference_steps: int, guidance_scale: float, device: str, max_train: int = 40) -> dict[str, Any]:
    from monai.data import load_decathlon_datalist

    from .brain_io import brain_transforms
    from monai.transforms import Compose

    datalist = load_decathlon_datalist(str(cohort_dir / "datalist.json"), True, "training", base_dir=str(cohort_dir))
    pre = Compose(brain_transforms(bundle["pixdim"], bundle["image_size"]))
    train = torch.stack([pre({"image": d["image"]})["image"] for d in datalist[:max_train]])
    ref_image = datalist[0]["image"]
    out = {}
    template = load_brain_template()
    for name, cov in (("CN", {"age": 70.0, "sex": 0, "stage": 0.05}), ("AD", {"age": 70.0, "sex": 0, "stage": 0.9})):
        summary = generate_brain_volumes(bundle["network"], bundle["scheduler"], str(out_dir / "generated" / name),
                                         ref_image, cov, num_samples, bundle["pixdim"], bundle["image_size"],
                                         num_inference_steps, guidance_scale, seed=1, device=device, progress=False)
        samples = torch.stack([torch.from_numpy(nib.load(p).get_fdata().astype(np.float32))[None] for p in summary["samples"]])
        nn_gen = nearest_neighbour_distances(samples, train)
        nn_train = nearest_neighbour_distances(train, train, exclude_self=True)
        out[name] = {
            "ms_ssim": ms_ssim_diversity(samples), "ms_ssim_train": ms_ssim_diversity(train[:num_samples]),
            "nn_gen_mean": float(nn_gen.mean()), "nn_gen_min": float(nn_gen.min()),
            "nn_train_mean": float(nn_train.mean()), "nn_train_min": float(nn_train.min()),
            "seconds_per_volume": summary["seconds_per_volume"], "samples": samples,
        }
    # conditioning check: ventricle CSF of generated AD vs CN, read in the model grid with fixed central ROI
    for name in out:
        s = out[name].pop("samples")
        out[name]["mean_intensity_central"] = float(s[..., 30:50, 36:60, 30:50].mean())
        save_png(frame_strip([v[0].numpy() for v in s[:3]], [f"{name} sample {k}" for k in range(min(3, len(s)))],
                             diff=False, height=120), out_dir / "figures" / f"brain_generated_{name}.png")
    del template
    return out


def _fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def write_report(prog: dict[str, Any], gen: dict[str, Any] | None, params: dict[str, Any], path: Path) -> str:
    subs = prog["subjects"]
    keys = list(subs[0]["markers"][0])
    lines = [
        "# Brain progression validation (synthetic subjects with known truth)", "",
        f"Command: `{params['command']}`  ",
        f"Model: `{params['model_path']}`; {len(subs)} held-out CN subjects (stage 0.05, seeds {HELD_OUT_SEED}+), "
        f"edited toward stage {params['target_stage']} (AD) for {params['num_rounds']} rounds, strength "
        f"{params['strength']}, {params['num_inference_steps']} steps, guidance {params['guidance_scale']}, ROI = "
        f"whole brain (automatic); device {params['device']}; {params['seconds']:.0f} s in all.", "",
        "Markers are read with `monai_pie.metrics.BrainMarkers`: partial-volume unmixing between CSF/GM/WM k-means "
        "class means fixed from frame 0, inside a brain mask thresholded from frame 0; hippocampal GM inside the "
        "cohort's hippocampal ROI; ventricle volume = CSF fraction inside the ventricle ROI; parenchyma = GM + WM. "
        "The truth rows apply the same reader to the subject re-rendered at each stage, so they show what the reader "
        "sees of the true atrophy (single-channel unmixing reads whole GM upward under atrophy: see the metric's "
        "docstring).", "",
        "## Markers per round (mean over subjects)", "",
        "| round | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|",
    ]
    n_frames = len(subs[0]["markers"])
    for r in range(n_frames):
        vals = [np.mean([s["markers"][r][k] for s in subs]) for k in keys]
        lines.append(f"| {r} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    true_cn = [np.mean([s["true_cn"][k] for s in subs]) for k in keys]
    true_ad = [np.mean([s["true_ad"][k] for s in subs]) for k in keys]
    lines += [f"| truth, stage 0.05 | " + " | ".join(f"{v:.2f}" for v in true_cn) + " |",
              f"| truth, stage {params['target_stage']} | " + " | ".join(f"{v:.2f}" for v in true_ad) + " |", ""]
    lines += ["## Per subject", "",
              "| subject | " + " | ".join(f"rho {k}" for k in keys) + " | PIE change of " + ", ".join(keys) +
              " | true change | direction corr | mean abs change in / outside brain | median per-round decay |",
              "|---" * (len(keys) + 6) + "|"]
    for i, s in enumerate(subs):
        pie_d = ", ".join(f"{s['markers'][-1][k] - s['markers'][0][k]:+.2f}" for k in keys)
        true_d = ", ".join(f"{s['true_ad'][k] - s['true_cn'][k]:+.2f}" for k in keys)
        lines.append(f"| {i} | " + " | ".join(_fmt(s["rho"][k], 2) for k in keys) + f" | {pie_d} | {true_d} | "
                     f"{_fmt(s['direction_corr'], 2)} | {s['change_inside']:.4f} / {s['change_outside']:.5f} | "
                     f"{_fmt(s['decay_ratio'], 2)} |")
    med = {k: float(np.nanmedian([s["rho"][k] for s in subs])) for k in keys}
    lines += ["", "Median Spearman rho against the round: " + ", ".join(f"{k} {v:+.2f}" for k, v in med.items()) +
              f". Median direction correlation with the true atrophy map: "
              f"{np.nanmedian([s['direction_corr'] for s in subs]):.2f}.", "",
              "![PIE frames](../figures/brain_progression_strip.png)", "",
              "![True atrophy of the same subject](../figures/brain_true_atrophy_strip.png)", ""]
    if gen:
        lines += ["## Generation", "",
                  "| covariates | MS-SSIM between samples (lower = more diverse) | MS-SSIM between training images | "
                  "nearest training image, mean / min MAE | training-to-training nearest, mean / min MAE | s / volume |",
                  "|---|---|---|---|---|---|"]
        for name, g in gen.items():
            lines.append(f"| {name} | {g['ms_ssim']:.3f} | {g['ms_ssim_train']:.3f} | {g['nn_gen_mean']:.4f} / "
                         f"{g['nn_gen_min']:.4f} | {g['nn_train_mean']:.4f} / {g['nn_train_min']:.4f} | "
                         f"{g['seconds_per_volume']:.1f} |")
        lines += ["", "A sample closer to a training image than training images are to each other would suggest "
                  "memorisation.", "", "![CN samples](../figures/brain_generated_CN.png)", "",
                  "![AD samples](../figures/brain_generated_AD.png)", ""]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def validate_brain(cohort_dir: str, model_path: str | None = None, bundle_dir: str = "bundles/brain_mri_ldm",
                   output_dir: str = "docs", num_subjects: int = 4, num_rounds: int = 8, strength: float = 0.5,
                   num_inference_steps: int = 50, guidance_scale: float = 3.0, target_stage: float = 0.9,
                   num_samples: int = 4, device: str = "cpu", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the progression and generation validation; writes ``<output_dir>/validation/brain_progression.md``."""
    t0 = time.perf_counter()
    out = Path(output_dir)
    bundle = load_brain_bundle(bundle_dir, model_path, device, overrides)
    work = out / "validation" / "brain_work"
    prog = validate_progression(bundle, work, num_subjects, num_rounds, num_inference_steps, guidance_scale, strength,
                                device, target_stage)
    for png in (work / "figures").glob("*.png"):
        (out / "figures").mkdir(parents=True, exist_ok=True)
        png.replace(out / "figures" / png.name)
    gen = validate_generation(bundle, Path(cohort_dir), work, num_samples, num_inference_steps, guidance_scale, device)
    for png in (work / "figures").glob("*.png"):
        png.replace(out / "figures" / png.name)
    params = {"model_path": str(model_path or Path(bundle_dir) / "models" / "model.pt"), "num_rounds": num_rounds,
              "strength": strength, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
              "target_stage": target_stage, "device": device, "seconds": time.perf_counter() - t0,
              "command": f"monai-pie validate brain --cohort_dir {cohort_dir} --num_subjects {num_subjects}"}
    write_report(prog, gen, params, out / "validation" / "brain_progression.md")
    atomic_write_text(out / "validation" / "brain_progression.json",
                      json.dumps({"progression": prog, "generation": gen, "params": params}, indent=2, default=float))
    return {"report": str(out / "validation" / "brain_progression.md"), "seconds": params["seconds"]}
