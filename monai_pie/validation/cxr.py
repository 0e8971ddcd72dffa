"""Generation checks of the text-guided CXR LDM on phantoms with known truth; writes ``docs/validation/cxr.md``.

    monai-pie validate cxr COHORT_DIR --stage generation [--brain_slices_dir DIR] [--model_path ...]

PIE progression has its own protocol with a tuning and an evaluation split, null controls and baselines
(:mod:`monai_pie.validation.cxr_protocol`, ``--stage tune|evaluate``).

Readers trained here on the cohort's training split (cached in the work folder): a DenseNet121 finding classifier
and a UNet that segments lungs, heart, thorax and effusion (their accuracy on the test split is reported first, so
every number read through them can be judged). Then:

* generation per prompt: prompt adherence read by the classifier, FID on classifier features against the test
  split (with the real-vs-real FID as the floor), MS-SSIM diversity against real images with the same findings,
  a memorisation audit, and (generalist) whether each sample lands in the prompted modality;
* MediSyn's utility test: the classifier trained on few real images, with and without synthetic ones.
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
from PIL import Image

from ..bundle_tools import bundle_dir, load_bundle_model, parse_bundle
from ..data import load_2d_image, load_datalist
from ..inferers import GenerationInferer
from ..metrics import ms_ssim_diversity, nearest_neighbour_distances
from ..metrics.cxr_readers import (
    MASK_CHANNELS,
    CXRMaskNet,
    FindingClassifier,
    fid_from_features,
    fit,
    measure_from_masks,
    prompt_adherence,
)
from ..utils import atomic_save, atomic_write_text, json_safe
from ..visualize import save_png, to_uint8
from ..vocabulary import CXR_FINDINGS, cxr_report, finding_key

__all__ = ["load_cxr_split", "train_readers", "validate_cxr"]

GENERATION_PROMPTS = (
    "A chest X-ray image, no finding",
    "A chest X-ray image, cardiomegaly",
    "A chest X-ray image, pleural effusion",
    "A chest X-ray image, consolidation",
    "A chest X-ray image, edema",
    "A chest X-ray image, cardiomegaly, pleural effusion",
)
BRAIN_PROMPTS = ("A brain MRI image, no finding", "A brain MRI image, alzheimer's disease")


def sample_images(bundle: dict[str, Any], prompts: Sequence[str], size: Sequence[int], num_inference_steps: int,
                  guidance_scale: float, seed: int, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """One image per prompt, ``(N, 1, H, W)`` in [0, 1] on the CPU, in batches from one seeded noise stream (the
    cxr_text_ldm bundle's inferer)."""
    inferer = GenerationInferer(bundle["scheduler"], size, num_inference_steps, guidance_scale, seed=seed,
                                progress=progress, device="cpu")
    return torch.cat([inferer(list(prompts[i:i + batch_size]), bundle["network"])
                      for i in range(0, len(prompts), batch_size)])


def _image(path: Path, size: Sequence[int]) -> torch.Tensor:
    x = torch.from_numpy(load_2d_image(path))[None, None]
    if tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="area")
    return x[0]


def load_cxr_split(cohort_dir: str | Path, split: str, size: Sequence[int], masks: bool = True) -> dict[str, Any]:
    """Images ``(N, 1, H, W)``, labels ``(N, F)`` over :data:`CXR_FINDINGS`, masks ``(N, 4, H, W)`` (ordered as
    ``MASK_CHANNELS``) and the datalist items of one split of a ``monai-pie synth cxr`` cohort."""
    root = Path(cohort_dir)
    listing = root / "datalist.json"
    if not listing.is_file():
        raise FileNotFoundError(f"{str(listing)!r} not found; make a cohort with `monai-pie synth cxr DIR`.")
    items = json.loads(listing.read_text()).get(split, [])
    if not items:
        raise ValueError(f"split {split!r} of {str(listing)!r} is empty.")
    out: dict[str, Any] = {"items": items}
    out["images"] = torch.stack([_image(root / i["image"], size) for i in items])
    out["labels"] = torch.tensor([[float(i[finding_key(f)]) for f in CXR_FINDINGS] for i in items])
    if masks:
        out["masks"] = torch.stack([torch.cat([_image(root / i["masks"][m], size) for m in MASK_CHANNELS]) > 0.5
                                    for i in items]).float()
    return out


