"""Tau PET anomaly detection (TauAD) validated on the synthetic tau cohort, where the tau load is known per voxel.

Protocol (DESIGN.md section 6): the start level ``t0`` is chosen on the cohort's validation split and frozen in
``docs/validation/tau_settings.json`` (``--stage tune``); ``--stage evaluate`` reads it, runs the ``tau_pet_anomaly``
bundle (what users run) on the held-out test split and the preclinical cohort, and scores, on the same subjects:

* TauAD's complementary map, the healthy-only reconstruction error ``L_H`` (AnoDDPM-style) from the same run, and
  the voxel-wise Z-score map against the CN training subjects (the conventional baseline);
* voxel-wise AUPRC against the true load (load above :data:`LOAD_THRESHOLD`, inside the brain), per subject, with
  bootstrap 95 % intervals;
* the share of anomaly mass in the off-target regions (choroid plexus, basal ganglia, meninges);
* a null control: the map on test subjects with no load at all;
* severity: a linear SVM on the Braak-regional anomaly scores of the training split (saved as JSON), its AUC CN vs
  MCI/AD on the test split and, on the preclinical cohort, Spearman rho with the true cortical load and the cognition
  difference between predicted groups (Welch t-test);
* speed: seconds per volume at the bundle's steps against the reference's 1000-step sampling, same subjects, with
  their AUPRC.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle_tools import bundle_dir, find_handler, run_bundle
from ..utils import atomic_write_text, json_safe
from .protocol import check_not_frozen, read_frozen
from .stats import format_ci, median_ci, spearman

__all__ = ["LOAD_THRESHOLD", "T0_CANDIDATES", "evaluate_tau", "tune_tau"]

#: a voxel is tau positive where the true load exceeds this (load per unit GM; AD cortex reaches about 1)
LOAD_THRESHOLD = 0.1
#: start levels tried on the validation split (TauAD: 0.3-0.5 of the noise range)
T0_CANDIDATES: tuple[float, ...] = (0.3, 0.4, 0.5)
METHODS: tuple[str, ...] = ("TauAD (complementary)", "L_H (healthy reconstruction error)", "Z-score vs CN")
SETTINGS_FILE = "docs/validation/tau_settings.json"
BUNDLE = "tau_pet_anomaly"


def _load(path: str | Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def _items(cohort: Path, split: str) -> list[dict[str, Any]]:
    datalist = json.loads((cohort / "datalist.json").read_text())
    if split not in datalist or not datalist[split]:
        raise ValueError(f"{cohort}/datalist.json has no {split!r} subjects; make the cohort with `monai-pie synth tau`.")
    return [{**item, **{k: str(cohort / item[k]) for k in ("image", "load", "off_target")}} for item in datalist[split]]


def _check_cohort(cohort_dir: str | Path) -> Path:
    cohort = Path(cohort_dir)
    for name in ("datalist.json", "cohort.json", "rois/brain_mask.nii.gz"):
        if not (cohort / name).is_file():
            raise FileNotFoundError(f"{cohort / name} is missing: not a complete tau cohort. Make one with "
                                    f"`monai-pie synth tau {cohort}`.")
    return cohort


def run_anomaly(items: Sequence[Mapping[str, Any]], work: Path, settings: Mapping[str, Any],
                model_path: str | None = None, bundle: str = BUNDLE,
                overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Run the bundle on ``items`` with ``settings`` (``t0``, ``num_inference_steps``, ...); one subfolder per subject.
    ``overrides`` are other bundle settings (e.g. the network sizes of weights trained with other settings).

    A finished run leaves ``run.json`` (subjects, settings, weights SHA-256); a later call with the same record
    reuses it, so an interrupted validation resumes.

    Returns:
        ``{subject: {"dir", "anomaly", "healthy", "regional", "seconds"}}``.
    """
    from ..engines import ProgressionSummary

    root = bundle_dir(bundle)
    weights = Path(model_path) if model_path else root / "models" / "model.pt"
    record = {"subjects": [i["subject"] for i in items], "settings": dict(settings),
              "overrides": dict(overrides or {}), "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    marker = work / "run.json"
    if marker.is_file() and json.loads(marker.read_text()).get("record") == record:
        return json.loads(marker.read_text())["results"]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run = {**(overrides or {}), "datalist": [{"image": i["image"]} for i in items], "output_dir": str(work),
           "progress": False, "severity_path": None, "output_subfolders": True, **settings}
    if model_path:
        run["model_path"] = str(model_path)
    summaries = find_handler(run_bundle(root, run), ProgressionSummary).summaries
    by_input = {Path(s["input"]).resolve(): s for s in summaries}
    results = {}
    for item in items:
        s = by_input[Path(item["image"]).resolve()]
        results[item["subject"]] = {"dir": s["output_dir"], "anomaly": s["outputs"]["anomaly"],
                                    "healthy": s["outputs"]["healthy"], "regional": s.get("regional", {}),
                                    "seconds": s["seconds"]}
    atomic_write_text(marker, json.dumps({"record": record, "results": results}, indent=1))
    return results


def zscore_reference(items: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise mean and SD of the CN subjects among ``items`` (the conventional tau Z-score reference)."""
    cn = [_load(i["image"]) for i in items if i["diagnosis"] == "CN"]
    if len(cn) < 3:
        raise ValueError(f"the Z-score reference needs at least 3 CN training subjects, got {len(cn)}.")
    stack = np.stack(cn)
    return stack.mean(0), np.maximum(stack.std(0, ddof=1), 1e-3)


def auprc(score: np.ndarray, positive: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of ``score`` for ``positive`` voxels inside ``mask``; NaN without a positive voxel."""
    from sklearn.metrics import average_precision_score

    y = positive[mask]
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, score[mask]))


