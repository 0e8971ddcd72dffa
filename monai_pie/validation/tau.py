"""Tau PET anomaly detection (TauAD) validated on the synthetic tau cohort, where the tau load is known per voxel.

Protocol (DESIGN.md section 6): the sampling settings (start mode, ``t0``, guidance) and the anomaly map are chosen on
the cohort's validation split and frozen in ``docs/validation/tau_settings.json`` (``--stage tune``);
``--stage evaluate`` reads them, runs the ``tau_pet_anomaly`` bundle (what users run) on the held-out test split and
the preclinical cohort, and scores, on the same subjects:

* TauAD's map (the frozen kind), the healthy-only reconstruction error ``L_H`` (AnoDDPM-style) from the same run,
  the voxel-wise Z-score map against the CN training subjects (the conventional baseline), and a subject-blind
  control: the training subjects' mean load map ("where tau usually is"), which shows how much of a score is
  localisation alone;
* voxel-wise AUPRC against the true load (load above :data:`LOAD_THRESHOLD`, inside the brain), per subject with
  bootstrap 95 % intervals, and pooled over all test subjects (subjects without tau included), which a map only wins
  by marking the right amount of tau in the right subjects;
* the share of anomaly mass in the off-target regions (choroid plexus, basal ganglia, meninges);
* a null control: the map on test subjects with no load at all, against its level on subjects with tau;
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
import torch

from ..bundle_tools import bundle_dir, find_handler, run_bundle
from ..inferers.anomaly import anomaly_map
from ..utils import atomic_write_text, json_safe
from .protocol import check_not_frozen, read_frozen
from .stats import format_ci, median_ci, spearman

__all__ = ["LOAD_THRESHOLD", "MAP_CANDIDATES", "NULL_RATIO_LIMIT", "RUN_CANDIDATES", "evaluate_tau", "pooled_auprc",
           "tune_tau"]

#: a voxel is tau positive where the true load exceeds this (load per unit GM; AD cortex reaches about 1)
LOAD_THRESHOLD = 0.1
#: sampling settings tried on the validation split: the start (DDIM inversion or partial noise), its level ``t0`` (a
#: share of the noise range; TauAD 0.3-0.5; 1 is pure noise, the subject kept by its structure channel only) and the
#: guidance of both reconstructions
RUN_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"start": "ddim_inversion", "t0": 0.5, "guidance_scale": 1.0},
    {"start": "ddim_inversion", "t0": 0.5, "guidance_scale": 3.0},
    {"start": "partial_noise", "t0": 0.8, "guidance_scale": 3.0},
    {"start": "partial_noise", "t0": 0.8, "guidance_scale": 5.0},
    {"start": "partial_noise", "t0": 1.0, "guidance_scale": 3.0},
    {"start": "partial_noise", "t0": 1.0, "guidance_scale": 5.0},
    {"start": "partial_noise", "t0": 0.8, "guidance_scale": 8.0},
    {"start": "partial_noise", "t0": 1.0, "guidance_scale": 8.0},
)
#: the anomaly maps tried on each run (``inferers.ANOMALY_MAPS`` less the L_H baseline)
MAP_CANDIDATES: tuple[str, ...] = ("complementary", "healthy_excess", "supported_difference", "difference")
#: a candidate is admissible only if its mean map on validation subjects without tau is below this share of its
#: median on subjects with tau (a map that marks tau where there is none is a location prior, not a detector)
NULL_RATIO_LIMIT = 0.1
METHODS: tuple[str, ...] = ("TauAD", "L_H (healthy reconstruction error)", "Z-score vs CN",
                            "location prior (mean training load)")
#: the issue's baselines TauAD must beat; the location prior is a control reported beside them
BASELINES: tuple[str, ...] = METHODS[1:3]
SETTINGS_FILE = "docs/validation/tau_settings.json"
BUNDLE = "tau_pet_anomaly"
#: voxel stride of the subject bootstrap of the pooled AUPRC (the point estimate uses every voxel)
POOLED_STRIDE, POOLED_RESAMPLES = 7, 200


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
    """Run the bundle on ``items`` with ``settings`` (``t0``, ``start``, ``anomaly_map``, ...); one subfolder per
    subject. ``overrides`` are other bundle settings (e.g. the network sizes of weights trained with other settings).

    A finished run leaves ``run.json`` (subjects, settings, weights SHA-256); a later call with the same record
    reuses it, so an interrupted validation resumes.

    Returns:
        ``{subject: {"dir", "anomaly", "healthy", "unhealthy", "regional", "seconds"}}``.
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
        results[item["subject"]] = {"dir": s["output_dir"], **{k: s["outputs"][k] for k in
                                                               ("anomaly", "healthy", "unhealthy")},
                                    "regional": s.get("regional", {}), "seconds": s["seconds"]}
    atomic_write_text(marker, json.dumps({"record": record, "results": results}, indent=1))
    return results


