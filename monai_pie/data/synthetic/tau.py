"""Synthetic tau-PET (SUVR) cohort with Braak-like spread and known ground truth, from the MNI152 2009 template.

Recipe (every constant in :class:`TauRecipe`; details and measured numbers in ``docs/data_tau_cohort.md``):

1. Anatomy (2 mm MNI grid): the brain cohort's subject model (:func:`brain._sample_anatomy`: head scale and a smooth
   random displacement) warps the template GM ``G``, WM ``W`` and mask; CSF ``C = clip(mask - G - W, 0, 1)``.
2. Tau load: six Braak-like stage regions (entorhinal -> hippocampus -> fusiform -> inferior/middle temporal ->
   parietal/precuneus -> frontal), each a bilateral Gaussian blob at fixed MNI coordinates evaluated at the subject's
   warped coordinates (so it follows the anatomy), kept where the subject's GM fraction is at least
   ``recipe.gm_support``. A subject's Braak time ``t`` in [0, 6] weights stage ``s = 0..5`` by
   ``w_s(t) = (sigmoid(k (t - s)) - sigmoid(-k s)) / (1 - sigmoid(-k s))``: the sigmoid of the recipe rescaled so that
   ``w_s(0) = 0`` exactly (a ``t = 0`` subject has no tau at all), ``w_s`` rises monotonically to 1, and stage ``s``
   reaches half its final weight near ``t = s``. ``load = sum_s w_s(t) ROI_s``: tau per unit of GM, the truth.
3. SUVR ``= u (1.0 G + 0.85 W + 0.3 C + 1.5 load G) + off-target``: ``u`` a global uptake scale per subject;
   off-target binding (choroid plexus and basal-ganglia blobs, a meningeal shell just outside the brain) with
   per-subject intensities, in *every* subject and never part of the truth load. Then 6 mm FWHM Gaussian smoothing.
4. Resampling (trilinear) to the brain bundles' model grid: 2.5 mm, ``64 x 80 x 64``, centred on the 2 mm grid
   (:func:`tau_grid_affine`); then 5 % multiplicative Gaussian noise per voxel of that grid.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from monai_pie.data.synthetic._deform import warp
from monai_pie.data.synthetic.brain import (
    MNI_LICENCE,
    SPLITS,
    BrainRecipe,
    BrainTemplate,
    _Anatomy,
    _check_split,
    _check_template,
    _child,
    _file_mode,
    _finish_cohort,
    _prepare_output_dir,
    _sample_anatomy,
    _save_nifti,
    _save_text,
    _seed_sequence,
    _split_counts,
    _subject_streams,
    load_brain_template,
)
from monai_pie.utils.checks import check_positive_int
from monai_pie.vocabulary import DIAGNOSES, IMPAIRED_DIAGNOSES, TAU_BRAAK_REGIONS

__all__ = [
    "BRAAK_CENTRES_MM",
    "BRAAK_MAX_TIME",
    "OFF_TARGET_CENTRES_MM",
    "TAU_GRID_PIXDIM",
    "TAU_GRID_SHAPE",
    "TAU_GROUND_TRUTH_COLUMNS",
    "TauRecipe",
    "braak_roi_labels",
    "braak_weights",
    "synthesize_tau_cohort",
    "synthesize_tau_subject",
    "tau_diagnosis",
    "tau_grid_affine",
]

# The brain bundles' model grid (``pixdim`` and ``image_size`` of bundles/brain_mri_*/configs): the one place the
# tau cohort's output grid is defined.
TAU_GRID_PIXDIM: tuple[float, float, float] = (2.5, 2.5, 2.5)
TAU_GRID_SHAPE: tuple[int, int, int] = (64, 80, 64)

BRAAK_MAX_TIME = 6.0
# Fixed geometry in MNI mm (part of the template, not of the recipe: regions are the same in every cohort). One entry
# per region of ``vocabulary.TAU_BRAAK_REGIONS``, in spread order; each is the max of Gaussians at its centres.
BRAAK_CENTRES_MM: tuple[tuple[tuple[float, float, float], ...], ...] = (
    ((25.0, -10.0, -30.0), (-25.0, -10.0, -30.0)),  # entorhinal
    ((28.0, -22.0, -12.0), (-28.0, -22.0, -12.0)),  # hippocampus
    ((35.0, -45.0, -18.0), (-35.0, -45.0, -18.0)),  # fusiform
    ((55.0, -30.0, -15.0), (-55.0, -30.0, -15.0)),  # inferior / middle temporal
    ((8.0, -60.0, 40.0), (-8.0, -60.0, 40.0), (40.0, -55.0, 45.0), (-40.0, -55.0, 45.0)),  # precuneus, parietal
    ((35.0, 30.0, 30.0), (-35.0, 30.0, 30.0)),  # frontal
)
# Off-target binding sites (blobs; the meninges are a shell around the brain mask instead, see TauRecipe).
OFF_TARGET_CENTRES_MM: dict[str, tuple[tuple[float, float, float], ...]] = {
    "choroid_plexus": ((28.0, -40.0, 10.0), (-28.0, -40.0, 10.0)),
    "basal_ganglia": ((24.0, 4.0, 2.0), (-24.0, 4.0, 2.0)),  # putamen
}
OFF_TARGET_SOURCES = ("choroid_plexus", "basal_ganglia", "meninges")

ROI_FILES = {
    "brain_mask": "rois/brain_mask.nii.gz",
    "braak_rois": "rois/braak_rois.nii.gz",
    "braak_rois_names": "rois/braak_rois.json",
}
COHORTS = ("main", "preclinical")
# Datalist list of each cohort's subjects; the main cohort's subjects go to SPLITS.
PRECLINICAL_KEY = "preclinical"

TAU_GROUND_TRUTH_COLUMNS = (
    "subject",
    "cohort",
    "split",
    "image",
    "load",
    "off_target",
    "sex",
    "braak_time",
    "cortical_load",
    *(f"load_{r}" for r in TAU_BRAAK_REGIONS),
    "diagnosis",
    "label",
    "cognition",
    "uptake_scale",
    *(f"off_target_{s}" for s in OFF_TARGET_SOURCES),
    "head_scale",
    "min_jacobian",
)


@dataclass(frozen=True)
class TauRecipe:
    """Every constant of the synthetic tau-PET cohort (all defaults are the documented recipe).

    Attributes
    ----------
    tissue_suvr : (CSF, GM, WM) SUVR of tau-free tissue (before the uptake scale).
    load_suvr : extra SUVR of pure GM per unit of load (``1.5 load G``).
    stage_slope : ``k`` of the stage weights ``sigmoid(k (t - s))`` (Braak-time units).
    roi_sigma_mm : width of each stage region's Gaussian blobs.
    gm_support : the load lives where the subject's GM fraction is at least this.
    uptake_sd, uptake_range : global uptake scale ``u = clip(1 + uptake_sd N(0, 1), *uptake_range)``.
    off_target_range : each off-target source's intensity (peak SUVR added) is ``U(*off_target_range)`` per subject.
    choroid_sigma_mm, basal_ganglia_sigma_mm : widths of the off-target blobs.
    meninges_shell_mm : (inner, outer) distance (mm) from the template brain mask of the meningeal shell; the inner
        gap keeps the shell and the cortical GM out of each other's interpolation cells.
    off_target_mask_threshold : the off-target mask holds voxels where off-target binding (before smoothing) adds at
        least this SUVR.
    fwhm_mm : Gaussian smoothing (scanner resolution) applied to the noise-free SUVR.
    noise_sd : multiplicative Gaussian noise ``SUVR (1 + noise_sd N(0, 1))`` on the model grid.
    head_scale_sd, male_head_scale, displacement_mm, displacement_order : the subject anatomy, as in ``BrainRecipe``.
    roi_label_weight, roi_label_gm : a model-grid voxel belongs to the Braak ROI label map where its strongest stage
        blob is at least ``roi_label_weight`` and the template GM is at least ``roi_label_gm`` (label = that stage).
    diagnosis_thresholds : ``cortical_load`` thresholds CN / MCI and MCI / AD; they equal the cortical load of the
        undeformed template subject at ``time_bands`` (checked by the tests).
    cohort_fractions : CN, MCI, AD fractions of the main cohort (Braak times drawn in the matching ``time_bands``).
    time_bands : Braak times separating the CN, MCI and AD draws: uniform in ``(0, b0)``, ``(b0, b1)``, ``(b1, 6)``,
        stratified (one draw in each of ``n`` equal sub-intervals of a band) so small cohorts cover the band too.
    null_fraction : fraction of the main cohort that is CN with ``t = 0`` exactly (at least one per non-empty split).
    preclinical_time_range : Braak times (stratified uniform) of the preclinical cohort; below ``time_bands[0]``
        with margin, so all are CN.
    cognition_intercept, cognition_slope, cognition_sd, cognition_range : an MMSE-like score
        ``clip(intercept - slope cortical_load + sd N(0, 1), *range)``.
    """

    tissue_suvr: tuple[float, float, float] = (0.3, 1.0, 0.85)
    load_suvr: float = 1.5
    stage_slope: float = 2.0
    roi_sigma_mm: float = 9.0
    gm_support: float = 0.1
    uptake_sd: float = 0.08
    uptake_range: tuple[float, float] = (0.8, 1.2)
    off_target_range: tuple[float, float] = (0.3, 1.0)
    choroid_sigma_mm: float = 4.0
    basal_ganglia_sigma_mm: float = 5.0
    meninges_shell_mm: tuple[float, float] = (4.0, 8.0)
    off_target_mask_threshold: float = 0.05
    fwhm_mm: float = 6.0
    noise_sd: float = 0.05
    head_scale_sd: float = 0.02
    male_head_scale: float = 0.03
    displacement_mm: float = 4.0
    displacement_order: int = 4
    roi_label_weight: float = 0.5
    roi_label_gm: float = 0.3
    diagnosis_thresholds: tuple[float, float] = (0.36, 0.547)
    cohort_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    time_bands: tuple[float, float] = (2.5, 4.0)
    null_fraction: float = 0.1
    preclinical_time_range: tuple[float, float] = (0.0, 2.2)
    cognition_intercept: float = 29.5
    cognition_slope: float = 14.0
    cognition_sd: float = 1.0
    cognition_range: tuple[float, float] = (0.0, 30.0)

    def __post_init__(self) -> None:
        lo, hi = self.diagnosis_thresholds
        if not 0.0 <= lo <= hi:
            raise ValueError(f"`diagnosis_thresholds` must be increasing and >= 0, got {self.diagnosis_thresholds}.")
        b0, b1 = self.time_bands
        if not 0.0 < b0 < b1 < BRAAK_MAX_TIME:
            raise ValueError(f"`time_bands` must satisfy 0 < b0 < b1 < {BRAAK_MAX_TIME}, got {self.time_bands}.")
        p0, p1 = self.preclinical_time_range
        if not 0.0 <= p0 <= p1 <= BRAAK_MAX_TIME:
            raise ValueError(f"`preclinical_time_range` must lie in [0, {BRAAK_MAX_TIME}], got "
                             f"{self.preclinical_time_range}.")
        fr = self.cohort_fractions
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"`cohort_fractions` must be three non-negative fractions summing to 1, got {fr}.")
        if not 0.0 <= self.null_fraction <= fr[0]:
            raise ValueError(f"`null_fraction` must be in [0, cohort_fractions[0]], got {self.null_fraction}.")
        for name in ("uptake_range", "off_target_range", "meninges_shell_mm", "cognition_range"):
            a, b = getattr(self, name)
            if not a <= b:
                raise ValueError(f"`{name}` must be (low, high) with low <= high, got {(a, b)}.")

    def anatomy(self) -> BrainRecipe:
        """The brain cohort's recipe with this recipe's anatomy constants (only those are read by the anatomy).

        Its default ``atrophy="deformation"`` makes ``_sample_anatomy`` keep the pull-back coordinates, which place the
        stage regions and off-target sites in the subject; the bias field it also draws is not used for PET.
        """
        return BrainRecipe(head_scale_sd=self.head_scale_sd, male_head_scale=self.male_head_scale,
                           displacement_mm=self.displacement_mm, displacement_order=self.displacement_order)


# ----------------------------------------------------------------------------------------------- geometry
def tau_grid_affine(template: BrainTemplate | None = None) -> np.ndarray:
    """The model grid's voxel-to-MNI-mm matrix: ``diag(2.5, 2.5, 2.5, 1)`` (RAS), centred on the template grid.

    The origin is chosen so the centre of the ``TAU_GRID_SHAPE`` grid is the centre of the template's 2 mm grid.

    Args:
        template: Default :func:`load_brain_template()` (cached).

    Returns:
        np.ndarray: ``(4, 4)`` float64 affine.
    """
    template = load_brain_template() if template is None else template
    centre = template.affine @ np.array([*((np.asarray(template.shape) - 1) / 2.0), 1.0])
    pixdim = np.asarray(TAU_GRID_PIXDIM, dtype=np.float64)
    affine = np.diag([*pixdim, 1.0])
    affine[:3, 3] = centre[:3] - pixdim * (np.asarray(TAU_GRID_SHAPE) - 1) / 2.0
    return affine


def _blob(mm: Sequence[np.ndarray], centres: Sequence[Sequence[float]], sigma_mm: float) -> np.ndarray:
    """Max over ``centres`` of ``exp(-|x - c|^2 / (2 sigma^2))`` at points ``mm`` (three ``(X, Y, Z)`` arrays)."""
    out = np.zeros(mm[0].shape, dtype=np.float32)
    k = np.float32(-0.5 / sigma_mm**2)
    for c in centres:
        d2 = sum((mm[i] - np.float32(c[i])) ** 2 for i in range(3))
        np.maximum(out, np.exp(d2 * k), out=out)
    return out


def _template_mm(coords: np.ndarray, template: BrainTemplate) -> list[np.ndarray]:
    """MNI mm of template voxel coordinates ``(3, X, Y, Z)`` (the MNI affine is diagonal, checked on load)."""
    a = template.affine
    return [np.float32(a[i, i]) * coords[i] + np.float32(a[i, 3]) for i in range(3)]


@dataclass(frozen=True, eq=False)
class _Geometry:
    """Template-derived arrays shared by every subject of a recipe (read-only).

    Attributes:
        grid_coords: ``(3, 64, 80, 64)`` template voxel coordinates of the model-grid voxel centres.
        grid_affine: ``(4, 4)`` model-grid affine.
        labels: ``(64, 80, 64)`` uint8 Braak ROI labels (0 outside, ``k + 1`` for region ``k``).
        brain_mask: ``(64, 80, 64)`` uint8 template brain mask on the model grid.
        shell: ``(99, 117, 95)`` float32 meningeal shell of the template (1 inside).
    """

    grid_coords: np.ndarray
    grid_affine: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    shell: np.ndarray


@functools.lru_cache(maxsize=4)
def _geometry(template: BrainTemplate, recipe: TauRecipe) -> _Geometry:
    affine = tau_grid_affine(template)
    # Both affines are diagonal: template voxel = (grid mm - template origin) / template voxel size, axis by axis.
    grid = np.indices(TAU_GRID_SHAPE, dtype=np.float64)
    coords = np.stack([(affine[i, i] * grid[i] + affine[i, 3] - template.affine[i, 3]) / template.affine[i, i]
                       for i in range(3)]).astype(np.float32)
    gm, mask = warp(np.stack([template.gm, template.mask]), coords)
    mm = _template_mm(coords, template)
    blobs = np.stack([_blob(mm, c, recipe.roi_sigma_mm) for c in BRAAK_CENTRES_MM])
    labels = (np.argmax(blobs, 0) + 1).astype(np.uint8)
    labels[(blobs.max(0) < recipe.roi_label_weight) | (gm < recipe.roi_label_gm)] = 0
    inner, outer = recipe.meninges_shell_mm
    dist = ndimage.distance_transform_edt(template.mask == 0, sampling=template.voxel_mm)
    shell = ((dist > inner) & (dist <= outer)).astype(np.float32)
    brain_mask = (mask >= 0.5).astype(np.uint8)
    for a in (coords, affine, labels, brain_mask, shell):
        a.flags.writeable = False
    return _Geometry(coords, affine, labels, brain_mask, shell)


def braak_roi_labels(template: BrainTemplate | None = None, recipe: TauRecipe | None = None) -> np.ndarray:
    """The Braak ROI label map on the model grid (the regions where regional and cortical loads are measured).

    Args:
        template: Default :func:`load_brain_template()`.
        recipe: Default ``TauRecipe()`` (``roi_sigma_mm``, ``roi_label_weight``, ``roi_label_gm``).

    Returns:
        np.ndarray: ``(64, 80, 64)`` uint8, 0 outside, ``k + 1`` for region ``TAU_BRAAK_REGIONS[k]``; read-only.
    """
    template = load_brain_template() if template is None else template
    return _geometry(template, TauRecipe() if recipe is None else recipe).labels


# ------------------------------------------------------------------------------------------------- checks
def _check_braak_time(braak_time: float) -> float:
    if (
        isinstance(braak_time, bool)
        or not isinstance(braak_time, (int, float, np.integer, np.floating))
        or not 0.0 <= float(braak_time) <= BRAAK_MAX_TIME  # also rejects NaN
    ):
        raise ValueError(f"`braak_time` must be a finite number in [0, {BRAAK_MAX_TIME:g}], got {braak_time!r}.")
    return float(braak_time)


def _check_sex(sex: int | None) -> None:
    if sex is not None and (isinstance(sex, bool) or sex not in (0, 1)):
        raise ValueError(f"`sex` must be 0, 1 or None (drawn), got {sex!r}.")


# ------------------------------------------------------------------------------------------------ the truth
def braak_weights(braak_time: float, recipe: TauRecipe | None = None) -> np.ndarray:
    """Stage weights ``w_s(t) = (sigmoid(k (t - s)) - sigmoid(-k s)) / (1 - sigmoid(-k s))``, ``s = 0..5``.

    ``w_s(0) = 0`` exactly, each weight rises monotonically towards 1, and at any ``t > 0`` an earlier stage has the
    larger weight (``w_0(t) = tanh(k t / 2)``).

    Args:
        braak_time: ``t`` in [0, 6].
        recipe: Default ``TauRecipe()`` (``stage_slope``).

    Returns:
        np.ndarray: ``(6,)`` float64 weights in [0, 1).
    """
    t = _check_braak_time(braak_time)
    k = (TauRecipe() if recipe is None else recipe).stage_slope
    s = np.arange(len(BRAAK_CENTRES_MM), dtype=np.float64)

    def sig(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    base = sig(-k * s)
    return np.maximum((sig(k * (t - s)) - base) / (1.0 - base), 0.0)


def tau_diagnosis(cortical_load: float, recipe: TauRecipe | None = None) -> str:
    """``"CN"`` below ``recipe.diagnosis_thresholds[0]``, ``"MCI"`` below ``[1]``, else ``"AD"``."""
    lo, hi = (TauRecipe() if recipe is None else recipe).diagnosis_thresholds
    value = float(cortical_load)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`cortical_load` must be a finite number >= 0, got {cortical_load!r}.")
    return "CN" if value < lo else "MCI" if value < hi else "AD"


def _regional_loads(load: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean load over all Braak ROI voxels (``cortical_load``) and per region (``load_<region>``), float64 sums."""
    out = {"cortical_load": round(float(load[labels > 0].mean(dtype=np.float64)), 6)}
    for k, name in enumerate(TAU_BRAAK_REGIONS):
        out[f"load_{name}"] = round(float(load[labels == k + 1].mean(dtype=np.float64)), 6)
    return out


