"""Validation of the brain bundles on synthetic subjects with known truth; writes a markdown report with figures.

    monai-pie validate brain COHORT --output_dir docs [--model_path bundles/brain_mri_ldm/models/model.pt]

Every run goes through the bundles themselves (``brain_mri_progression`` and ``brain_mri_ldm``, their workflows
with overrides), so what is measured is what users run.

Progression: held-out CN subjects (new seeds, never in the cohort) are edited toward AD; per round we read GM,
hippocampal-region GM and ventricle volume with ``BrainMarkers`` and report Spearman rho against the round, the change
outside the ROI, the per-round change decay, and how the edit compares with the subject's TRUE change (the same
subject, same noise, re-rendered at the target stage). Generation: MS-SSIM diversity and a memorisation audit.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from ..bundle_tools import bundle_dir, find_handler, load_bundle_model, parse_bundle, run_bundle
from ..engines import ProgressionSummary
from ..data import foreground_roi, load_datalist, volume_transforms
from ..data.synthetic.brain import load_brain_template, synthesize_brain_subject
from ..metrics import BrainMarkers, ms_ssim_diversity, nearest_neighbour_distances, spearman_rho
from ..utils import atomic_write_text
from ..visualize import frame_strip, save_png
from ..vocabulary import DIAGNOSIS_THRESHOLDS
from .settings import SWEEP_SETTINGS, ProgressionSettings

__all__ = ["load_brain_bundle", "validate_brain"]

HELD_OUT_SEED = 900_000  # subject seeds far from any cohort's spawn keys


def load_brain_bundle(bundle: str | Path, model_path: str | Path | None = None, device: str = "cpu",
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a brain bundle's ``inference.json`` (with optional config ``overrides``): network, scheduler, grid, and
    what the validation passes on to the bundle runs (model path, device, network overrides)."""
    loaded = load_bundle_model(bundle, model_path, device, overrides)
    return {**loaded, "pixdim": loaded["parser"]["pixdim"], "image_size": loaded["parser"]["image_size"],
            "device": device, "overrides": dict(overrides or {})}


