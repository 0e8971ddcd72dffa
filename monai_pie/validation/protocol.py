"""What the validation protocols share (``brain_protocol``, ``cxr_protocol``): the modes they compare, the frozen
settings file's life cycle, and the evaluation's outputs."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..bundle_tools import find_handler, run_bundle
from ..engines import ProgressionSummary
from ..utils import atomic_write_text
from .settings import ProgressionSettings

__all__ = ["check_lines", "check_not_frozen", "freeze_settings", "machine", "mode_folder",
           "parallel_progression_runs", "read_frozen", "recorded_progression_run", "run_once", "shard_runs",
           "split_description", "split_items", "split_seed", "validation_modes", "weights_digest", "write_evaluation"]


def mode_folder(name: str) -> str:
    """The folder name of a mode's recorded runs (``"PIE, bundle defaults"`` -> ``"PIE__bundle_defaults"``): one rule,
    so a later run (e.g. a few-step comparison) finds the evaluation's records of the same mode."""
    return "".join(c if c.isalnum() else "_" for c in name)


def validation_modes(progression: str | Path | None,
                     frozen: Mapping[str, Any] | None = None) -> dict[str, ProgressionSettings]:
    """The modes a protocol compares: those of a frozen settings file, or (tuning) the progression bundle's own PIE
    setting and PIE's published one."""
    if frozen is not None:
        return {name: ProgressionSettings(**values) for name, values in frozen["modes"].items()}
    from ..bundle_tools import parse_bundle

    bundle = ProgressionSettings.from_config(parse_bundle(progression).config)
    return {"PIE, bundle defaults": bundle, "PIE, published setting": ProgressionSettings.published()}


def machine() -> str:
    """Where the runs ran (the bundles pick CUDA when there is one): the GPU's name or the CPU count, and torch's
    version."""
    import os

    import torch

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{where}, torch {torch.__version__}"


def weights_digest(progression: str | Path, model_path: str | None) -> str:
    """SHA-256 of the weights a run may use: ``model_path``, or every ``models/*.pt`` of the ``progression`` bundle
    (a settings ``config`` may pick another file than ``model.pt``), read in name order."""
    paths = [Path(model_path)] if model_path else sorted((Path(progression) / "models").glob("*.pt"))
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def run_once(index: str | Path, record: Mapping[str, Any], run: Callable[[], Any]) -> tuple[Any, bool]:
    """``run()``'s frame paths (anything JSON-able), recorded atomically at ``index`` with
    ``record`` (what the run used: items, settings, weights' hash); a later call with the same record returns the
    recorded result instead, so an interrupted evaluation resumes and a changed measure is recomputed without
    re-running the model. Returns ``(result, reused)``."""
    index = Path(index)
    done = _recorded(index, record)
    if done is not None:
        return done, True
    frames = run()
    atomic_write_text(index, json.dumps({"record": record, "frames": frames}) + "\n")
    return frames, False


def _recorded(index: Path, record: Mapping[str, Any]) -> Any:
    """The frames recorded at ``index`` under the same ``record``, or None."""
    done = json.loads(index.read_text()) if index.is_file() else {}
    return done["frames"] if done.get("record") == json.loads(json.dumps(record)) else None


def recorded_progression_run(progression: str | Path, settings: ProgressionSettings, items: list[dict[str, Any]],
                             out_dir: Path, model_path: str | None = None,
                             overrides: dict[str, Any] | None = None, shards: int = 1) -> tuple[list[list[str]], bool]:
    """Every item through the progression bundle in one run (frames under ``out_dir``), or the frames of the same
    run recorded in ``out_dir/run.json`` (same items, settings, overrides and weights; :func:`run_once`).
    ``shards > 1`` splits the items into that many consecutive parts, each a recorded run of its own under
    ``out_dir/part<k>`` (what :func:`parallel_progression_runs` runs side by side). Returns ``(frame paths per item,
    reused)``."""
    if shards > 1:
        frames, reused = [], True
        for part in shard_runs(progression, settings, items, out_dir, model_path, overrides, shards):
            got, was = recorded_progression_run(*part)
            frames, reused = frames + got, reused and was
        return frames, reused

    def run() -> list[list[str]]:
        run_overrides = {**(overrides or {}), **settings.bundle_overrides(progression), "datalist": items,
                         "output_dir": str(out_dir), "output_subfolders": True, "progress": False}
        if model_path:
            run_overrides["model_path"] = model_path
        summaries = find_handler(run_bundle(progression, run_overrides), ProgressionSummary).summaries
        if len(summaries) != len(items):
            raise RuntimeError(f"the bundle wrote {len(summaries)} progressions for {len(items)} items.")
        return [list(summary["frames"]) for summary in summaries]

    record = _run_record(settings, items, overrides, weights_digest(progression, model_path))
    return run_once(Path(out_dir) / "run.json", record, run)