def zscore_reference(items: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise mean and SD of the CN subjects among ``items`` (the conventional tau Z-score reference)."""
    cn = [_load(i["image"]) for i in items if i["diagnosis"] == "CN"]
    if len(cn) < 3:
        raise ValueError(f"the Z-score reference needs at least 3 CN training subjects, got {len(cn)}.")
    stack = np.stack(cn)
    return stack.mean(0), np.maximum(stack.std(0, ddof=1), 1e-3)


def location_prior(items: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The mean true load of ``items`` (the training split): the same map for every subject."""
    return np.mean([_load(i["load"]) for i in items], axis=0)


def auprc(score: np.ndarray, positive: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of ``score`` for ``positive`` voxels inside ``mask``; NaN without a positive voxel."""
    from sklearn.metrics import average_precision_score

    y = positive[mask]
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, score[mask]))


def pooled_auprc(maps: Sequence[np.ndarray], positives: Sequence[np.ndarray], mask: np.ndarray,
                 num_resamples: int = POOLED_RESAMPLES, stride: int = POOLED_STRIDE,
                 seed: int = 0) -> tuple[float, float, float]:
    """AUPRC of the voxels of all subjects at once (subjects without tau included), with a bootstrap 95 % interval
    over subjects (on every ``stride``-th voxel of the mask, for time).

    Args:
        maps, positives: per subject, ``(*spatial)`` scores and tau-positive voxels.
        mask: ``(*spatial)`` brain mask.

    Returns:
        ``(pooled AUPRC, low, high)``; NaN without any positive voxel.
    """
    from sklearn.metrics import average_precision_score

    y = [p[mask] for p in positives]
    x = [m[mask] for m in maps]
    if not any(v.any() for v in y):
        return (float("nan"),) * 3
    point = float(average_precision_score(np.concatenate(y), np.concatenate(x)))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(num_resamples):
        pick = rng.integers(0, len(y), size=len(y))
        yy = np.concatenate([y[i][::stride] for i in pick])
        if yy.any():
            boot.append(average_precision_score(yy, np.concatenate([x[i][::stride] for i in pick])))
    if not boot:  # no resampling asked for (tuning ranks points only)
        return point, float("nan"), float("nan")
    return point, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def reconstruction_maps(item: Mapping[str, Any], result: Mapping[str, Any], kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Every anomaly map of ``kinds`` from one run's reconstructions (input grid, SUVR), as the inferer makes it."""
    x, h, u = (torch.from_numpy(_load(f))[None, None] for f in (item["image"], result["healthy"], result["unhealthy"]))
    return {k: anomaly_map(x, h, u, k)[0, 0].numpy() for k in kinds}


def subject_maps(item: Mapping[str, Any], result: Mapping[str, Any], reference: tuple[np.ndarray, np.ndarray],
                 prior: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """The maps of every method for one subject on the model grid, zero outside the brain."""
    x = _load(item["image"])
    mean, sd = reference
    return {METHODS[0]: _load(result["anomaly"]) * brain,
            METHODS[1]: np.abs(x - _load(result["healthy"])) * brain,
            METHODS[2]: np.maximum((x - mean) / sd, 0.0) * brain,
            METHODS[3]: prior * brain}


def score_subject(item: Mapping[str, Any], maps: Mapping[str, np.ndarray], brain: np.ndarray,
                  load: np.ndarray | None = None) -> dict[str, Any]:
    """AUPRC, off-target share and mean map in the brain, per method, for one subject (``load``: its true load map,
    read from ``item`` when not given)."""
    load = _load(item["load"]) if load is None else load
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


def _score(items: Sequence[Mapping[str, Any]], maps: Sequence[Mapping[str, np.ndarray]], brain: np.ndarray,
           pooled_resamples: int = POOLED_RESAMPLES) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-subject rows and the per-method summary of ``maps`` (one ``{method: map}`` per item)."""
    loads = [_load(i["load"]) for i in items]
    rows = [score_subject(i, m, brain, load) for i, m, load in zip(items, maps, loads)]
    positives = [load > LOAD_THRESHOLD for load in loads]
    summary = {name: {**_summarise(rows, name),
                      "pooled_auprc": pooled_auprc([m[name] for m in maps], positives, brain, pooled_resamples)}
               for name in maps[0]}
    return rows, summary


def _null_ratio(m: Mapping[str, Any]) -> float:
    return m["null_mean_in_brain"] / m["diseased_mean_in_brain"] if m["diseased_mean_in_brain"] > 0 else float("nan")


def tune_tau(cohort_dir: str, settings_file: str = SETTINGS_FILE, model_path: str | None = None,
             work_dir: str | None = None, num_inference_steps: int | None = None, overwrite: bool = False,
             candidates: Sequence[Mapping[str, Any]] = RUN_CANDIDATES, maps: Sequence[str] = MAP_CANDIDATES,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Choose the sampling settings and the anomaly map on the validation split and freeze them (with the steps) in
    ``settings_file``, which is never overwritten unless ``overwrite``.

    Every run of ``candidates`` is scored with every map of ``maps`` (computed from the same reconstructions). The
    winner has the highest pooled AUPRC among the admissible candidates: those whose mean map on subjects without
    tau is below :data:`NULL_RATIO_LIMIT` of their level on subjects with tau (all candidates if none is).
    """
    start = time.perf_counter()
    cohort = _check_cohort(cohort_dir)
    path = check_not_frozen(settings_file, overwrite)
    work = Path(work_dir or cohort / "tau_validation") / "tune"
    items = _items(cohort, "validation")
    brain = _load(cohort / "rois" / "brain_mask.nii.gz") > 0
    steps = int(num_inference_steps) if num_inference_steps else None
    tuning = []
    for run in candidates:
        settings = {**run, **({"num_inference_steps": steps} if steps else {})}
        name = "_".join(f"{k}-{v}" for k, v in sorted(run.items()))
        results = run_anomaly(items, work / name, settings, model_path, overrides=overrides)
        per_item = [reconstruction_maps(i, results[i["subject"]], maps) for i in items]
        _, summary = _score(items, [{k: v * brain for k, v in m.items()} for m in per_item], brain, 0)
        for kind, m in summary.items():
            tuning.append({**run, "anomaly_map": kind, "pooled_auprc": m["pooled_auprc"][0],
                           "median_auprc": m["auprc"][0], "null_ratio": _null_ratio(m),
                           "off_target_share": m["off_target_share"][0]})
    admissible = [t for t in tuning if t["null_ratio"] < NULL_RATIO_LIMIT] or tuning
    best = max(admissible, key=lambda t: t["pooled_auprc"])
    frozen = {"protocol": "tau_pet_anomaly v2", **{k: best[k] for k in ("start", "t0", "guidance_scale",
                                                                         "anomaly_map")},
              "num_inference_steps": steps, "load_threshold": LOAD_THRESHOLD, "tuned_on": "validation split",
              "selection": f"highest pooled AUPRC among candidates with null ratio < {NULL_RATIO_LIMIT}",
              "tuning": tuning, "seconds": round(time.perf_counter() - start, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(json_safe(frozen), indent=2) + "\n")
    return {k: v for k, v in frozen.items() if k != "tuning"}


def frozen_run_settings(frozen: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle settings of a frozen settings file."""
    keys = ("start", "t0", "guidance_scale", "anomaly_map")
    if frozen.get("protocol") != "tau_pet_anomaly v2" or any(k not in frozen for k in keys):
        raise ValueError(f"the settings file was frozen by another protocol ({frozen.get('protocol')!r}); tune again "
                         "with `monai-pie validate tau COHORT --stage tune --overwrite True`.")
    return {**{k: frozen[k] for k in keys},
            **({"num_inference_steps": frozen["num_inference_steps"]} if frozen.get("num_inference_steps") else {})}


def evaluate_tau(cohort_dir: str, settings_file: str = SETTINGS_FILE, model_path: str | None = None,
                 work_dir: str | None = None, output_dir: str = "docs", speed_subjects: int = 3,
                 reference_steps: int = 1000, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every method on the test split and the preclinical cohort with the frozen settings; write
    ``<output_dir>/validation/tau_pet.md`` and ``.json`` and the fitted ``severity.json`` beside them."""
    start = time.perf_counter()
    cohort = _check_cohort(cohort_dir)
    frozen, digest = read_frozen(settings_file, "tau")
    settings = frozen_run_settings(frozen)
    work = Path(work_dir or cohort / "tau_validation")
    brain = _load(cohort / "rois" / "brain_mask.nii.gz") > 0
    train, test, pre = (_items(cohort, s) for s in ("training", "test", "preclinical"))
    reference, prior = zscore_reference(train), location_prior(train)
    runs = {name: run_anomaly(items, work / name, settings, model_path, overrides=overrides)
            for name, items in (("training", train), ("test", test), ("preclinical", pre))}
    rows, methods = _score(test, [subject_maps(i, runs["test"][i["subject"]], reference, prior, brain) for i in test],
                           brain)
    severity = _severity(train, test, pre, runs, Path(output_dir) / "validation" / "tau_severity.json")
    with_tau = [i for i in test if i["diagnosis"] != "CN"] or test  # AUPRC needs tau-positive voxels
    speed = _speed(with_tau[:speed_subjects], work / "speed", settings, model_path, reference, prior, brain,
                   reference_steps, overrides)
    report = {"settings_file": settings_file, "settings_sha256": digest, "frozen": frozen, "methods": methods,
              "severity": severity, "speed": speed, "num_test": len(test), "num_preclinical": len(pre),
              "load_threshold": LOAD_THRESHOLD, "subjects": rows,
              "seconds": round(time.perf_counter() - start, 1),
              # the inferer's own time over every subject of the three runs, also when they were resumed from cache
              "runs_subjects": {name: len(run) for name, run in runs.items()},
              "sampling_seconds": round(sum(float(v["seconds"]) for run in runs.values() for v in run.values()), 1),
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
                # the untrained baseline beside the SVM: the mean of the regional scores, and each region alone
                "preclinical_spearman_mean_score": spearman(x_pre.mean(1), load),
                "preclinical_spearman_by_region": {n: spearman(x_pre[:, k], load) for k, n in enumerate(names)},
                "preclinical_groups": rule, "preclinical_group_sizes": [int((~predicted).sum()), int(predicted.sum())],
                "preclinical_cognition_low_vs_high": [float(cognition[~predicted].mean()),
                                                      float(cognition[predicted].mean())],
                "preclinical_cognition_t": float(t.statistic), "preclinical_cognition_p": float(t.pvalue)})
    return out


def _speed(items, work: Path, settings, model_path, reference, prior, brain, reference_steps: int,
           overrides: dict[str, Any] | None) -> dict[str, Any]:
    out = {}
    for label, steps in (("bundle steps", settings.get("num_inference_steps")),
                         (f"reference: {reference_steps} steps", reference_steps)):
        cfg = {**settings, **({"num_inference_steps": steps} if steps else {})}
        res = run_anomaly(items, work / str(steps or "default"), cfg, model_path, overrides=overrides)
        rows = [score_subject(i, subject_maps(i, res[i["subject"]], reference, prior, brain), brain) for i in items]
        out[label] = {"num_inference_steps": steps, "seconds_per_volume": float(np.median([r["seconds"] for r in
                                                                                          res.values()])),
                      "median_auprc": float(np.nanmedian([r[METHODS[0]]["auprc"] for r in rows]))}
    return out


def _checks(m: Mapping[str, Any]) -> list[str]:
    """The issue's pass checks, each printed as PASS or FAIL with its numbers."""
    tau_ad, l_h, z = (m[k] for k in METHODS[:3])
    prior = m[METHODS[3]]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    above = tau_ad["auprc"][0] > max(l_h["auprc"][0], z["auprc"][0])
    separated = tau_ad["auprc"][1] > max(l_h["auprc"][2], z["auprc"][2])
    pooled_above = tau_ad["pooled_auprc"][0] > max(l_h["pooled_auprc"][0], z["pooled_auprc"][0])
    pooled_separated = tau_ad["pooled_auprc"][1] > max(l_h["pooled_auprc"][2], z["pooled_auprc"][2])
    off = tau_ad["off_target_share"][0]
    off_ok = off < 0.05 and off < min(l_h["off_target_share"][0], z["off_target_share"][0])
    null_ratio = _null_ratio(tau_ad)
    return [
        "Checks:", "",
        f"- {verdict(above)}: TauAD's median AUPRC ({tau_ad['auprc'][0]:.3f}) above L_H ({l_h['auprc'][0]:.3f}) and "
        f"the Z-score map ({z['auprc'][0]:.3f}); intervals {'do not overlap' if separated else 'overlap'}.",
        f"- {verdict(pooled_above)}: TauAD's pooled AUPRC ({tau_ad['pooled_auprc'][0]:.3f}) above L_H "
        f"({l_h['pooled_auprc'][0]:.3f}) and the Z-score map ({z['pooled_auprc'][0]:.3f}); intervals "
        f"{'do not overlap' if pooled_separated else 'overlap'}.",
        f"- {verdict(off_ok)}: TauAD's off-target share ({off:.3f}) below 0.05 and below both baselines "
        f"({l_h['off_target_share'][0]:.3f}, {z['off_target_share'][0]:.3f}).",
        f"- {verdict(null_ratio < NULL_RATIO_LIMIT)}: null control: on {tau_ad['num_null']} test subjects with no tau, "
        f"TauAD's mean map in the brain is {tau_ad['null_mean_in_brain']:.4f}, {null_ratio:.2f} of its median on "
        f"subjects with tau ({tau_ad['diseased_mean_in_brain']:.4f}; pass below {NULL_RATIO_LIMIT}).",
        f"- control, not a pass check: the subject-blind location prior scores a median AUPRC of "
        f"{prior['auprc'][0]:.3f} and a pooled AUPRC of {prior['pooled_auprc'][0]:.3f}: "
        + ("TauAD is below it per subject, so on this cohort (tau spreads through the same regions in every subject) "
           "most of a per-subject AUPRC is localisation; " if tau_ad["auprc"][0] < prior["auprc"][0] else
           "TauAD is above it per subject; ")
        + ("pooled over subjects, which needs the right amount of tau in the right subject, TauAD is "
           + ("above it." if tau_ad["pooled_auprc"][0] > prior["pooled_auprc"][0] else "below it as well.")), "",
    ]


def _report_md(r: Mapping[str, Any]) -> str:
    m, sev, f = r["methods"], r["severity"], r["frozen"]
    lines = [
        "# Tau PET anomaly detection (TauAD) on the synthetic tau cohort", "",
        f"`{r['command']}`; settings frozen on the validation split in `{r['settings_file']}` "
        f"(SHA-256 `{r['settings_sha256'][:16]}...`: start = {f['start']}, t0 = {f['t0']}, guidance = "
        f"{f['guidance_scale']}, map = `{f['anomaly_map']}`; {f['selection']}); {r['num_test']} held-out test "
        f"subjects, {r['num_preclinical']} preclinical subjects; {r['seconds'] / 60:.1f} min for this invocation, "
        f"{r['sampling_seconds'] / 60:.1f} min of sampling for its {sum(r['runs_subjects'].values())} subjects "
        "(resumed runs included).",
        "**Synthetic subjects from the generator family the model was trained on; no claim about real scans.**", "",
        f"Tau positive: true load > {r['load_threshold']} inside the brain. Medians over subjects with [bootstrap 95 % "
        "interval]; per-subject AUPRC and off-target share over subjects with tau, pooled AUPRC over the voxels of "
        "every test subject at once (interval: bootstrap over subjects), the null row over subjects with no load.", "",
        "| | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS),
        "| voxel-wise AUPRC per subject | " + " | ".join(format_ci(m[k]["auprc"]) for k in METHODS) + " |",
        "| voxel-wise AUPRC pooled over subjects | " + " | ".join(format_ci(m[k]["pooled_auprc"]) for k in METHODS)
        + " |",
        "| share of anomaly mass off target (pass < 0.05, and below the baselines) | "
        + " | ".join(format_ci(m[k]["off_target_share"], 3) for k in METHODS) + " |",
        "| null control: mean map in the brain, no-load subjects | "
        + " | ".join(f"{m[k]['null_mean_in_brain']:.4f}" for k in METHODS) + " |",
        "| the same on subjects with tau (median) | "
        + " | ".join(f"{m[k]['diseased_mean_in_brain']:.4f}" for k in METHODS) + " |", "",
        *_checks(m),
        "## Severity", "",
        f"Linear SVM on the 6 Braak-regional mean anomaly scores, fitted on the training split (`{sev['model']}`).", "",
        f"- AUC CN vs MCI/AD, test split: {sev['auc_test']:.3f}",
        f"- preclinical cohort: Spearman rho(P(MCI/AD), true cortical load) = {sev['preclinical_spearman_load']:.3f}; "
        f"the untrained mean of the six regional scores: {sev['preclinical_spearman_mean_score']:.3f}; each region "
        "alone: " + ", ".join(f"{n} {v:.2f}" for n, v in sev["preclinical_spearman_by_region"].items()),
        f"- preclinical cognition by predicted group ({sev['preclinical_groups']}; n = "
        f"{sev['preclinical_group_sizes'][0]} / {sev['preclinical_group_sizes'][1]}): "
        f"{sev['preclinical_cognition_low_vs_high'][0]:.2f} vs {sev['preclinical_cognition_low_vs_high'][1]:.2f}, "
        f"Welch t = {sev['preclinical_cognition_t']:.2f}, p = {sev['preclinical_cognition_p']:.3g}", "",
        "## Speed", "", "| sampling | steps | seconds per volume | median AUPRC |", "|---|---|---|---|",
    ]
    for label, s in r["speed"].items():
        lines.append(f"| {label} | {s['num_inference_steps'] or 'bundle default'} | {s['seconds_per_volume']:.1f} | "
                     f"{s['median_auprc']:.3f} |")
    lines += ["", "## Tuning (validation split)", "",
              "| start | t0 | guidance | map | pooled AUPRC | median AUPRC | null ratio | off-target share |",
              "|---|---|---|---|---|---|---|---|"]
    for t in f.get("tuning", []):
        lines.append(f"| {t['start']} | {t['t0']} | {t['guidance_scale']} | {t['anomaly_map']} | "
                     f"{t['pooled_auprc']:.3f} | {t['median_auprc']:.3f} | {t['null_ratio']:.2f} | "
                     f"{t['off_target_share']:.3f} |")
    return "\n".join(lines) + "\n"