def _run_progressions(bundle: dict[str, Any], progression_bundle: str | Path, items: list[dict[str, Any]],
                      out_dir: Path, settings: ProgressionSettings, target_stage: float) -> list[dict[str, Any]]:
    """Every item through the progression bundle's workflow (one run, per-item age, sex and seed); the summaries."""
    overrides = {**bundle["overrides"], **settings.as_dict(), "datalist": items, "output_dir": str(out_dir),
                 "output_subfolders": True, "model_path": bundle["model_path"], "target_stage": target_stage,
                 "device": torch.device(bundle["device"]), "progress": False}
    parser = run_bundle(progression_bundle, overrides)
    return find_handler(parser, ProgressionSummary).summaries


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), str(path))
    return str(path)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def validate_progression(bundle: dict[str, Any], progression_bundle: str | Path, out_dir: Path, num_subjects: int,
                         settings: ProgressionSettings, target_stage: float, figures: bool = True) -> dict[str, Any]:
    template = load_brain_template()
    voxel_ml = float(abs(np.linalg.det(template.affine[:3, :3]))) / 1000.0
    rois = {"hippocampal": template.hippocampal_roi, "ventricle": template.ventricle_roi}
    subjects, strips = [], []
    with tempfile.TemporaryDirectory(prefix="brain_val_") as tmp:
        truths, items = [], []
        for i in range(num_subjects):
            seed, age, sex = HELD_OUT_SEED + i, 65.0 + 3 * i, i % 2
            cn = synthesize_brain_subject(seed, stage=0.05, age=age, sex=sex, template=template)
            ad = synthesize_brain_subject(seed, stage=target_stage, age=age, sex=sex, template=template)
            truths.append((seed, age, sex, cn, ad))
            items.append({"image": _save(cn["image"], cn["affine"], Path(tmp) / f"subject_{i}.nii.gz"), "age": age,
                          "sex": sex, "seed": i})
        summaries = _run_progressions(bundle, progression_bundle, items, out_dir / "runs", settings, target_stage)
    for (seed, age, sex, cn, ad), summary in zip(truths, summaries):
        frames = [nib.load(p).get_fdata().astype(np.float32) for p in summary["frames"]]
        brain = ndimage.binary_dilation(template.mask > 0.5, iterations=2)
        x0 = frames[0] / max(float(np.percentile(frames[0], 99.5)), 1e-6)
        own_brain = foreground_roi(torch.from_numpy(x0)[None])[0].numpy()  # from the image, not the truth
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
    if not figures:
        return {"subjects": subjects, "voxel_ml": voxel_ml}
    frames, _ = strips[0]
    save_png(frame_strip([frames[0], frames[len(frames) // 2], frames[-1]],
                         ["held-out CN", f"round {len(frames) // 2}", f"round {len(frames) - 1}"], height=140),
             out_dir / "figures" / "brain_progression_strip.png")
    cn0 = synthesize_brain_subject(HELD_OUT_SEED, stage=0.05, age=65.0, sex=0, template=template)
    ad0 = synthesize_brain_subject(HELD_OUT_SEED, stage=target_stage, age=65.0, sex=0, template=template)
    save_png(frame_strip([cn0["image"], ad0["image"]], ["truth: stage 0.05", f"truth: stage {target_stage}"], height=140),
             out_dir / "figures" / "brain_true_atrophy_strip.png")
    return {"subjects": subjects, "voxel_ml": voxel_ml}


def sweep_progression_settings(bundle: dict[str, Any], progression_bundle: str | Path, out_dir: Path,
                               num_subjects: int, settings: ProgressionSettings, target_stage: float,
                               done: dict[tuple, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Median marker rho, mean marker change and direction correlation for each of :data:`SWEEP_SETTINGS`.

    ``done`` maps ``(strength, blend_in, anchor)`` to subjects already run with that setting (the main run), which
    are reused instead of run again.
    """
    rows = []
    for strength, blend_in, anchor in SWEEP_SETTINGS:
        subs = (done or {}).get((strength, blend_in, anchor)) or validate_progression(
            bundle, progression_bundle, out_dir / f"sweep_{strength}_{blend_in}_{anchor}", num_subjects,
            settings.with_edit(strength, blend_in, anchor), target_stage, figures=False)["subjects"]
        keys = list(subs[0]["rho"])
        rows.append({
            "strength": strength, "blend_in": blend_in, "anchor": anchor,
            "rho_median": {k: float(np.nanmedian([s["rho"][k] for s in subs])) for k in keys},
            "change_round_1": {k: float(np.mean([s["markers"][1][k] - s["markers"][0][k] for s in subs])) for k in keys},
            "change_last": {k: float(np.mean([s["markers"][-1][k] - s["markers"][0][k] for s in subs])) for k in keys},
            "true_change": {k: float(np.mean([s["true_ad"][k] - s["true_cn"][k] for s in subs])) for k in keys},
            "direction_corr": float(np.nanmedian([s["direction_corr"] for s in subs])),
        })
    return rows


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
                        max_train: int = 40) -> dict[str, Any]:
    from monai.transforms import Compose

    device = bundle["device"]
    datalist = load_datalist(cohort_dir / "datalist.json", "training", cohort_dir)
    pre = Compose(volume_transforms(bundle["pixdim"], bundle["image_size"]))
    train = torch.stack([pre({"image": d["image"]})["image"] for d in datalist[:max_train]])
    ref_image = datalist[0]["image"]
    out = {}
    net = bundle["network"]
    with torch.no_grad():  # training images through the autoencoder: the floor of any sample-to-training distance
        recon = torch.cat([net.decode(net.encode(train[i:i + 4].to(device))).clamp(0, 1).cpu()
                           for i in range(0, len(train), 4)])
    ae_floor = float((recon - train).abs().mean())
    for name, cov in (("CN", {"age": 70.0, "sex": 0, "stage": 0.05}), ("AD", {"age": 70.0, "sex": 0, "stage": 0.9})):
        summary = _generate(bundle, ldm_bundle, cov, num_samples, out_dir / "generated" / name, settings)
        samples = torch.stack([torch.from_numpy(nib.load(p).get_fdata().astype(np.float32))[None] for p in summary["samples"]])
        nn_gen = nearest_neighbour_distances(samples, train)
        nn_train = nearest_neighbour_distances(train, train, exclude_self=True)
        out[name] = {
            "ms_ssim": ms_ssim_diversity(samples), "ms_ssim_train": ms_ssim_diversity(train[:num_samples]),
            "nn_gen_mean": float(nn_gen.mean()), "nn_gen_min": float(nn_gen.min()),
            "nn_train_mean": float(nn_train.mean()), "nn_train_min": float(nn_train.min()),
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
                         real_reconstructed_markers=_mean_markers(recon_m))
        out[name]["num_real"] = len(real_m)
        save_png(frame_strip([v[0].numpy() for v in s[:3]], [f"{name} sample {k}" for k in range(min(3, len(s)))],
                             diff=False, height=120), out_dir / "figures" / f"brain_generated_{name}.png")
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
        f"{params['strength']}, blend_in {params['blend_in']}, anchor {params['anchor']}, "
        f"{params['num_inference_steps']} steps, guidance {params['guidance_scale']}, ROI = "
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
    lines += ["| truth, stage 0.05 | " + " | ".join(f"{v:.2f}" for v in true_cn) + " |",
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
    if prog.get("sweep"):
        lines += ["## PIE settings (same subjects; mean change after round 1 and after the last round)", "",
                  "| strength | blend_in | anchor | " + " | ".join(f"median rho {k}" for k in keys) +
                  " | ventricle change, round 1 / last (truth) | hippocampal GM change, round 1 / last (truth) | "
                  "direction corr |", "|---" * (len(keys) + 6) + "|"]
        for row in prog["sweep"]:
            ch = {k: f"{row['change_round_1'][k]:+.2f} / {row['change_last'][k]:+.2f} ({row['true_change'][k]:+.2f})"
                  for k in ("ventricle_ml", "hippocampal_gm_ml")}
            lines.append(f"| {row['strength']} | {row['blend_in']} | {row['anchor']} | " +
                         " | ".join(_fmt(row["rho_median"][k], 2) for k in keys) +
                         f" | {ch['ventricle_ml']} | {ch['hippocampal_gm_ml']} | {_fmt(row['direction_corr'], 2)} |")
        lines += [""]
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
                  "memorisation. The autoencoder alone reconstructs training images with MAE "
                  f"{next(iter(gen.values())).get('ae_reconstruction_mae', float('nan')):.4f}: no sample can come "
                  "closer to a training image than that floor.", "",
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
                  "span all ages. Compare the generated columns with the last one: the reader's tissue classes come "
                  "from a sharp real image, so the autoencoder's blur alone moves its absolute readings; the CN -> AD "
                  "difference is the conditioning check.", "", "![CN samples](../figures/brain_generated_CN.png)", "",
                  "![AD samples](../figures/brain_generated_AD.png)", ""]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def validate_brain(cohort_dir: str, model_path: str | None = None, bundle: str = "brain_mri_ldm",
                   progression_bundle: str = "brain_mri_progression", output_dir: str = "outputs",
                   num_subjects: int = 4, num_rounds: int | None = None, strength: float | None = None,
                   num_inference_steps: int | None = None, guidance_scale: float | None = None,
                   target_stage: float = 0.9, num_samples: int = 4, device: str = "cpu",
                   overrides: dict[str, Any] | None = None, blend_in: float | None = None, anchor: str | None = None,
                   sweep: bool = True) -> dict[str, Any]:
    """Run the progression and generation validation; writes ``<output_dir>/validation/brain_progression.md`` (and
    ``.json``), figures under ``<output_dir>/figures`` and working files under ``<output_dir>/validation/brain_work``.

    The PIE settings (``strength``, ``blend_in``, ``anchor``, rounds, steps, guidance) form one
    :class:`~monai_pie.validation.ProgressionSettings`: the ``progression_bundle``'s own, with the ones given here
    (not ``None``) instead.
    ``sweep`` also compares :data:`~monai_pie.validation.SWEEP_SETTINGS` on the same subjects. ``bundle`` and
    ``progression_bundle`` are bundle folders (or names of the bundles beside the package); the model weights are
    ``bundle``'s unless ``model_path`` is given. The cohort is checked before anything long runs.
    """
    t0 = time.perf_counter()
    cohort = Path(cohort_dir)
    load_datalist(cohort / "datalist.json", "training", cohort)  # fail now, not after the progression runs
    for name in ("hippocampal", "ventricle"):
        if not (cohort / "rois" / f"{name}_roi.nii.gz").is_file():
            raise FileNotFoundError(f"{cohort} lacks rois/{name}_roi.nii.gz: make the cohort with "
                                    "`monai-pie synth brain DIR`.")
    ldm, progression = bundle_dir(bundle), bundle_dir(progression_bundle)
    settings = ProgressionSettings.from_config(parse_bundle(progression).config, strength=strength, blend_in=blend_in,
                                               anchor=anchor, num_rounds=num_rounds,
                                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    out = Path(output_dir)
    loaded = load_brain_bundle(ldm, model_path, device, overrides)
    work = out / "validation" / "brain_work"
    prog = validate_progression(loaded, progression, work, num_subjects, settings, target_stage)
    if sweep:
        prog["sweep"] = sweep_progression_settings(loaded, progression, work, num_subjects, settings, target_stage,
                                                   done={settings.edit: prog["subjects"]})
    for png in (work / "figures").glob("*.png"):
        (out / "figures").mkdir(parents=True, exist_ok=True)
        png.replace(out / "figures" / png.name)
    gen = validate_generation(loaded, ldm, progression, cohort, work, num_samples, settings)
    for png in (work / "figures").glob("*.png"):
        png.replace(out / "figures" / png.name)
    args = {"num_subjects": num_subjects, "num_rounds": num_rounds, "num_inference_steps": num_inference_steps,
            "num_samples": num_samples, "strength": strength, "blend_in": blend_in, "anchor": anchor,
            "guidance_scale": guidance_scale, "target_stage": target_stage}
    used = {**args, **{k: v for k, v in settings.as_dict().items() if k in args}}  # what ran, for the report
    defaults = inspect.signature(validate_brain).parameters
    command = " ".join([f"monai-pie validate brain {cohort_dir} --output_dir {output_dir}"] +
                       [f"--{k} {v}" for k, v in args.items() if v != defaults[k].default] +
                       ([f"--model_path {model_path}"] if model_path else []) + ([] if sweep else ["--sweep False"]))
    params = {"model_path": loaded["model_path"], **used, "device": device, "seconds": time.perf_counter() - t0,
              "command": command}
    write_report(prog, gen, params, out / "validation" / "brain_progression.md")
    atomic_write_text(out / "validation" / "brain_progression.json",
                      json.dumps({"progression": prog, "generation": gen, "params": params}, indent=2, default=float))
    return {"report": str(out / "validation" / "brain_progression.md"), "seconds": params["seconds"]}