def _run_record(settings: ProgressionSettings, items: list[dict[str, Any]], overrides: dict[str, Any] | None,
                weights_sha256: str) -> dict[str, Any]:
    """What a recorded progression run used (items, settings, overrides, the weights' hash): a run is reused only
    when all of it is the same."""
    return {"items": items, "settings": settings.as_dict(), "overrides": overrides or {},
            "weights_sha256": weights_sha256}


def recorded_parts(progression: str | Path, settings: ProgressionSettings, items: list[dict[str, Any]],
                   out_dir: Path, model_path: str | None = None, overrides: dict[str, Any] | None = None,
                   shards: int = 1) -> list[bool]:
    """Per part of a :func:`recorded_progression_run` with these arguments, whether it is already recorded (and
    would be reused rather than run)."""
    digest = weights_digest(progression, model_path)  # the parts share the weights: read them once
    return [_recorded(Path(where) / "run.json", _run_record(settings, part, overrides, digest)) is not None
            for _, _, part, where, _, _ in shard_runs(progression, settings, items, out_dir, model_path, overrides,
                                                      shards)]


def split_items(items: list[Any], shards: int) -> list[list[Any]]:
    """``items`` in ``shards`` consecutive parts whose sizes differ by one at most (empty parts dropped)."""
    size, extra = divmod(len(items), shards)
    parts, start = [], 0
    for k in range(shards):
        end = start + size + (k < extra)
        parts.append(items[start:end])
        start = end
    return [p for p in parts if p]


def parallel_progression_runs(runs: list[dict[str, Any]], workers: int, progress: bool = True) -> list[bool]:
    """Record several progression runs at once: each run (the keyword arguments of
    :func:`recorded_progression_run`, ``shards`` among them) is split into its shards and every shard runs in one of
    ``workers`` processes. A later :func:`recorded_progression_run` with the same arguments reuses them. On a GPU
    the processes share the device; on a CPU this only pays where the CPUs outnumber a run's threads. Returns, per
    shard, whether it was reused from an earlier record."""
    from ..utils.parallel import process_map

    jobs = [part for run in runs for part in shard_runs(**run)]
    return process_map(_recorded_run_job, jobs, workers, desc="progression runs", progress=progress)


def shard_runs(progression: str | Path, settings: ProgressionSettings, items: list[dict[str, Any]], out_dir: Path,
               model_path: str | None = None, overrides: dict[str, Any] | None = None,
               shards: int = 1) -> list[tuple[Any, ...]]:
    """The unsharded :func:`recorded_progression_run` arguments of each shard of a run (one per part under
    ``out_dir/part<k>``, or the run itself when ``shards`` is 1)."""
    if shards <= 1:
        return [(progression, settings, items, Path(out_dir), model_path, overrides)]
    return [(progression, settings, part, Path(out_dir) / f"part{k}", model_path, overrides)
            for k, part in enumerate(split_items(items, shards))]


def _recorded_run_job(*args: Any) -> bool:
    return recorded_progression_run(*args)[1]


def read_frozen(path: str | Path, task: str) -> tuple[dict[str, Any], str]:
    """A frozen settings file and its SHA-256; a ``FileNotFoundError`` that says to run ``monai-pie validate <task>
    COHORT --stage tune`` first when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `monai-pie validate {task} COHORT --stage tune` first, which "
                                "freezes the settings on the tuning split.")
    raw = path.read_bytes()
    return json.loads(raw), hashlib.sha256(raw).hexdigest()


def split_seed(frozen: Mapping[str, Any], seed: int | None, num_subjects: int) -> int:
    """The first subject seed of the evaluation split: the frozen file's, or that of a confirmation split (``seed``:
    subjects no evaluation with earlier settings has seen, so the result cannot have steered the settings).

    Args:
        frozen: The frozen settings (its ``splits``).
        seed: The confirmation split's first seed; None: the frozen evaluation seed.
        num_subjects: Subjects of the split (seeds ``seed ... seed + num_subjects - 1``).

    Returns:
        int: The first seed.

    Raises:
        ValueError: ``seed`` is not a non-negative integer, or its range overlaps the tuning split or the frozen
            evaluation split (taken as ``num_subjects`` long: earlier evaluations saw those subjects).
    """
    splits = frozen["splits"]
    if seed is None:
        return int(splits["evaluation_seed"])
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`evaluation_seed` must be a non-negative integer, got {seed!r}.")
    tuning = (int(splits["tuning_seed"]), int(splits["tuning_seed"]) + int(splits["tuning_subjects"]))
    evaluation = (int(splits["evaluation_seed"]), int(splits["evaluation_seed"]) + num_subjects)
    for name, (lo, hi) in (("tuning", tuning), ("evaluation", evaluation)):
        if seed < hi and lo < seed + num_subjects and seed != splits["evaluation_seed"]:
            raise ValueError(f"`evaluation_seed` {seed}: seeds {seed}-{seed + num_subjects - 1} overlap the {name} "
                             f"split (seeds {lo}-{hi - 1}); a confirmation split takes seeds no tuning or evaluation "
                             "saw.")
    return seed


def split_description(frozen: Mapping[str, Any], seed: int, what: str) -> str:
    """How a report names its evaluation split: ``<what> unseen by the tuning (seeds S+)`` (the frozen file's
    evaluation seeds, which earlier evaluations may have seen), or a confirmation split beside them."""
    frozen_seed = int(frozen["splits"]["evaluation_seed"])
    if seed == frozen_seed:
        return f"{what} unseen by the tuning (seeds {seed}+)"
    return (f"{what} of a confirmation split (seeds {seed}+, which no evaluation with earlier settings saw; the frozen "
            f"evaluation split is seeds {frozen_seed}+)")


def check_not_frozen(path: str | Path, overwrite: bool) -> Path:
    """``path`` if a tuning run may write it: settings are frozen once tuned, so an existing file is refused unless
    ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: settings are frozen once tuned. Pass --overwrite True to re-tune (and "
                              "then re-run the evaluation).")
    return path