def _auc(probs: np.ndarray, labels: np.ndarray) -> list[float | None]:
    from monai.metrics import compute_roc_auc

    out = []
    for j in range(labels.shape[1]):
        y = labels[:, j]
        out.append(float(compute_roc_auc(torch.as_tensor(probs[:, j]), torch.as_tensor(y))) if 0 < y.sum() < len(y) else None)
    return out


def _train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int, desc: str) -> FindingClassifier:
    torch.manual_seed(seed)
    clf = FindingClassifier(CXR_FINDINGS)
    fit(clf, images, labels, F.binary_cross_entropy_with_logits, steps=steps, batch_size=32, lr=1e-3, seed=seed, desc=desc)
    return clf


def _cached(path: Path, recipe: dict[str, Any], module: torch.nn.Module) -> bool:
    """Load ``module`` from ``path`` when its recipe file matches ``recipe`` exactly."""
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == recipe:
        module.load_state_dict(torch.load(path, weights_only=True))
        return True
    return False


def _store(path: Path, recipe: dict[str, Any], module: torch.nn.Module) -> None:
    atomic_save(module.state_dict(), path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(recipe, sort_keys=True))


def train_readers(train: dict[str, Any], work: Path, classifier_steps: int, mask_steps: int, seed: int = 0,
                  cohort: str = "") -> tuple[FindingClassifier, CXRMaskNet]:
    """Train the finding classifier and the mask network on the training split, or load them from ``work`` when
    they were trained there with the same recipe (cohort, split size, image size, steps, loss, seed)."""
    from monai.losses import DiceCELoss

    common = {"cohort": str(Path(cohort).resolve()) if cohort else "", "n_train": len(train["items"]),
              "image_size": list(train["images"].shape[2:]), "seed": seed, "augment": "shift, blur, jitter, noise"}
    clf_recipe = {**common, "net": "DenseNet121", "steps": classifier_steps, "loss": "bce", "batch": 32, "lr": 1e-3}
    mask_recipe = {**common, "net": "UNet16-128", "steps": mask_steps, "loss": "dice_ce_batch", "batch": 16, "lr": 3e-3}
    clf = FindingClassifier(CXR_FINDINGS)
    if not _cached(work / "finding_classifier.pt", clf_recipe, clf):
        clf = _train_classifier(train["images"], train["labels"], classifier_steps, seed, "finding classifier")
        _store(work / "finding_classifier.pt", clf_recipe, clf)
    torch.manual_seed(seed)
    masknet = CXRMaskNet()
    if not _cached(work / "mask_net.pt", mask_recipe, masknet):
        # batch Dice: the effusion channel is empty in most images, per-image Dice would reward predicting nothing
        fit(masknet, train["images"], train["masks"], DiceCELoss(sigmoid=True, batch=True), steps=mask_steps,
            batch_size=16, lr=3e-3, seed=seed, desc="mask net")
        _store(work / "mask_net.pt", mask_recipe, masknet)
    return clf.eval(), masknet.eval()