def subject_maps(item: Mapping[str, Any], result: Mapping[str, Any], reference: tuple[np.ndarray, np.ndarray],
                 brain: np.ndarray) -> dict[str, np.ndarray]:
    """The three maps of one subject on the model grid, zero outside the brain."""
    x = _load(item["image"])
    mean, sd = reference
    return {METHODS[0]: _load(result["anomaly"]) * brain,
            METHODS[1]: np.abs(x - _load(result["healthy"])) * brain,
            METHODS[2]: np.maximum((x - mean) / sd, 0.0) * brain}


def score_subject(item: Mapping[str, Any], maps: Mapping[str, np.ndarray], brain: np.ndarray) -> dict[str, Any]:
    """AUPRC, off-target share and mean map in the brain, per method, for one subject."""
    load = _load(item["load"])
    off = _load(item["off_target"]) > 0
    positive = load > LOAD_THRESHOLD
    row: dict[str, Any] = {"subject": item["subject"], "diagnosis": item["diagnosis"],
                           "null": bool(load.max() == 0), "positive_voxels": int((positive & brain).sum())}
    for name, amap in maps.items():
        total = float(amap.sum())
        row[name] = {"auprc": auprc(amap, positive, brain),
                     "off_target_share": float(amap[off].sum()) / total if total > 0 else 0.0,
                     "mean_in_brain": float(amap[brain].mean())}
    return row