def write_evaluation(task: str, methods: dict[str, Any], frozen: dict[str, Any], params: dict[str, Any], t0: float,
                     output_dir: str | Path, write_report: Callable[..., str]) -> dict[str, Any]:
    """Finish ``params`` (seconds since ``t0``, the command line) and write ``<output_dir>/validation/
    <task>_progression.md`` with ``write_report(methods, frozen, params, path)`` and its ``.json`` beside it."""
    params["seconds"] = round(time.perf_counter() - t0, 1)
    seed = frozen["splits"]["evaluation_seed"]  # a confirmation split's own seed goes into the command
    params["command"] = (f"monai-pie validate {task} {params.pop('cohort_dir')} --stage evaluate --num_subjects "
                         f"{params['num_subjects']} --num_seeds {params['num_seeds']}"
                         + (f" --workers {params['workers']}" if params.get("workers", 1) > 1 else "")
                         + (f" --shards {params['shards']}" if params.get("shards", 1) > 1 else "")
                         + (f" --evaluation_seed {params['evaluation_seed']}" if params.get("evaluation_seed", seed)
                            != seed else ""))
    out = Path(output_dir) / "validation"
    report = write_report(methods, frozen, params, out / f"{task}_progression.md")
    atomic_write_text(out / f"{task}_progression.json",
                      json.dumps({"methods": methods, "params": params}, indent=1, default=float) + "\n")
    return {"report": str(out / f"{task}_progression.md"), "seconds": params["seconds"], "lines": len(report)}


def freeze_settings(path: Path, protocol: str, progression: str | Path, counterfactual: dict[str, Any],
                    settings_overrides: Mapping[str, Any] | None, splits: dict[str, Any], thresholds: dict[str, Any],
                    tuning: dict[str, Any], t0: float, more_modes: Mapping[str, dict[str, Any]] | None = None,
                    **extra: Any) -> dict[str, Any]:
    """Write the frozen settings file: the bundle's PIE setting, PIE's published one (both with
    ``settings_overrides``), the tuned ``counterfactual`` setting and ``more_modes`` (name: settings), with the splits,
    ``extra`` entries (readers, stages), the thresholds and the ``tuning`` numbers that chose them (plus the seconds
    since ``t0``)."""
    modes = {name: s.replace(**(settings_overrides or {})).as_dict()
             for name, s in validation_modes(progression).items()}
    modes["counterfactual (tuned)"] = counterfactual
    modes.update(more_modes or {})
    frozen = {"protocol": protocol, "frozen_at": time.strftime("%Y-%m-%d %H:%M:%S"), "splits": splits, **extra,
              "modes": modes, "thresholds": thresholds,
              "tuning": {**tuning, "seconds": round(time.perf_counter() - t0, 1)}}
    atomic_write_text(path, json.dumps(frozen, indent=1, default=float) + "\n")
    return frozen


def check_lines(methods: Mapping[str, Any], described: Mapping[str, str]) -> list[str]:
    """The pass-check table's rows: per check its threshold text and each method's value with PASS / FAIL ("-" where
    a method has no such check, "n/a" where its value is not finite)."""
    lines = []
    for check, text in described.items():
        cells = []
        for n in methods:
            value = methods[n]["checks"].get(check)
            cells.append("-" if value is None else ("n/a" if not math.isfinite(value[0]) else
                                                    f"{value[0]:.2f} {'PASS' if value[1] else 'FAIL'}"))
        lines.append(f"| {check} | {text} | " + " | ".join(cells) + " |")
    return lines