def _reader_accuracy(clf: FindingClassifier, masknet: CXRMaskNet, test: dict[str, Any]) -> dict[str, Any]:
    probs, _ = clf.predict(test["images"])
    pred = masknet.predict(test["images"])
    measured = [measure_from_masks(m) for m in pred]
    ctr = np.array([m["ctr"] for m in measured])
    eff = np.array([m["effusion_fraction"] for m in measured])
    true_ctr = np.array([i["ctr"] for i in test["items"]])
    true_eff = np.array([i["effusion_fraction"] for i in test["items"]])
    dice = []
    for c in range(len(MASK_CHANNELS)):
        p, t = pred[:, c], test["masks"][:, c].numpy() > 0.5
        dice.append(float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1)))
    return {"auc": _auc(probs, test["labels"].numpy()), "n_test": len(test["items"]),
            "ctr_mae": float(np.abs(ctr - true_ctr).mean()), "ctr_corr": _corr(ctr, true_ctr),
            "effusion_mae": float(np.abs(eff - true_eff).mean()),
            "effusion_corr": _corr(eff, true_eff), "dice": dict(zip(MASK_CHANNELS, dice))}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r, NaN when either side is constant (an untrained reader)."""
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _measure(masknet: CXRMaskNet, images: torch.Tensor, key: str) -> np.ndarray:
    return np.array([measure_from_masks(m)[key] for m in masknet.predict(images)])


def _label_vector(prompt: str) -> np.ndarray:
    named = [t.strip() for t in prompt.split(",")[1:]]
    return np.array([float(f in named) for f in CXR_FINDINGS])


def _tile_row(images: torch.Tensor, height: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(Image.fromarray(to_uint8(x[0].numpy(), 0, 1)).resize((height, height)))
                           for x in images], axis=1)


def validate_generation(bundle: dict[str, Any], clf: FindingClassifier, train: dict[str, Any], test: dict[str, Any],
                        brain: torch.Tensor | None, figures: Path, num_samples: int, num_inference_steps: int,
                        guidance_scale: float, size: Sequence[int], seed: int) -> dict[str, Any]:
    """Per-prompt adherence, diversity and memorisation; FID against the test split with prompts drawn from the test
    reports (so that the finding mix matches); generalist modality check."""
    prompts = [p for p in GENERATION_PROMPTS for _ in range(num_samples)]
    t0 = time.perf_counter()
    samples = sample_images(bundle, prompts, size, num_inference_steps, guidance_scale, seed, progress=True)
    seconds_per_image = (time.perf_counter() - t0) / len(prompts)
    probs, _ = clf.predict(samples)
    want = np.stack([_label_vector(p) for p in prompts])
    # FID: one sample per test report, against the test images; the floor is as many real training images
    fid_prompts = [i["report"] for i in test["items"]]
    fid_x = sample_images(bundle, fid_prompts, size, num_inference_steps, guidance_scale, seed + 3, progress=True)
    _, fid_feats = clf.predict(fid_x)
    _, test_feats = clf.predict(test["images"])
    _, train_feats = clf.predict(train["images"])
    n_ref = min(len(train_feats), len(fid_x))
    ref_idx = np.random.default_rng(seed).choice(len(train_feats), n_ref, replace=False)
    out: dict[str, Any] = {
        "seconds_per_image": seconds_per_image,
        "adherence": prompt_adherence(probs, want),
        "fid": fid_from_features(fid_feats, test_feats),
        "fid_real_floor": fid_from_features(train_feats[ref_idx], test_feats),
        "fid_n": len(fid_x),
        "num_samples": len(prompts),
        "prompts": {},
    }
    train_nn = nearest_neighbour_distances(train["images"], train["images"], exclude_self=True)
    out["nn_train_mean"], out["nn_train_min"] = float(train_nn.mean()), float(train_nn.min())
    # unseen real images against the training split: how near a non-copy comes (the test split's own reference)
    test_nn = nearest_neighbour_distances(test["images"], train["images"])
    out["nn_test_train_mean"], out["nn_test_train_min"] = float(test_nn.mean()), float(test_nn.min())
    net = bundle["network"]
    device = next(net.parameters()).device
    rows = []
    train_labels = train["labels"].numpy()
    for k, prompt in enumerate(GENERATION_PROMPTS):
        sl = slice(k * num_samples, (k + 1) * num_samples)
        x = samples[sl]
        match = np.nonzero((train_labels == _label_vector(prompt)).all(1))[0][:num_samples]
        nn, nn_test = nearest_neighbour_distances(x, train["images"]), nearest_neighbour_distances(x, test["images"])
        with torch.no_grad():  # the same real images through the autoencoder: diversity at the model's own blur
            recon = (net.decode(net.encode(train["images"][match].to(device))).clamp(0, 1).cpu() if len(match) > 1
                     else None)
        out["prompts"][prompt] = {
            "adherence": prompt_adherence(probs[sl], want[sl]),
            "ms_ssim": ms_ssim_diversity(x) if len(x) > 1 else None,
            "ms_ssim_real": ms_ssim_diversity(train["images"][match]) if len(match) > 1 else None,
            "ms_ssim_real_reconstructed": ms_ssim_diversity(recon) if recon is not None else None,
            "n_real": len(match),
            "nn_mean": float(nn.mean()), "nn_min": float(nn.min()),
            "nn_test_mean": float(nn_test.mean()), "nn_test_min": float(nn_test.min()),
        }
        rows.append(_tile_row(x[: min(8, num_samples)]))
    save_png(np.concatenate(rows, axis=0), figures / "cxr_generated.png")
    if brain is not None and len(brain):
        bprompts = [p for p in BRAIN_PROMPTS for _ in range(max(2, num_samples // 2))]
        bx = sample_images(bundle, bprompts, size, num_inference_steps, guidance_scale, seed + 1)
        cx = samples[np.random.default_rng(seed).choice(len(samples), min(len(bx), len(samples)), replace=False)]
        reference = torch.cat([train["images"], brain])
        is_brain = np.r_[np.zeros(len(train["images"]), bool), np.ones(len(brain), bool)]

        def nearest_is_brain(q: torch.Tensor) -> np.ndarray:
            d = torch.cdist(q.flatten(1), reference.flatten(1), p=1)
            return is_brain[d.argmin(1).numpy()]

        out["modality"] = {"brain_prompt_nearest_brain": float(nearest_is_brain(bx).mean()),
                           "cxr_prompt_nearest_cxr": float((~nearest_is_brain(cx)).mean()),
                           "num_brain_samples": len(bx)}
        save_png(np.concatenate([_tile_row(bx[: len(bx) // 2][:8]), _tile_row(bx[len(bx) // 2 :][:8])], axis=0),
                 figures / "cxr_generalist_brain.png")
    return out


def validate_utility(bundle: dict[str, Any], train: dict[str, Any], test: dict[str, Any], num_real: int,
                     num_synthetic: int, steps: int, num_inference_steps: int, guidance_scale: float,
                     size: Sequence[int], seed: int) -> dict[str, Any]:
    """Classifier on ``num_real`` real images vs the same plus ``num_synthetic`` generated ones (prompts drawn from
    the training split's reports); mean AUC on the test split."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(train["items"]), min(num_real, len(train["items"])), replace=False)
    real_x, real_y = train["images"][idx], train["labels"][idx]
    reports = [cxr_report([f for f in CXR_FINDINGS if i[finding_key(f)]]) for i in train["items"]]
    prompts = [reports[k] for k in rng.choice(len(reports), num_synthetic)]
    syn_x = sample_images(bundle, prompts, size, num_inference_steps, guidance_scale, seed + 2, progress=True)
    syn_y = torch.from_numpy(np.stack([_label_vector(p) for p in prompts])).float()
    out = {"num_real": len(idx), "num_synthetic": num_synthetic, "steps": steps}
    for name, (x, y) in {"real_only": (real_x, real_y),
                         "real_plus_synthetic": (torch.cat([real_x, syn_x]), torch.cat([real_y, syn_y]))}.items():
        clf = _train_classifier(x, y, steps, seed, f"utility: {name}")
        auc = _auc(clf.predict(test["images"])[0], test["labels"].numpy())
        out[name] = {"auc": auc, "mean_auc": float(np.mean([a for a in auc if a is not None]))}
    return out


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def write_report(r: dict[str, Any], path: Path) -> str:
    p, acc = r["params"], r["readers"]
    lines = [
        "# CXR text-guided LDM: generation checks on phantoms with known truth", "",
        "PIE progression is validated by its own protocol (tuning split, frozen settings, null controls, baselines): "
        "`docs/validation/cxr_progression.md`. **Synthetic to real caveat: the model, the readers and the test "
        "images all come from the same phantom renderer; nothing here shows the same on real radiographs.**", "",
        f"Command: `{p['command']}`  ",
        f"Model: `{p['model_path']}`; cohort `{p['cohort_dir']}` ({p['image_size'][0]} px); {p['num_inference_steps']} "
        f"DDIM steps, guidance {p['guidance_scale']}; device {p['device']}; {p['seconds']:.0f} s in all.", "",
        "## The readers (trained on the cohort's training split, scored on its test split)", "",
        f"Finding classifier (MONAI DenseNet121, {p['classifier_steps']} steps): test AUC "
        + ", ".join(f"{f} {_f(a, 2)}" for f, a in zip(CXR_FINDINGS, acc["auc"])) + f" (n = {acc['n_test']}).  ",
        f"Mask net (MONAI UNet, {p['mask_steps']} steps): Dice " + ", ".join(f"{k} {v:.2f}" for k, v in acc["dice"].items())
        + f"; CTR from predicted masks vs truth: MAE {acc['ctr_mae']:.3f}, r {_f(acc['ctr_corr'], 2)}; effusion height: "
        f"MAE {acc['effusion_mae']:.3f}, r {_f(acc['effusion_corr'], 2)}.", "",
        "Every number below is read by these two networks, so it is only as good as they are.", "",
    ]
    gen = r["generation"]
    lines += ["## Generation", "",
              f"{gen['num_samples']} samples, {gen['seconds_per_image']:.3f} s per image (batch 16). "
              f"FID on the classifier's 1024-d features against the {gen['fid_n']} test images, from one sample per test "
              f"report (same finding mix): **{gen['fid']:.2f}**; the same FID between {gen['fid_n']} real training "
              f"images and the test images (the floor at this sample size): {gen['fid_real_floor']:.2f}. Prompt "
              f"adherence over the per-prompt samples (the classifier reads exactly the prompted findings): "
              f"**{gen['adherence']['exact']:.2f}**.", "",
              "| prompt | exact adherence | prompted findings read as present | MS-SSIM samples | MS-SSIM real (n) | "
              "MS-SSIM of the same real images through the autoencoder | nearest training image, mean / min MAE | "
              "nearest test image, mean / min MAE |", "|---|---|---|---|---|---|---|---|"]
    for prompt, g in gen["prompts"].items():
        pres = [v for v in g["adherence"]["present"] if v is not None]
        lines.append(f"| {prompt} | {g['adherence']['exact']:.2f} | {_f(float(np.mean(pres)), 2) if pres else '-'} | "
                     f"{_f(g['ms_ssim'])} | {_f(g['ms_ssim_real'])} ({g['n_real']}) | "
                     f"{_f(g.get('ms_ssim_real_reconstructed'))} | {g['nn_mean']:.4f} / {g['nn_min']:.4f} | "
                     + (f"{g['nn_test_mean']:.4f} / {g['nn_test_min']:.4f} |" if "nn_test_mean" in g else "n/a |"))
    lines += ["", "Diversity: the real images of each prompt's findings (label-matched) are also shown through the "
              "autoencoder, whose blur alone makes images more alike: samples are compared with both. Memorisation "
              f"audit: training-to-training nearest neighbour MAE mean {gen['nn_train_mean']:.4f}, min "
              f"{gen['nn_train_min']:.4f}"
              + (f"; unseen test images' nearest training image: mean {gen['nn_test_train_mean']:.4f}, min "
                 f"{gen['nn_test_train_min']:.4f}" if "nn_test_train_mean" in gen else "")
              + ". A sample much closer to a training image than that, or much closer to training than to test "
              "images, would be a copy.", "",
              "Rows: the prompts above, in order.", "", "![Generated](../figures/cxr_generated.png)", ""]
    if "modality" in gen:
        m = gen["modality"]
        lines += ["### Generalist (MediSyn): one model, two modalities", "",
                  f"{m['num_brain_samples']} samples from brain prompts: {m['brain_prompt_nearest_brain']:.2f} have a "
                  f"brain slice as their nearest real image (pixel MAE over CXR training images and brain slices); as many "
                  f"random CXR-prompt samples: {m['cxr_prompt_nearest_cxr']:.2f} nearest a CXR.", "",
                  "Rows: \"A brain MRI image, no finding\", \"A brain MRI image, alzheimer's disease\".", "",
                  "![Brain samples](../figures/cxr_generalist_brain.png)", ""]
    if r.get("utility"):
        u = r["utility"]
        lines += ["## Utility (MediSyn): few real images, with and without synthetic ones", "",
                  f"DenseNet121, {u['steps']} steps each, {u['num_real']} real training images, plus "
                  f"{u['num_synthetic']} generated from prompts drawn from the training reports; test AUC. The "
                  "generator itself was trained on the whole training split, so the synthetic images carry information "
                  "from more than the few real ones: this measures what synthetic images from a generator trained on a "
                  "larger pool of image-report pairs add to a small labelled set, as in MediSyn.", "",
                  "| training set | " + " | ".join(CXR_FINDINGS) + " | mean |", "|---" * (len(CXR_FINDINGS) + 2) + "|"]
        for name in ("real_only", "real_plus_synthetic"):
            lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(_f(a, 2) for a in u[name]["auc"]) +
                         f" | {u[name]['mean_auc']:.3f} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def _command(args: dict[str, Any]) -> str:
    """The CLI line that reproduces a ``validate_cxr`` call (options that differ from the defaults)."""
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(validate_cxr).parameters.items()}
    opts = "".join(f" --{k} {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in args.items()
                   if k != "cohort_dir" and v != defaults.get(k))
    return f"monai-pie validate cxr {args['cohort_dir']} --stage generation{opts}"