def tune_tau(cohort_dir: str, settings_file: str = SETTINGS_FILE, model_path: str | None = None,
             work_dir: str | None = None, num_inference_steps: int | None = None, overwrite: bool = False,
             candidates: Sequence[float] = T0_CANDIDATES, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Choose ``t0`` on the validation split by median TauAD AUPRC and freeze it (with the steps) in
    ``settings_file``, which is never overwritten unless ``overwrite``."""
    start = time.perf_counter()
    cohort = _check_cohort(cohort_dir)
    path = check_not_frozen(settings_file, overwrite)
    work = Path(work_dir or cohort / "tau_validation") / "tune"
    items = _items(cohort, "validation")
    brain = _load(cohort / "rois" / "brain_mask.nii.gz") > 0
    reference = zscore_reference(_items(cohort, "training"))
    steps = int(num_inference_steps) if num_inference_steps else None
    tuning = {}
    for t0 in candidates:
        settings = {"t0": float(t0), **({"num_inference_steps": steps} if steps else {})}
        results = run_anomaly(items, work / f"t0_{t0}", settings, model_path, overrides=overrides)
        rows = [score_subject(i, subject_maps(i, results[i["subject"]], reference, brain), brain) for i in items]
        tuning[str(t0)] = float(np.nanmedian([r[METHODS[0]]["auprc"] for r in rows]))
    best = max(tuning, key=lambda k: tuning[k])
    frozen = {"protocol": "tau_pet_anomaly v1", "t0": float(best), "num_inference_steps": steps,
              "load_threshold": LOAD_THRESHOLD, "tuned_on": "validation split", "tuning_median_auprc": tuning,
              "seconds": round(time.perf_counter() - start, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(frozen, indent=2) + "\n")
    return frozen


def evaluate_tau(cohort_dir: str, settings_file: str = SETTINGS_FILE, model_path: str | None = None,
                 work_dir: str | None = None, output_dir: str = "docs", speed_subjects: int = 3,
                 reference_steps: int = 1000, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every method on the test split and the preclinical cohort with the frozen settings; write
    ``<output_dir>/validation/tau_pet.md`` and ``.json`` and the fitted ``severity.json`` beside them."""
    start = time.perf_counter()
    cohort = _check_cohort(cohort_dir)
    frozen, digest = read_frozen(settings_file, "tau")
    settings = {"t0": frozen["t0"], **({"num_inference_steps": frozen["num_inference_steps"]}
                                       if frozen.get("num_inference_steps") else {})}
    work = Path(work_dir or cohort / "tau_validation")
    brain = _load(cohort / "rois" / "brain_mask.nii.gz") > 0
    train, test, pre = (_items(cohort, s) for s in ("training", "test", "preclinical"))
    reference = zscore_reference(train)
    runs = {name: run_anomaly(items, work / name, settings, model_path, overrides=overrides)
            for name, items in (("training", train), ("test", test), ("preclinical", pre))}
    rows = [score_subject(i, subject_maps(i, runs["test"][i["subject"]], reference, brain), brain) for i in test]
    methods = {m: _summarise(rows, m) for m in METHODS}
    severity = _severity(train, test, pre, runs, Path(output_dir) / "validation" / "tau_severity.json")
    with_tau = [i for i in test if i["diagnosis"] != "CN"] or test  # AUPRC needs tau-positive voxels
    speed = _speed(with_tau[:speed_subjects], work / "speed", settings, model_path, reference, brain,
                   reference_steps, overrides)
    report = {"settings_file": settings_file, "settings_sha256": digest, "frozen": frozen, "methods": methods,
              "severity": severity, "speed": speed, "num_test": len(test), "num_preclinical": len(pre),
              "load_threshold": LOAD_THRESHOLD, "subjects": rows,
              "seconds": round(time.perf_counter() - start, 1),
              "command": f"monai-pie validate tau {cohort_dir} --stage evaluate"}
    out = Path(output_dir) / "validation"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tau_pet.json", json.dumps(json_safe(report), indent=1))
    atomic_write_text(out / "tau_pet.md", _report_md(report))
    return {k: v for k, v in report.items() if k != "subjects"}


def _summarise(rows: Sequence[Mapping[str, Any]], method: str) -> dict[str, Any]:
    diseased = [r for r in rows if r["positive_voxels"] > 0]
    null = [r for r in rows if r["null"]]
    signal = float(np.median([r[method]["mean_in_brain"] for r in diseased])) if diseased else float("nan")
    return {"auprc": median_ci([r[method]["auprc"] for r in diseased]),
            "off_target_share": median_ci([r[method]["off_target_share"] for r in diseased]),
            "null_mean_in_brain": float(np.mean([r[method]["mean_in_brain"] for r in null])) if null else float("nan"),
            "diseased_mean_in_brain": signal, "num_null": len(null), "num_diseased": len(diseased)}


def _features(run: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[str]]:
    names = list(run[items[0]["subject"]]["regional"])
    return np.array([[run[i["subject"]]["regional"][n] for n in names] for i in items], dtype=np.float64), names


def _severity(train, test, pre, runs, path: Path) -> dict[str, Any]:
    from scipy.stats import ttest_ind
    from sklearn.metrics import roc_auc_score

    from ..metrics.severity import fit_severity_model

    x_train, names = _features(runs["training"], train)
    model = fit_severity_model(x_train, np.array([i["label"] for i in train]), names)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    x_test, _ = _features(runs["test"], test)
    p_test = model.probability(x_test)
    y_test = np.array([i["label"] for i in test])
    out: dict[str, Any] = {"model": str(path), "auc_test": float(roc_auc_score(y_test, p_test)) if len(set(y_test)) == 2
                           else float("nan")}
    x_pre, _ = _features(runs["preclinical"], pre)
    p_pre = model.probability(x_pre)
    load = np.array([i["cortical_load"] for i in pre])
    cognition = np.array([i["cognition"] for i in pre])
    predicted = p_pre > model.threshold
    rule = "SVM class"
    if min(predicted.sum(), (~predicted).sum()) < 3:  # too few predicted positives: split at the median, as a rank
        predicted, rule = p_pre > np.median(p_pre), "median of P(MCI/AD)"
    t = ttest_ind(cognition[~predicted], cognition[predicted], equal_var=False)
    out.update({"preclinical_spearman_load": spearman(p_pre, load),
                "preclinical_groups": rule, "preclinical_group_sizes": [int((~predicted).sum()), int(predicted.sum())],
                "preclinical_cognition_low_vs_high": [float(cognition[~predicted].mean()),
                                                      float(cognition[predicted].mean())],
                "preclinical_cognition_t": float(t.statistic), "preclinical_cognition_p": float(t.pvalue)})
    return out


def _speed(items, work: Path, settings, model_path, reference, brain, reference_steps: int,
           overrides: dict[str, Any] | None) -> dict[str, Any]:
    out = {}
    for label, steps in (("bundle steps", settings.get("num_inference_steps")),
                         (f"reference: {reference_steps} steps", reference_steps)):
        cfg = {**settings, **({"num_inference_steps": steps} if steps else {})}
        res = run_anomaly(items, work / str(steps or "default"), cfg, model_path, overrides=overrides)
        rows = [score_subject(i, subject_maps(i, res[i["subject"]], reference, brain), brain) for i in items]
        out[label] = {"num_inference_steps": steps, "seconds_per_volume": float(np.median([r["seconds"] for r in
                                                                                          res.values()])),
                      "median_auprc": float(np.nanmedian([r[METHODS[0]]["auprc"] for r in rows]))}
    return out


def _checks(m: Mapping[str, Any]) -> list[str]:
    """The issue's pass checks, each printed as PASS or FAIL with its numbers."""
    tau_ad, l_h, z = (m[k] for k in METHODS)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    above = tau_ad["auprc"][0] > max(l_h["auprc"][0], z["auprc"][0])
    separated = tau_ad["auprc"][1] > max(l_h["auprc"][2], z["auprc"][2])
    off = tau_ad["off_target_share"][0]
    off_ok = off < 0.05 and off < min(l_h["off_target_share"][0], z["off_target_share"][0])
    null_ratio = tau_ad["null_mean_in_brain"] / tau_ad["diseased_mean_in_brain"] \
        if tau_ad["diseased_mean_in_brain"] > 0 else float("nan")
    return [
        "Checks:", "",
        f"- {verdict(above)}: TauAD's median AUPRC ({tau_ad['auprc'][0]:.3f}) above L_H ({l_h['auprc'][0]:.3f}) and "
        f"the Z-score map ({z['auprc'][0]:.3f}); intervals {'do not overlap' if separated else 'overlap'}.",
        f"- {verdict(off_ok)}: TauAD's off-target share ({off:.3f}) below 0.05 and below both baselines "
        f"({l_h['off_target_share'][0]:.3f}, {z['off_target_share'][0]:.3f}).",
        f"- null control: on {tau_ad['num_null']} test subjects with no tau, TauAD's mean map in the brain is "
        f"{tau_ad['null_mean_in_brain']:.4f}, {null_ratio:.2f} of its mean on subjects with tau "
        f"({tau_ad['diseased_mean_in_brain']:.4f}).", "",
    ]


def _report_md(r: Mapping[str, Any]) -> str:
    m, sev, f = r["methods"], r["severity"], r["frozen"]
    lines = [
        "# Tau PET anomaly detection (TauAD) on the synthetic tau cohort", "",
        f"`{r['command']}`; settings frozen on the validation split in `{r['settings_file']}` "
        f"(SHA-256 `{r['settings_sha256'][:16]}...`: t0 = {f['t0']}); {r['num_test']} held-out test subjects, "
        f"{r['num_preclinical']} preclinical subjects; {r['seconds'] / 60:.1f} min on this machine.",
        "**Synthetic subjects from the generator family the model was trained on; no claim about real scans.**", "",
        f"Tau positive: true load > {r['load_threshold']} inside the brain. Medians over subjects with [bootstrap 95 % "
        "interval]; AUPRC and off-target share over subjects with tau, the null row over subjects with no load.", "",
        "| | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS),
        "| voxel-wise AUPRC | " + " | ".join(format_ci(m[k]["auprc"]) for k in METHODS) + " |",
        "| share of anomaly mass off target (pass < 0.05, and below the baselines) | "
        + " | ".join(format_ci(m[k]["off_target_share"], 3) for k in METHODS) + " |",
        "| null control: mean map in the brain, no-load subjects | "
        + " | ".join(f"{m[k]['null_mean_in_brain']:.4f}" for k in METHODS) + " |",
        "| the same on subjects with tau | " + " | ".join(f"{m[k]['diseased_mean_in_brain']:.4f}" for k in METHODS)
        + " |", "",
        *_checks(m),
        "## Severity", "",
        f"Linear SVM on the 6 Braak-regional mean anomaly scores, fitted on the training split (`{sev['model']}`).", "",
        f"- AUC CN vs MCI/AD, test split: {sev['auc_test']:.3f}",
        f"- preclinical cohort: Spearman rho(P(MCI/AD), true cortical load) = {sev['preclinical_spearman_load']:.3f}",
        f"- preclinical cognition by predicted group ({sev['preclinical_groups']}; n = "
        f"{sev['preclinical_group_sizes'][0]} / {sev['preclinical_group_sizes'][1]}): "
        f"{sev['preclinical_cognition_low_vs_high'][0]:.2f} vs {sev['preclinical_cognition_low_vs_high'][1]:.2f}, "
        f"Welch t = {sev['preclinical_cognition_t']:.2f}, p = {sev['preclinical_cognition_p']:.3g}", "",
        "## Speed", "", "| sampling | steps | seconds per volume | median AUPRC |", "|---|---|---|---|",
    ]
    for label, s in r["speed"].items():
        lines.append(f"| {label} | {s['num_inference_steps'] or 'bundle default'} | {s['seconds_per_volume']:.1f} | "
                     f"{s['median_auprc']:.3f} |")
    return "\n".join(lines) + "\n"