# ---------------------------------------------------------------------------------------------- the subject
@dataclass(frozen=True)
class _Draws:
    """A subject's scalar draws (from its anatomy stream, after the anatomy)."""

    sex: int
    uptake_scale: float
    off_target: dict[str, float]
    cognition_z: float


def _sample_draws(rng: np.random.Generator, sex: int, recipe: TauRecipe) -> _Draws:
    # Rounded before use so the recorded values are exactly the ones that made the image.
    uptake = round(float(np.clip(1.0 + recipe.uptake_sd * rng.standard_normal(), *recipe.uptake_range)), 6)
    off = {s: round(float(rng.uniform(*recipe.off_target_range)), 6) for s in OFF_TARGET_SOURCES}
    return _Draws(sex, uptake, off, float(rng.standard_normal()))


def _render(
    anat: _Anatomy, braak_time: float, draws: _Draws, noise_rng: np.random.Generator, template: BrainTemplate,
    geom: _Geometry, recipe: TauRecipe,
) -> dict[str, Any]:
    """SUVR, load and off-target on the model grid, and the scalar truth."""
    g, w = anat.gm, anat.wm
    c = np.clip(anat.total - g - w, 0.0, 1.0)
    mm = _template_mm(anat.coords, template)  # regions follow the subject's anatomy
    load = np.zeros(template.shape, dtype=np.float32)
    for weight, centres in zip(braak_weights(braak_time, recipe), BRAAK_CENTRES_MM):
        if weight > 0.0:  # t = 0: every weight is exactly 0 and the load stays exactly 0
            load += np.float32(weight) * _blob(mm, centres, recipe.roi_sigma_mm)
    load *= g >= recipe.gm_support
    off = np.float32(draws.off_target["choroid_plexus"]) * _blob(
        mm, OFF_TARGET_CENTRES_MM["choroid_plexus"], recipe.choroid_sigma_mm)
    off += np.float32(draws.off_target["basal_ganglia"]) * _blob(
        mm, OFF_TARGET_CENTRES_MM["basal_ganglia"], recipe.basal_ganglia_sigma_mm)
    off += np.float32(draws.off_target["meninges"]) * warp(geom.shell[None], anat.coords)[0]

    s_csf, s_gm, s_wm = (np.float32(v) for v in recipe.tissue_suvr)
    suvr = np.float32(draws.uptake_scale) * (s_gm * g + s_wm * w + s_csf * c + np.float32(recipe.load_suvr) * load * g)
    suvr += off
    sigma_vox = recipe.fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / template.voxel_mm
    suvr = ndimage.gaussian_filter(suvr, sigma_vox, mode="constant")

    suvr, load, off = warp(np.stack([suvr, load, off]), geom.grid_coords)
    # Noise on the output grid, so 5 % is the per-voxel noise of the stored image.
    suvr *= 1.0 + np.float32(recipe.noise_sd) * noise_rng.standard_normal(suvr.shape, dtype=np.float32)
    off_mask = (off >= recipe.off_target_mask_threshold).astype(np.uint8)

    regional = _regional_loads(load, geom.labels)
    diagnosis = tau_diagnosis(regional["cortical_load"], recipe)
    lo, hi = recipe.cognition_range
    cognition = recipe.cognition_intercept - recipe.cognition_slope * regional["cortical_load"]
    cognition = float(np.clip(cognition + recipe.cognition_sd * draws.cognition_z, lo, hi))
    truth = {
        "sex": draws.sex,
        "braak_time": braak_time,
        **regional,
        "diagnosis": diagnosis,
        "label": int(diagnosis in IMPAIRED_DIAGNOSES),
        "cognition": round(cognition, 2),
        "uptake_scale": draws.uptake_scale,
        **{f"off_target_{s}": v for s, v in draws.off_target.items()},
        "head_scale": round(anat.head_scale, 6),
        "min_jacobian": round(anat.min_jacobian, 6),
    }
    return {"suvr": suvr, "load": load, "off_target": off_mask, "off_target_suvr": off,
            "affine": geom.grid_affine.copy(), "truth": truth}