def validate_cxr(
    cohort_dir: str,
    brain_slices_dir: str | None = None,
    model_path: str | None = None,
    bundle: str = "cxr_text_ldm",
    output_dir: str = "outputs",
    work_dir: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    num_samples: int = 16,
    classifier_steps: int = 400,
    mask_steps: int = 1200,
    utility_real: int = 32,
    utility_synthetic: int = 256,
    utility_steps: int = 300,
    device: str = "cpu",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generation, generalist and utility checks of the text-guided LDM; writes ``<output_dir>/validation/cxr.md``
    (+ ``cxr.json``) and figures under ``<output_dir>/figures``. Readers are cached in ``work_dir`` (default
    ``<output_dir>/validation/cxr_work``). ``utility_synthetic=0`` skips the utility test. Sampling uses the ``bundle``'s
    steps and guidance unless given here. The cohort is checked before anything long runs."""
    args = dict(locals())
    t0 = time.perf_counter()
    for split in ("training", "test"):  # fail now, not after the readers trained
        load_datalist(Path(cohort_dir) / "datalist.json", split, cohort_dir)
    config = parse_bundle(bundle_dir(bundle)).config
    num_inference_steps = int(num_inference_steps if num_inference_steps is not None else config["num_inference_steps"])
    guidance_scale = float(guidance_scale if guidance_scale is not None else config["guidance_scale"])
    out = Path(output_dir)
    work = Path(work_dir) if work_dir else out / "validation" / "cxr_work"
    figures = out / "figures"
    for d in (work, figures, out / "validation"):
        d.mkdir(parents=True, exist_ok=True)
    loaded = load_bundle_model(bundle_dir(bundle), model_path, device, overrides)
    size = tuple(loaded["parser"]["image_size"])
    train = load_cxr_split(cohort_dir, "training", size)
    test = load_cxr_split(cohort_dir, "test", size)
    brain = None
    if brain_slices_dir:
        items = json.loads((Path(brain_slices_dir) / "datalist.json").read_text())["training"]
        brain = torch.stack([_image(Path(brain_slices_dir) / i["image"], size) for i in items])
    clf, masknet = train_readers(train, work, classifier_steps, mask_steps, seed, cohort=cohort_dir)
    report: dict[str, Any] = {"readers": _reader_accuracy(clf, masknet, test)}
    report["generation"] = validate_generation(loaded, clf, train, test, brain, figures, num_samples,
                                               num_inference_steps, guidance_scale, size, seed)
    if utility_synthetic > 0:
        report["utility"] = validate_utility(loaded, train, test, utility_real, utility_synthetic, utility_steps,
                                             num_inference_steps, guidance_scale, size, seed)
    command = _command(args)
    report["params"] = {"command": command, "model_path": loaded["model_path"], "cohort_dir": str(cohort_dir),
                        "image_size": list(size), "num_inference_steps": num_inference_steps,
                        "guidance_scale": guidance_scale, "classifier_steps": classifier_steps,
                        "mask_steps": mask_steps, "device": device, "seconds": time.perf_counter() - t0}
    write_report(report, out / "validation" / "cxr.md")
    atomic_write_text(out / "validation" / "cxr.json", json.dumps(json_safe(report), indent=2))
    return {"report": str(out / "validation" / "cxr.md"), "seconds": report["params"]["seconds"]}
