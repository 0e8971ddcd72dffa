"""Few-step sampling at parity: the brain validation's measures and the generation metrics of several samplers, in
one run, against the bundles' default sampler.

    python benchmarks/bench_few_step.py COHORT       # -> benchmarks/results/few_step.md

A sampler is the brain bundles' config plus an optional overlay (``configs/rectified_flow.json``: another noise
schedule and its weights) and a step count. Progression runs the evaluation split's subjects (seeds ``900000+``,
:mod:`.brain_protocol`) through the progression bundle under the frozen settings of ``docs/validation/
brain_settings.json``; edit strengths tuned on the default schedule are carried to another schedule at the same
noise-to-signal ratio (``NoiseSchedule.matching_strength``). Generation runs the LDM bundle for CN and AD covariates
(:func:`.brain.validate_generation`). The parity rule (:data:`PARITY`) is fixed here, before any result is read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle_tools import bundle_dir, parse_bundle
from ..metrics import fid_from_features
from ..schedules import NoiseSchedule
from .brain import load_brain_bundle, validate_generation
from .brain_protocol import (
    Context,
    EDIT_TARGETS,
    EVALUATION_SEED,
    LONGITUDINAL_MODE,
    MARKERS,
    Subject,
    autoencoder_limits,
    autoencoder_round_trips,
    edit_run,
    edit_subjects,
    make_subjects,
    measure,
)
from .protocol import mode_folder, read_frozen, recorded_parts
from .settings import ProgressionSettings

__all__ = ["LONGITUDINAL_MODE", "PARITY", "PARITY_MODES", "Sampler", "compare_samplers", "parity", "parity_by_scope"]

#: how far a few-step sampler may fall short of the reference and still hold parity (per progression mode: the
#: null-corrected size ratio of each marker as |r - 1|, the change map's R^2, the identity correlation, the null edit's
#: whole-brain share; generation: the conditioning gap AD - CN of each marker, MS-SSIM diversity, the Frechet distance
#: on the marker reader's features)
PARITY = {"ratio_gap": 0.1, "r2_gap": 0.05, "identity_gap": 0.05, "null_gap": 0.05, "conditioning_rel": 0.25,
          "diversity_gap": 0.01, "fd_factor": 1.5}
#: the frozen settings' modes a parity run edits with (by default)
PARITY_MODES = ("PIE, bundle defaults", "counterfactual (tuned)")
#: the scope of the generation measures in :func:`parity`'s shortfalls
GENERATION = "generation"
#: the reader's features of a generated volume (``BrainMarkers`` keys), for the Frechet distance
FEATURES = ("gm_ml", "parenchyma_ml", "hippocampal_gm_ml", "ventricle_ml")


@dataclass(frozen=True)
class Sampler:
    """One way to sample the brain LDM.

    Args:
        name: its label in the tables.
        num_inference_steps: steps of a full run (a PIE round takes its strength's share).
        overlay: a config overlay both brain bundles have (e.g. ``"rectified_flow.json"``: noise schedule and
            weights), or ``None`` for the bundles' own.
    """

    name: str
    num_inference_steps: int
    overlay: str | None = None

    def overrides(self, bundle: str | Path) -> dict[str, Any]:
        """The bundle config overrides of this sampler (the overlay's entries and the step count)."""
        out: dict[str, Any] = {}
        if self.overlay:
            path = bundle_dir(bundle) / "configs" / self.overlay
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: sampler {self.name!r} needs that overlay.")
            out = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        return {**out, "num_inference_steps": self.num_inference_steps}

    def run_overrides(self, bundle: str | Path) -> dict[str, Any] | None:
        """:meth:`overrides` less the entries the bundle's config already has: the default sampler's run is then the
        brain evaluation's own run of a mode, and reuses its record.

        Args:
            bundle: the bundle folder or name.

        Returns:
            The overrides that change something, or ``None`` when nothing is left.
        """
        config = parse_bundle(bundle).config
        out = {k: v for k, v in self.overrides(bundle).items() if k not in config or config[k] != v}
        return out or None

    def schedule(self, bundle: str | Path) -> NoiseSchedule:
        return NoiseSchedule.from_scheduler(parse_bundle(bundle, self.overrides(bundle)).get_parsed_content(
            "noise_scheduler"))


def _frechet(gen: list[dict[str, float]], real: list[dict[str, float]]) -> float:
    """Frechet distance between generated and real reader features, each feature in units of the real spread."""
    r = np.array([[m[k] for k in FEATURES] for m in real], dtype=np.float64)
    g = np.array([[m[k] for k in FEATURES] for m in gen], dtype=np.float64)
    mu, sd = r.mean(0), r.std(0) + 1e-12
    return fid_from_features((g - mu) / sd, (r - mu) / sd)


def _generation(ldm: Path, progression: Path, cohort: Path, sampler: Sampler, base: ProgressionSettings,
                num_samples: int, work: Path) -> dict[str, Any]:
    loaded = load_brain_bundle(ldm, overrides=sampler.overrides(ldm))
    settings = base.replace(num_inference_steps=sampler.num_inference_steps)
    gen = validate_generation(loaded, ldm, progression, cohort, work, num_samples, settings)
    fake = [m for g in gen.values() for m in g["marker_samples"]]  # CN and AD samples together
    real = [m for g in gen.values() for m in g["reconstructed_marker_samples"]]
    rng = np.random.default_rng(0)  # real against real at the same sample count: the distance's noise floor
    pick = rng.permutation(len(real))
    floor = _frechet([real[i] for i in pick[:len(fake)]], [real[i] for i in pick[len(fake):]])
    return {
        "fd": _frechet(fake, real), "fd_real_floor": floor,
        "conditioning_gap": {m: gen["AD"]["markers"][m] - gen["CN"]["markers"][m] for m in FEATURES},
        "ms_ssim": float(np.mean([g["ms_ssim"] for g in gen.values()])),
        "nn_gen_mean": float(np.mean([g["nn_gen_mean"] for g in gen.values()])),
        "seconds_per_volume": float(np.median([g["seconds_per_volume"] for g in gen.values()])),
        "num_samples": num_samples, "model_path": loaded["model_path"],
    }


def parity(row: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """The measures on which ``row`` falls short of ``ref`` by more than :data:`PARITY` allows (empty: parity)."""
    p, short = PARITY, []
    for mode, m in row["progression"].items():
        r = ref["progression"][mode]
        for k in MARKERS:
            if abs(m[f"{k}_ratio"] - 1) > abs(r[f"{k}_ratio"] - 1) + p["ratio_gap"]:
                short.append(f"{mode}: {k} size ratio")
        for key, gap, label in (("r2", "r2_gap", "R^2"), ("identity_corr", "identity_gap", "identity")):
            if m[key] < r[key] - p[gap]:
                short.append(f"{mode}: {label}")
        if m["null_whole_brain_ratio"] > r["null_whole_brain_ratio"] + p["null_gap"]:
            short.append(f"{mode}: null whole brain")
    g, rg = row["generation"], ref["generation"]
    for k in MARKERS:
        if abs(g["conditioning_gap"][k] - rg["conditioning_gap"][k]) > p["conditioning_rel"] * abs(
                rg["conditioning_gap"][k]):
            short.append(f"{GENERATION}: conditioning gap {k}")
    if g["ms_ssim"] > rg["ms_ssim"] + p["diversity_gap"]:
        short.append(f"{GENERATION}: diversity")
    if g["fd"] > max(p["fd_factor"] * rg["fd"], rg["fd"] + rg["fd_real_floor"]):
        short.append(f"{GENERATION}: Frechet distance")
    return short


def parity_by_scope(short: list[str], modes: Sequence[str]) -> dict[str, bool]:
    """Whether a sampler holds parity in each use: a bundle (or overlay) can take a few-step default for the use in
    which it holds, e.g. generation alone.

    Args:
        short: :func:`parity`'s shortfalls, each ``"<scope>: <measure>"``.
        modes: the progression modes measured.

    Returns:
        ``{mode or "generation": holds}``.
    """
    return {scope: not any(s.startswith(f"{scope}: ") for s in short) for scope in (*modes, GENERATION)}


def _edit_run(progression: Path, settings: ProgressionSettings, subjects: list[Subject], work: Path, sampler: Sampler,
              mode: str, overrides: dict[str, Any] | None, shards: int) -> tuple[dict[str, Any], bool]:
    """A sampler's edits in ``mode`` as a recorded run (:func:`.brain_protocol.edit_run`'s keyword arguments), and
    whether any part of it is recorded already. The bundle's own sampler uses the brain evaluation's folder of the
    mode when that folder holds this very run (reused, never overwritten); otherwise a folder of the sampler's."""
    if not overrides:
        shared = edit_run(progression, None, settings, subjects, EDIT_TARGETS, work / mode_folder(mode), None,
                          shards)[0]
        if all(recorded_parts(**shared)):
            return shared, True
    run = edit_run(progression, None, settings, subjects, EDIT_TARGETS, work / mode_folder(f"{sampler.name}_{mode}"),
                   overrides, shards)[0]
    return run, any(recorded_parts(**run))


def compare_samplers(cohort_dir: str, samplers: list[Sampler], settings_file: str = "docs/validation/"
                     "brain_settings.json", num_subjects: int = 8, num_samples: int = 8,
                     work_dir: str = "outputs/validation/few_step", ldm_bundle: str = "brain_mri_ldm",
                     progression_bundle: str = "brain_mri_progression", num_seeds: int = 1, workers: int = 1,
                     shards: int = 1, modes: Sequence[str] = PARITY_MODES) -> dict[str, Any]:
    """Every sampler on the evaluation split (progression) and on CN / AD generation; the first is the reference.

    Args:
        cohort_dir: the synthetic cohort (``monai-pie synth brain``): real images for the generation metrics.
        samplers: the samplers, reference first.
        settings_file: the frozen validation settings (modes and readers).
        num_subjects: evaluation subjects.
        num_samples: generated volumes per covariate set.
        work_dir: working files. A sampler that is the bundle's own (no overrides left, :meth:`Sampler.run_overrides`)
            records its edits where ``monai-pie validate brain`` does (``<work_dir>/<mode>``), so with the
            evaluation's ``--work_dir``, subjects, seeds and ``--shards`` its runs are reused, not repeated.
        ldm_bundle, progression_bundle: the brain bundles (folders or names).
        num_seeds: noise draws per subject (the evaluation's ``--num_seeds``).
        workers: processes that synthesise and measure the subjects (edits run one after the other, so their
            times compare).
        shards: recorded parts per edit run (a stopped run resumes from its last finished part).
        modes: the frozen settings' modes to edit with (:data:`PARITY_MODES`; :data:`LONGITUDINAL_MODE` adds the
            scan-conditioned model, for samplers without an overlay).

    Returns:
        ``{"rows": {sampler: {"progression": {mode: medians}, "generation": {...}, "seconds": {mode: s per subject,
        or None where recorded edits were reused}, "reused": {mode: bool}, ...}}, "short": {sampler: measures short of
        parity}, "holds": {sampler: parity_by_scope(...)}, "params": {...}}``.
    """
    t0 = time.perf_counter()
    cohort, work = Path(cohort_dir), Path(work_dir)
    frozen, digest = read_frozen(settings_file, "brain")
    ldm, progression = bundle_dir(ldm_bundle), bundle_dir(progression_bundle)
    unknown = [m for m in modes if m not in frozen["modes"]]
    if unknown:
        raise ValueError(f"modes {unknown} are not in {settings_file}; it has {list(frozen['modes'])}.")
    own_weights = [m for m in modes if frozen["modes"][m].get("config")]
    for m in own_weights:  # a mode's own weights (e.g. the longitudinal model) exist: fail before anything runs
        mode_config = ProgressionSettings(**frozen["modes"][m]).bundle_overrides(progression)
        path = Path(parse_bundle(progression, mode_config).get_parsed_content("model_path"))
        if not path.is_file():
            raise FileNotFoundError(f"mode {m!r} needs weights at {path}: train them first (docs/brain.md).")
    for s in samplers:  # every overlay and its weights exist: fail before anything long runs
        if s.overlay and own_weights:
            raise ValueError(f"sampler {s.name!r} swaps the weights ({s.overlay}), and modes {own_weights} run "
                             "weights of their own: measure those modes with samplers without an overlay.")
        path = Path(parse_bundle(progression, s.overrides(progression)).get_parsed_content("model_path"))
        if not path.is_file():
            raise FileNotFoundError(f"sampler {s.name!r} needs weights at {path}: train them first "
                                    "(docs/performance.md, few-step sampling).")
    ctx = Context.build()
    subjects = make_subjects(EVALUATION_SEED, num_subjects, num_seeds, work / "subjects", workers=workers)
    ae = autoencoder_round_trips(progression, None, subjects, work / "subjects")
    limits = autoencoder_limits(subjects, frozen["readers"], ctx, ae, workers)  # the same beside every sampler
    reference_schedule = samplers[0].schedule(progression)
    base = ProgressionSettings.from_config(parse_bundle(progression).config)
    rows: dict[str, Any] = {}
    for s in samplers:
        schedule, overrides = s.schedule(progression), s.run_overrides(progression)
        row: dict[str, Any] = {"progression": {}, "seconds": {}, "strength": {}, "steps_per_round": {}, "reused": {}}
        for mode in modes:
            tuned = ProgressionSettings(**frozen["modes"][mode])
            settings = tuned.replace(num_inference_steps=s.num_inference_steps,
                                     strength=round(schedule.matching_strength(tuned.strength, reference_schedule), 3))
            run, row["reused"][mode] = _edit_run(progression, settings, subjects, work, s, mode, overrides, shards)
            t = time.perf_counter()
            res = edit_subjects(progression, {}, settings, subjects, run["out_dir"], overrides, shards)
            # a (partly) reused run's time is not this run's cost: no time rather than a wrong one
            row["seconds"][mode] = None if row["reused"][mode] else (time.perf_counter() - t) / len(subjects)
            row["strength"][mode] = settings.strength
            row["steps_per_round"][mode] = len(schedule.levels(s.num_inference_steps, strength=settings.strength)) - 1
            measured = measure(res, subjects, frozen["readers"], ctx, limits, workers)
            stats = measured["stats"]
            row["progression"][mode] = {k: v[0] for k, v in stats.items()}
            row["progression"][mode]["retrieval"] = measured["checks"]["retrieval"][0]
            row["progression"][mode]["ci"] = {k: list(v[1:]) for k, v in stats.items()}
        row["generation"] = _generation(ldm, progression, cohort, s, base, num_samples, work / "generation" / s.name)
        rows[s.name] = row
    ref = rows[samplers[0].name]
    short = {name: parity(row, ref) for name, row in rows.items()}
    params = {"settings_file": str(settings_file), "settings_sha256": digest, "num_subjects": num_subjects,
              "num_seeds": num_seeds, "num_samples": num_samples, "seconds": round(time.perf_counter() - t0, 1),
              "samplers": [vars(s) for s in samplers], "parity": PARITY, "modes": list(modes)}
    return {"rows": rows, "short": short, "holds": {n: parity_by_scope(v, modes) for n, v in short.items()},
            "params": params}