def synthesize_tau_subject(
    rng_or_seed: int | np.random.SeedSequence | np.random.Generator,
    braak_time: float,
    template: BrainTemplate | None = None,
    *,
    sex: int | None = None,
    visit: int = 0,
    recipe: TauRecipe | None = None,
) -> dict[str, Any]:
    """Synthesise one tau-PET SUVR image and its ground truth in memory, on the model grid.

    With an int or ``SeedSequence``, the subject (sex if not given, anatomy, uptake scale, off-target intensities,
    cognition noise) comes from child 0 of the seed and the image noise from child ``1 + visit``: the same seed with
    another ``braak_time`` is the same subject with the same noise. Cohort subject ``i`` of
    ``synthesize_tau_cohort(seed=s)`` is ``np.random.SeedSequence(s, spawn_key=(1, i))`` (preclinical: ``(2, i)``).
    With a ``Generator``, the subject then the noise are drawn from it.

    Args:
        rng_or_seed: Randomness of the subject.
        braak_time: ``t`` in [0, 6]; 0 means no tau at all.
        template: Default :func:`load_brain_template()`.
        sex: 0 or 1 (1 has a larger head scale on average); default drawn from the subject's stream (keyword only).
        visit: Image-noise stream index (keyword only).
        recipe: Default ``TauRecipe()`` (keyword only).

    Returns:
        dict: ``"suvr"``: ``(64, 80, 64)`` float32 SUVR; ``"load"``: ``(64, 80, 64)`` float32 truth load (tau per unit
            GM, 0 where there is none); ``"off_target"``: ``(64, 80, 64)`` uint8 mask where off-target binding adds at
            least ``recipe.off_target_mask_threshold``; ``"off_target_suvr"``: ``(64, 80, 64)`` float32 off-target SUVR
            before smoothing; ``"affine"``: ``(4, 4)`` model-grid affine; ``"truth"``: ``sex``, ``braak_time``,
            ``cortical_load`` (mean load over the Braak ROI labels), ``load_<region>`` (per region), ``diagnosis``,
            ``label`` (0 CN, 1 MCI/AD), ``cognition``, ``uptake_scale``, ``off_target_<source>`` intensities,
            ``head_scale`` and ``min_jacobian`` of the deformation.
    """
    braak_time = _check_braak_time(braak_time)
    _check_sex(sex)
    check_positive_int(visit, "visit", minimum=0)
    template = _check_template(template)
    recipe = TauRecipe() if recipe is None else recipe
    subject_rng, noise_rng = _subject_streams(rng_or_seed, visit)
    sex = int(subject_rng.integers(0, 2)) if sex is None else int(sex)
    anat = _sample_anatomy(subject_rng, sex, template, recipe.anatomy())
    draws = _sample_draws(subject_rng, sex, recipe)
    return _render(anat, braak_time, draws, noise_rng, template, _geometry(template, recipe), recipe)


# ----------------------------------------------------------------------------------------------- the cohort
def _class_times(rng: np.random.Generator, n: int, num_null: int, recipe: TauRecipe) -> list[float]:
    """Braak times of the main cohort: ``num_null`` zeros, then CN / MCI / AD draws in the recipe's time bands,
    in a random order (subject numbers carry no diagnosis)."""
    n_cn, n_mci, n_ad = _split_counts(n, recipe.cohort_fractions)
    if num_null > n_cn:  # tiny cohorts: the null controls (one per split) take MCI / AD places
        n_cn = num_null
        n_mci, n_ad = _fit(n - n_cn, n_mci, n_ad)
    b0, b1 = recipe.time_bands
    times = [0.0] * num_null
    times += _stratified_times(rng, n_cn - num_null, 0.0, b0)
    times += _stratified_times(rng, n_mci, b0, b1)
    times += _stratified_times(rng, n_ad, b1, BRAAK_MAX_TIME)
    return [times[i] for i in rng.permutation(n)]


def _stratified_times(rng: np.random.Generator, n: int, lo: float, hi: float) -> list[float]:
    """``n`` uniform draws in [lo, hi], one in each of ``n`` equal strata (spread over the band even when ``n`` is
    small), rounded to 1e-4 before synthesis so the recorded time is exactly the one used; never exactly 0."""
    u = (np.arange(n) + rng.random(n)) / max(n, 1)
    return [max(round(float(lo + (hi - lo) * v), 4), 1e-4) for v in u]


def _fit(total: int, a: int, b: int) -> tuple[int, int]:
    """Shrink ``(a, b)`` to sum to ``total``, taking from the larger first."""
    while a + b > total:
        if a >= b:
            a -= 1
        else:
            b -= 1
    return a, b


def _assign_tau_splits(rng: np.random.Generator, times: Sequence[float], counts: Sequence[int]) -> list[str]:
    """Split name per subject: one null control (``t = 0``) in every non-empty split first, the rest at random."""
    left = dict(zip(SPLITS, (int(c) for c in counts)))
    split_of: dict[int, str] = {}
    nulls = [int(i) for i in rng.permutation([i for i, t in enumerate(times) if t == 0.0])]
    for name in SPLITS:
        if left[name] > 0 and nulls:
            split_of[nulls.pop()] = name
            left[name] -= 1
    rest = [int(i) for i in rng.permutation(len(times)) if int(i) not in split_of]
    slots = [name for name in SPLITS for _ in range(left[name])]
    split_of.update(zip(rest, slots))
    return [split_of[i] for i in range(len(times))]


def _cohort_record(root: np.random.SeedSequence, params: dict[str, Any], recipe: TauRecipe,
                   template: BrainTemplate, geom: _Geometry) -> dict[str, Any]:
    """The parameters part of ``cohort.json``: enough to regenerate the cohort."""
    from monai_pie import __version__

    return {
        "generator": "monai_pie.data.synthetic.tau.synthesize_tau_cohort",
        "monai_pie_version": __version__,
        "seed": int(root.entropy),
        "parameters": params,
        "recipe": asdict(recipe),
        "template": {
            "name": "MNI ICBM152 2009a nonlinear, nilearn files mni_icbm152_*_tal_nlin_sym_09a_converted, 2 mm",
            "shape": list(template.shape),
            "affine": template.affine.tolist(),
            "licence": MNI_LICENCE,
        },
        "grid": {"pixdim": list(TAU_GRID_PIXDIM), "shape": list(TAU_GRID_SHAPE), "affine": geom.grid_affine.tolist()},
        "geometry": {
            "braak_regions": list(TAU_BRAAK_REGIONS),
            "braak_centres_mm": BRAAK_CENTRES_MM,
            "off_target_centres_mm": OFF_TARGET_CENTRES_MM,
            "off_target_sources": OFF_TARGET_SOURCES,
            "braak_roi_voxels": {name: int((geom.labels == k + 1).sum()) for k, name in enumerate(TAU_BRAAK_REGIONS)},
        },
        "files": {"datalist": "datalist.json", "ground_truth": "ground_truth.csv", "rois": ROI_FILES},
    }


def _roi_names() -> dict[str, Any]:
    """``braak_rois.json``: what each label of ``braak_rois.nii.gz`` is."""
    return {
        "0": {"name": "background"},
        **{str(k + 1): {"name": name, "stage": k, "centres_mm": [list(c) for c in BRAAK_CENTRES_MM[k]]}
           for k, name in enumerate(TAU_BRAAK_REGIONS)},
    }


def synthesize_tau_cohort(
    output_dir: str | os.PathLike,
    num_subjects: int = 120,
    num_preclinical: int = 60,
    seed: int = 0,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    overwrite: bool = False,
    progress: bool = True,
    *,
    recipe: TauRecipe | None = None,
) -> dict[str, Any]:
    """Write a synthetic tau-PET cohort with ground truth to ``output_dir``.

    Layout (paths in the JSON/CSV files are relative to ``output_dir``)::

        images/<subject>_suvr.nii.gz       float32 SUVR, (64, 80, 64), 2.5 mm model grid (tau_grid_affine)
        truth/<subject>_load.nii.gz        float32 truth load (tau per unit GM), same grid
        masks/<subject>_off_target.nii.gz  uint8 off-target binding mask (per subject: it moves with the anatomy)
        rois/brain_mask.nii.gz             uint8 template brain mask on the model grid
        rois/braak_rois.nii.gz, .json      uint8 Braak ROI labels 1..6 and their names
        datalist.json      {"training", "validation", "test"} (main cohort, split by subject) and "preclinical"
        ground_truth.csv   one row per subject, columns TAU_GROUND_TRUTH_COLUMNS
        cohort.json        parameters, recipe, seed, per-subject seeds, counts (written last: marks a complete cohort)

    Main cohort: about ``recipe.cohort_fractions`` (50 % CN, 25 % MCI, 25 % AD) by Braak-time band, of which
    ``recipe.null_fraction`` are CN with ``t = 0`` exactly (at least one in every non-empty split). Preclinical cohort
    (an A4-like stand-in, own seed stream): ``t`` stratified uniform in ``recipe.preclinical_time_range``, CN with
    low, varied load.

    Args:
        output_dir: Destination; must be empty or missing unless ``overwrite``.
        num_subjects: Main-cohort subjects (>= 1).
        num_preclinical: Preclinical subjects (>= 0).
        seed: Non-negative seed; the same seed gives byte-identical files.
        split: Train, validation, test fractions of main-cohort *subjects* (sum to 1).
        overwrite: Allow a non-empty ``output_dir``: files of the same names are replaced and an old ``cohort.json`` is
            removed first; nothing else is deleted.
        progress: Show a tqdm progress bar.
        recipe: Every constant; default ``TauRecipe()``.

    Returns:
        dict: Summary: ``output_dir``, subject counts per split and cohort, diagnosis counts, the paths of
            ``datalist``, ``ground_truth``, ``cohort``, ``rois`` and ``seconds``.
    """
    check_positive_int(num_subjects, "num_subjects")
    check_positive_int(num_preclinical, "num_preclinical", minimum=0)
    root = _seed_sequence(seed)
    fractions = _check_split(split)
    recipe = TauRecipe() if recipe is None else recipe
    if not isinstance(recipe, TauRecipe):
        raise TypeError(f"`recipe` must be a TauRecipe, got {type(recipe).__name__}.")
    out = _prepare_output_dir(output_dir, overwrite, ("images", "truth", "masks", "rois"))
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    mode = _file_mode()
    template = load_brain_template()
    geom = _geometry(template, recipe)
    counts = _split_counts(num_subjects, fractions)
    num_null = min(num_subjects, max(round(recipe.null_fraction * num_subjects), sum(c > 0 for c in counts)))
    cohort_rng = np.random.default_rng(_child(root, 0))
    times = _class_times(cohort_rng, num_subjects, num_null, recipe)
    split_of = _assign_tau_splits(cohort_rng, times, counts)
    pre_rng = np.random.default_rng(_child(root, 3))  # own stream: the main cohort does not depend on it
    pre_times_sorted = _stratified_times(pre_rng, num_preclinical, *recipe.preclinical_time_range)
    pre_times = [pre_times_sorted[i] for i in pre_rng.permutation(num_preclinical)]
    width = max(3, len(str(max(num_subjects, num_preclinical) - 1)))
    plan = [("main", i, f"sub-{i:0{width}d}", times[i], split_of[i]) for i in range(num_subjects)]
    plan += [("preclinical", i, f"pre-{i:0{width}d}", pre_times[i], PRECLINICAL_KEY) for i in range(num_preclinical)]

    _save_nifti(geom.brain_mask, geom.grid_affine, out / ROI_FILES["brain_mask"], mode)
    _save_nifti(geom.labels, geom.grid_affine, out / ROI_FILES["braak_rois"], mode)
    _save_text(json.dumps(_roi_names(), indent=1) + "\n", out / ROI_FILES["braak_rois_names"], mode)

    datalist: dict[str, list[dict[str, Any]]] = {name: [] for name in (*SPLITS, PRECLINICAL_KEY)}
    rows: list[dict[str, Any]] = []
    subject_records = []
    pending: deque[Future] = deque()
    # Compression runs in one writer thread (zlib releases the GIL) while the next subject is synthesised.
    with (
        ThreadPoolExecutor(max_workers=1) as writer,
        tqdm(total=len(plan), desc="synth tau", unit="subj", disable=not progress) as bar,
    ):
        for cohort, i, sid, t, split_name in plan:
            spawn_key = (1 if cohort == "main" else 2, i)
            res = synthesize_tau_subject(_child(_child(root, spawn_key[0]), i), t, template, recipe=recipe)
            paths = {"image": f"images/{sid}_suvr.nii.gz", "load": f"truth/{sid}_load.nii.gz",
                     "off_target": f"masks/{sid}_off_target.nii.gz"}
            while len(pending) > 6:  # bound the memory held by queued images; .result() re-raises write errors
                pending.popleft().result()
            for key, arr in (("image", res["suvr"]), ("load", res["load"]), ("off_target", res["off_target"])):
                pending.append(writer.submit(_save_nifti, arr, geom.grid_affine, out / paths[key], mode))
            truth = res["truth"]
            datalist[split_name].append({**paths, "label": truth["label"], "diagnosis": truth["diagnosis"],
                                         "subject": sid, "braak_time": truth["braak_time"],
                                         "cortical_load": truth["cortical_load"], "cognition": truth["cognition"]})
            rows.append({"subject": sid, "cohort": cohort, "split": split_name, **paths, **truth})
            subject_records.append({"subject": sid, "cohort": cohort, "split": split_name,
                                    "seed": {"entropy": int(root.entropy), "spawn_key": list(spawn_key)}})
            bar.update(1)
        for f in pending:
            f.result()

    summary = {
        "num_subjects": num_subjects,
        "num_preclinical": num_preclinical,
        "num_null_controls": num_null,
        "subjects_per_split": {name: len(v) for name, v in datalist.items()},
        "diagnoses": {c: {d: sum(r["diagnosis"] == d for r in rows if r["cohort"] == c) for d in DIAGNOSES}
                      for c in COHORTS},
    }
    params = {"num_subjects": num_subjects, "num_preclinical": num_preclinical, "split": list(fractions)}
    cohort = _cohort_record(root, params, recipe, template, geom)
    cohort.update(subjects=subject_records, summary=summary)
    return _finish_cohort(out, rows, TAU_GROUND_TRUTH_COLUMNS, datalist, cohort, summary, ROI_FILES, mode, t0)
