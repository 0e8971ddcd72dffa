"""Synthetic brain T1 cohort with ground truth, built from the MNI ICBM152 2009 template shipped with nilearn.

Recipe (details and numbers in ``docs/data_brain_cohort.md``):

1. Template (2 mm, ``99 x 117 x 95``): grey matter ``G``, white matter ``W``, brain mask ``M``,
   CSF ``C = clip(M - G - W, 0, 1)``; fixed regions of interest (hippocampal balls, lateral-ventricle region).
2. Subject anatomy (drawn once per subject): isotropic head scale (larger for ``sex = 1``) and a smooth random
   displacement of a few mm, applied to ``G, W, C`` by trilinear warping; a smooth multiplicative bias field.
3. Visit (age, disease stage ``s``): grey matter is lost diffusely (age and stage) and around the hippocampi
   (Gaussian weights, stage dominated); the lateral ventricles grow into the surrounding tissue by a distance that
   increases with age and stage. Lost tissue becomes CSF, so ``G + W + C`` (the intracranial volume) is fixed
   per subject.
4. Image: ``T1 = 0.15 C + 0.55 G + 0.85 W``, times the bias field, plus Rician noise (SNR 40 relative to WM).

The tissue maps that make each image are quantised to multiples of 1/255 (as SPM stores its ``c1/c2/c3`` maps)
*before* the image is synthesised, so the stored uint8 maps are exactly the truth and every volume in
``ground_truth.csv`` is computed from them.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from monai_pie.data.synthetic._brain_atrophy import (
    VENTRICLE_EXPANSION_CENTRES_MM,
    atrophy_pullback,
    hippocampal_pullback,
    log_jacobian_of_pullback,
    split_hippocampal_tissue,
)
from monai_pie.data.synthetic._deform import jacobian_determinant, random_dct_field, random_displacement, warp
from monai_pie.utils.checks import check_in_range, check_positive_int
from monai_pie.vocabulary import DIAGNOSES, DIAGNOSIS_THRESHOLDS, diagnosis_from_stage
from monai_pie.utils.io import atomic_write

__all__ = [
    "BrainRecipe",
    "BrainTemplate",
    "GROUND_TRUTH_COLUMNS",
    "load_brain_template",
    "synthesize_brain_cohort",
    "synthesize_brain_subject",
]


# Fixed geometry in MNI mm (part of the template, not of the recipe: the ROIs must not change between cohorts).
HIPPOCAMPAL_CENTRES_MM = ((24.0, -12.0, -24.0), (-24.0, -12.0, -24.0))
HIPPOCAMPAL_ROI_RADIUS_MM = 10.0
VENTRICLE_SEEDS_MM = ((8.0, -10.0, 20.0), (-8.0, -10.0, 20.0), (4.0, 0.0, 15.0), (-4.0, 0.0, 15.0))
# Central box that holds the lateral ventricles (bodies, frontal horns, atria) but not the temporal horns.
VENTRICLE_BOX_MM = ((-30.0, 30.0), (-50.0, 35.0), (-5.0, 35.0))
VENTRICLE_CSF_THRESHOLD = 0.5
VENTRICLE_ROI_MARGIN_MM = 6.0
# Ventricle distances are warped as a proximity ``max(0, D - distance)`` so zero padding means "far away"; D must
# exceed the largest growth plus ramp (a few mm).
VENTRICLE_PROXIMITY_MM = 20.0

TISSUE_CHANNELS = ("GM", "WM", "CSF")
ATROPHY_MODES = ("deformation", "partial_volume")
SPLITS = ("training", "validation", "test")
ROI_FILES = {
    "brain_mask": "rois/brain_mask.nii.gz",
    "hippocampal_roi": "rois/hippocampal_roi.nii.gz",
    "ventricle_roi": "rois/ventricle_roi.nii.gz",
}
# Tissue maps are stored as uint8 with this slope, like SPM's c1/c2/c3 maps.
TISSUE_LEVELS = 255

GROUND_TRUTH_COLUMNS = (
    "image_id",
    "subject_id",
    "visit",
    "split",
    "longitudinal",
    "image",
    "tissue",
    "age",
    "sex",
    "stage",
    "diagnosis",
    "gm_volume_ml",
    "hippocampal_gm_ml",
    "ventricle_volume_ml",
    "wm_volume_ml",
    "csf_volume_ml",
    "icv_ml",
)

# The MNI distribution's notice; nilearn ships the files without it (its description page says "License: unknown").
MNI_LICENCE = (
    "MNI ICBM152 2009a nonlinear template (Fonov et al. 2009, 2011), as shipped in nilearn. Copyright (C) 1993-2004 "
    "Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. Permission to "
    "use, copy, modify, and distribute this software and its documentation for any purpose and without fee is hereby "
    "granted, provided that the above copyright notice appear in all copies. The authors and McGill University make "
    "no representations about the suitability of this software for any purpose. It is provided 'as is' without "
    "express or implied warranty. The authors are not responsible for any data loss, equipment damage, property "
    "loss, or injury to subjects or patients resulting from the use or misuse of this software package."
)


@dataclass(frozen=True)
class BrainRecipe:
    """Effect sizes, noise and sampling ranges of the synthetic cohort (all defaults are the documented recipe).

    Attributes
    ----------
    t1_intensities : (CSF, GM, WM) T1 intensities before bias and noise.
    snr : WM intensity over the Rician noise sigma.
    bias_amplitude : largest relative deviation of the multiplicative bias field inside the brain.
    bias_order : DCT basis functions per axis of the bias field.
    displacement_mm : largest length of the random displacement inside the brain.
    displacement_order : DCT basis functions per axis of the displacement.
    head_scale_sd, male_head_scale : isotropic head scale ``1 + sd * N(0, 1) + male_head_scale * sex``.
    age_ref : age (years) without age-related atrophy; younger ages get none.
    gm_loss_per_year, wm_loss_per_year : diffuse tissue fraction lost per year after ``age_ref``.
    gm_loss_at_ad : diffuse GM fraction lost at stage 1.
    hippocampal_sigma_mm : width of the Gaussian weights around the hippocampal centres.
    hippocampal_loss_per_year, hippocampal_loss_at_ad : extra GM fraction lost at a hippocampal centre.
    ventricle_growth_mm_per_year, ventricle_growth_mm_at_ad : outward growth of the lateral ventricles (mm).
    ventricle_ramp_mm : width of the soft ventricle front.
    age_range : ages (years) of the cohort, first to last visit.
    visit_interval_years : years between longitudinal visits.
    progression_per_year : range of the per-subject stage increase per year (longitudinal subjects).
    longitudinal_max_baseline_stage : baseline stages of longitudinal subjects are drawn in [0, this].
    atrophy : ``"deformation"`` (tissue moves by a smooth invertible map with a known Jacobian; intensities stay
        tissue intensities) or ``"partial_volume"`` (tissue turns into CSF in place; the first recipe).
    cortical_thinning_mm_per_year, cortical_thinning_mm_at_ad : inward displacement of the brain surface (mm).
    cortical_depth_mm : e-folding depth of the surface displacement inside the brain.
    ventricle_expansion_per_year, ventricle_expansion_at_ad : radial expansion strength ``a`` around points along
        the lateral ventricles (volume there grows by up to ``1 / (1 - a)^3``).
    ventricle_sigma_mm : width of each ventricle expansion field.
    hippocampal_shrinkage_per_year, hippocampal_shrinkage_at_ad : radial shrinkage ``b`` of the hippocampal tissue
        (balls of ``hippocampal_radius_mm`` around the centres) toward its centre (volume there shrinks by up to
        ``1 / (1 + b)^3``); the rim it leaves becomes CSF.
    hippocampal_radius_mm : radius of the hippocampal tissue that shrinks (deformation mode).
    hippocampal_field_sigma_mm : width of the hippocampal shrinkage field.
    """

    t1_intensities: tuple[float, float, float] = (0.15, 0.55, 0.85)
    snr: float = 40.0
    bias_amplitude: float = 0.15
    bias_order: int = 3
    displacement_mm: float = 4.0
    displacement_order: int = 4
    head_scale_sd: float = 0.02
    male_head_scale: float = 0.03
    age_ref: float = 55.0
    gm_loss_per_year: float = 0.002
    wm_loss_per_year: float = 0.001
    gm_loss_at_ad: float = 0.04
    hippocampal_sigma_mm: float = 6.0
    hippocampal_loss_per_year: float = 0.004
    hippocampal_loss_at_ad: float = 0.5
    ventricle_growth_mm_per_year: float = 0.05
    ventricle_growth_mm_at_ad: float = 3.0
    ventricle_ramp_mm: float = 2.0
    age_range: tuple[float, float] = (55.0, 90.0)
    visit_interval_years: float = 2.0
    progression_per_year: tuple[float, float] = (0.03, 0.15)
    longitudinal_max_baseline_stage: float = 0.8
    atrophy: str = "deformation"
    cortical_thinning_mm_per_year: float = 0.01
    cortical_thinning_mm_at_ad: float = 0.4
    cortical_depth_mm: float = 4.0
    ventricle_expansion_per_year: float = 0.004
    ventricle_expansion_at_ad: float = 0.35
    ventricle_sigma_mm: float = 10.0
    hippocampal_shrinkage_per_year: float = 0.002
    hippocampal_shrinkage_at_ad: float = 0.3
    hippocampal_radius_mm: float = 8.0
    hippocampal_field_sigma_mm: float = 8.0

    def __post_init__(self) -> None:
        if self.atrophy not in ATROPHY_MODES:
            raise ValueError(f"`atrophy` must be one of {ATROPHY_MODES}, got {self.atrophy!r}.")


@dataclass(frozen=True, eq=False)
class BrainTemplate:
    """MNI152 2009 maps at 2 mm and the fixed ROIs; every array is ``(X, Y, Z) = (99, 117, 95)`` and read-only.

    Attributes
    ----------
    t1 : float32 T1 template rescaled to [0, 1].
    gm, wm, csf : float32 tissue probabilities, ``gm + wm + csf == mask``.
    mask : float32 binary brain mask (nilearn's T1 > 0.2).
    affine : ``(4, 4)`` float64 voxel-to-MNI-mm affine.
    ventricles : bool lateral ventricles (template CSF > 0.5 connected to the seed points).
    ventricle_distance_mm : float32 distance to ``ventricles`` (mm), 0 inside.
    hippocampal_roi : bool balls of ``HIPPOCAMPAL_ROI_RADIUS_MM`` around the hippocampal centres, in the mask.
    ventricle_roi : bool voxels within ``VENTRICLE_ROI_MARGIN_MM`` of ``ventricles``, in the mask.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    ventricles: np.ndarray
    ventricle_distance_mm: np.ndarray
    hippocampal_roi: np.ndarray
    ventricle_roi: np.ndarray
    shape: tuple[int, int, int] = field(init=False)
    centre_vox: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.gm.shape))
        centre = np.argwhere(self.mask > 0).mean(0)
        centre.flags.writeable = False
        object.__setattr__(self, "centre_vox", centre)  # (3,) brain centroid: the centre of the head scaling

    @property
    def voxel_mm(self) -> np.ndarray:
        """``(3,)`` voxel size in mm."""
        return np.abs(np.diag(self.affine)[:3])

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in ml."""
        return float(np.prod(self.voxel_mm)) / 1000.0


def _read_only(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


def _mm_grid(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` MNI mm coordinates of every voxel centre."""
    vox = np.indices(tuple(shape), dtype=np.float64)
    return np.tensordot(affine[:3, :3], vox, axes=1) + affine[:3, 3].reshape(3, 1, 1, 1)


def _find_ventricles(csf: np.ndarray, mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Lateral ventricles: the components of ``csf > threshold`` inside the central box that touch a seed point."""
    box = np.ones(csf.shape, dtype=bool)
    for axis, (lo, hi) in enumerate(VENTRICLE_BOX_MM):
        box &= (mm[axis] >= lo) & (mm[axis] <= hi)
    labels, _ = ndimage.label((csf > VENTRICLE_CSF_THRESHOLD) & box)
    inv = np.linalg.inv(affine)
    keep = set()
    for seed in VENTRICLE_SEEDS_MM:
        ijk = tuple(np.round(inv @ np.array([*seed, 1.0]))[:3].astype(int))
        if labels[ijk] > 0:
            keep.add(int(labels[ijk]))
    if not keep:
        raise RuntimeError("no template CSF at the ventricle seed points; is this the MNI152 2009 template?")
    return np.isin(labels, sorted(keep))


@functools.lru_cache(maxsize=1)
def load_brain_template() -> BrainTemplate:
    """Load the MNI152 2009 T1, GM, WM and brain mask at 2 mm from nilearn (no download) and build the fixed ROIs.

    Cached: the first call takes a few seconds (nilearn resamples the 1 mm files), later calls are free.

    Returns:
        BrainTemplate: Read-only ``(99, 117, 95)`` arrays and the MNI affine.
    """
    try:
        from nilearn import datasets
    except ImportError as e:  # optional dependency: the `data` extra
        raise ImportError(
            "the brain cohort needs nilearn for the MNI152 template: pip install 'monai-pie[data]'."
        ) from e

    t1_img = datasets.load_mni152_template(resolution=2)
    affine = np.asarray(t1_img.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise RuntimeError("expected an axis-aligned MNI template affine.")
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    mask = (np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata()) > 0).astype(np.float32)
    gm = np.clip(np.asarray(datasets.load_mni152_gm_template(resolution=2).get_fdata(), dtype=np.float32), 0, 1) * mask
    wm = np.clip(np.asarray(datasets.load_mni152_wm_template(resolution=2).get_fdata(), dtype=np.float32), 0, 1) * mask
    # A few hundred boundary voxels have GM + WM slightly above 1 after resampling; renormalise so C >= 0 is exact.
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask - gm - wm, 0.0, 1.0).astype(np.float32)

    mm = _mm_grid(gm.shape, affine)
    ventricles = _find_ventricles(csf, mm, affine)
    vox_mm = np.abs(np.diag(affine)[:3])
    vdist = ndimage.distance_transform_edt(~ventricles, sampling=vox_mm).astype(np.float32)
    brain = mask > 0
    hip = np.zeros(gm.shape, dtype=bool)
    for c in HIPPOCAMPAL_CENTRES_MM:
        hip |= ((mm - np.asarray(c).reshape(3, 1, 1, 1)) ** 2).sum(0) <= HIPPOCAMPAL_ROI_RADIUS_MM**2
    hip &= brain
    vroi = (vdist <= VENTRICLE_ROI_MARGIN_MM) & brain
    _read_only(t1, gm, wm, csf, mask, affine, ventricles, vdist, hip, vroi)
    return BrainTemplate(t1, gm, wm, csf, mask, affine, ventricles, vdist, hip, vroi)


# ----------------------------------------------------------------------------------------------------- checks
def _check_stage(stage: float, name: str = "stage") -> None:
    if (
        isinstance(stage, bool)
        or not isinstance(stage, (int, float, np.integer, np.floating))
        or not math.isfinite(stage)
    ):
        raise ValueError(f"`{name}` must be a finite number in [0, 1], got {stage!r}.")
    check_in_range(stage, name, 0.0, 1.0)


def _check_age(age: float) -> None:
    if isinstance(age, bool) or not isinstance(age, (int, float, np.integer, np.floating)) or not math.isfinite(age):
        raise ValueError(f"`age` must be a finite number of years, got {age!r}.")
    check_in_range(age, "age", 0.0, 130.0)


def _check_sex(sex: int) -> None:
    if isinstance(sex, bool) or sex not in (0, 1):
        raise ValueError(f"`sex` must be 0 or 1, got {sex!r}.")


# ------------------------------------------------------------------------------------------- random streams
def _seed_sequence(seed: int | np.random.SeedSequence, name: str = "seed") -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`{name}` must be a non-negative int, a numpy SeedSequence or Generator, got {seed!r}.")
    return np.random.SeedSequence(int(seed))


def _child(ss: np.random.SeedSequence, k: int) -> np.random.SeedSequence:
    """The ``k``-th child of ``ss``, without the spawn counter (stateless: the same ``k`` gives the same stream)."""
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, int(k)))


# ---------------------------------------------------------------------------------------------- the subject
@dataclass
class _Anatomy:
    """One subject's warped maps, bias field and ventricle distance before any atrophy; ``(X, Y, Z)`` float32."""

    gm: np.ndarray
    wm: np.ndarray
    total: np.ndarray  # G + W + C: fixed per subject (lost tissue becomes CSF)
    ventricle_distance_mm: np.ndarray
    hippocampal_weight: np.ndarray
    bias: np.ndarray
    head_scale: float
    min_jacobian: float
    coords: np.ndarray | None = None  # (3, X, Y, Z) template voxel coordinates c(x) (deformation mode)


def _sample_anatomy(rng: np.random.Generator, sex: int, template: BrainTemplate, recipe: BrainRecipe) -> _Anatomy:
    """Draw a head scale, a smooth deformation and a bias field, and warp the template maps with them."""
    shape = template.shape
    brain = template.mask > 0
    scale = float(np.clip(1.0 + recipe.head_scale_sd * rng.standard_normal() + recipe.male_head_scale * sex, 0.9, 1.1))
    disp = random_displacement(rng, shape, recipe.displacement_order, recipe.displacement_mm, mask=brain)
    bias_f = random_dct_field(rng, shape, recipe.bias_order)

    # Pull-back map: output voxel x samples the template at centre + (x - centre) / scale + u(x).
    centre = template.centre_vox.astype(np.float32).reshape(3, 1, 1, 1)
    coords = np.indices(shape, dtype=np.float32)
    coords -= centre
    coords *= np.float32(1.0 / scale)
    coords += centre
    coords += disp / template.voxel_mm.astype(np.float32).reshape(3, 1, 1, 1)
    del disp

    proximity = np.clip(VENTRICLE_PROXIMITY_MM - template.ventricle_distance_mm, 0.0, None)
    gm, wm, total, proximity = warp(np.stack([template.gm, template.wm, template.mask, proximity]), coords)
    hip = np.zeros(shape, dtype=np.float32)
    for c in HIPPOCAMPAL_CENTRES_MM:
        # The MNI affine is diagonal (checked on load), so mm = a_ii * vox_i + t_i axis by axis.
        d2 = sum(
            (np.float32(template.affine[i, i]) * coords[i] + np.float32(template.affine[i, 3] - c[i])) ** 2
            for i in range(3)
        )
        hip += np.exp(d2 * np.float32(-0.5 / recipe.hippocampal_sigma_mm**2))
    # Only the brain needs a Jacobian check; a strided grid is enough for smooth low-order fields.
    step = 3
    min_jac = float(jacobian_determinant(coords[:, ::step, ::step, ::step], step)[brain[::step, ::step, ::step]].min())

    bias_f -= bias_f[brain].mean()
    bias_f /= max(float(np.abs(bias_f[brain]).max()), 1e-12)
    bias = np.clip(1.0 + recipe.bias_amplitude * bias_f, 1.0 - recipe.bias_amplitude, 1.0 + recipe.bias_amplitude)
    return _Anatomy(
        gm=gm,
        wm=wm,
        total=np.minimum(total, 1.0),
        ventricle_distance_mm=VENTRICLE_PROXIMITY_MM - proximity,
        hippocampal_weight=np.minimum(hip, 1.0),
        bias=bias.astype(np.float32),
        head_scale=scale,
        min_jacobian=min_jac,
        coords=coords if recipe.atrophy == "deformation" else None,
    )


def _quantise(gm: np.ndarray, wm: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` uint8 GM, WM, CSF in 1/255 steps. Cumulative rounding: G, G + W and the total are each
    rounded, so G <= G + W <= total holds exactly (and pointwise order in G is kept)."""
    q_g = np.rint(gm * TISSUE_LEVELS)
    q_gw = np.minimum(np.maximum(np.rint((gm + wm) * TISSUE_LEVELS), q_g), np.rint(total * TISSUE_LEVELS))
    q_t = np.maximum(np.rint(total * TISSUE_LEVELS), q_gw)
    q_g = np.minimum(q_g, q_gw)
    return np.stack([q_g, q_gw - q_g, q_t - q_gw]).astype(np.uint8)


def _deformation_atrophy(anat: _Anatomy, stage: float, age: float, template: BrainTemplate,
                         recipe: BrainRecipe) -> np.ndarray:
    """Warp the template GM and WM through the visit's atrophy map; the ICV mask stays, so freed space is CSF."""
    coords = atrophy_pullback(anat.coords, template, stage, age, recipe)
    coords_h, _ = hippocampal_pullback(coords, template, stage, age, recipe)
    # Hippocampal tissue h * (G, W) shrinks on its own; the rest (1 - h) * (G, W) moves with the brain.
    rest, hippocampal = split_hippocampal_tissue(template, recipe.hippocampal_radius_mm)
    gm, wm = warp(rest, coords) + warp(hippocampal, coords_h)
    over = np.maximum(gm + wm - anat.total, 0.0)  # tissue pushed past the skull edge (rare, sub-voxel): trim it
    wm = np.maximum(wm - over, 0.0)
    gm = np.minimum(gm, anat.total - wm)
    return _quantise(gm, wm, anat.total)


def _atrophy(anat: _Anatomy, stage: float, age: float, recipe: BrainRecipe) -> np.ndarray:
    """Partial-volume atrophy; return ``(3, X, Y, Z)`` uint8 GM, WM, CSF in 1/255 steps.

    Every loss factor is non-increasing in age and stage, so GM falls and CSF rises pointwise (and the cumulative
    quantisation below keeps that order).
    """
    years = max(float(age) - recipe.age_ref, 0.0)
    keep_diffuse_gm = max(1.0 - recipe.gm_loss_per_year * years - recipe.gm_loss_at_ad * stage, 0.0)
    keep_wm = max(1.0 - recipe.wm_loss_per_year * years, 0.0)
    hip_loss = (
        recipe.hippocampal_loss_per_year * years + recipe.hippocampal_loss_at_ad * stage
    ) * anat.hippocampal_weight
    keep_gm = np.float32(keep_diffuse_gm) * (1.0 - np.minimum(hip_loss, 0.95))
    # Soft ventricle front at distance `radius` from the subject's ventricles: tissue behind it becomes CSF.
    radius = recipe.ventricle_growth_mm_per_year * years + recipe.ventricle_growth_mm_at_ad * stage
    keep_vent = 1.0 - np.clip((radius - anat.ventricle_distance_mm) / recipe.ventricle_ramp_mm, 0.0, 1.0)
    gm = anat.gm * keep_gm * keep_vent
    wm = anat.wm * np.float32(keep_wm) * keep_vent
    return _quantise(gm, wm, anat.total)


def _measure(tissue_u8: np.ndarray, template: BrainTemplate) -> dict[str, float]:
    """Volumes (ml) from the quantised maps, with integer sums so they are exact and order independent."""
    per_level = template.voxel_ml / TISSUE_LEVELS
    g, w, c = (t.astype(np.int64) for t in tissue_u8)
    return {
        "gm_volume_ml": round(int(g.sum()) * per_level, 4),
        "hippocampal_gm_ml": round(int(g[template.hippocampal_roi].sum()) * per_level, 4),
        "ventricle_volume_ml": round(int(c[template.ventricle_roi].sum()) * per_level, 4),
        "wm_volume_ml": round(int(w.sum()) * per_level, 4),
        "csf_volume_ml": round(int(c.sum()) * per_level, 4),
        "icv_ml": round(int((g + w + c).sum()) * per_level, 4),
    }


def _intensity(tissue: np.ndarray, bias: np.ndarray, rng: np.random.Generator, recipe: BrainRecipe) -> np.ndarray:
    """T1 from ``(3, X, Y, Z)`` GM, WM, CSF fractions: tissue intensities, bias, then Rician noise."""
    i_csf, i_gm, i_wm = (np.float32(v) for v in recipe.t1_intensities)
    clean = (i_gm * tissue[0] + i_wm * tissue[1] + i_csf * tissue[2]) * bias
    sigma = np.float32(i_wm / recipe.snr)
    real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def _render(
    anat: _Anatomy,
    stage: float,
    age: float,
    sex: int,
    noise_rng: np.random.Generator,
    template: BrainTemplate,
    recipe: BrainRecipe,
) -> dict[str, Any]:
    if recipe.atrophy == "deformation":
        tissue_u8 = _deformation_atrophy(anat, stage, age, template, recipe)
    else:
        tissue_u8 = _atrophy(anat, stage, age, recipe)
    tissue = tissue_u8.astype(np.float32) * np.float32(1.0 / TISSUE_LEVELS)
    image = _intensity(tissue, anat.bias, noise_rng, recipe)
    truth: dict[str, Any] = {
        "age": float(age),
        "sex": int(sex),
        "stage": float(stage),
        "diagnosis": diagnosis_from_stage(stage),
        **_measure(tissue_u8, template),
    }
    return {"image": image, "tissue": tissue, "tissue_u8": tissue_u8, "affine": template.affine.copy(), "truth": truth}


def synthesize_brain_subject(
    rng_or_seed: int | np.random.SeedSequence | np.random.Generator,
    stage: float,
    age: float,
    sex: int,
    template: BrainTemplate | None = None,
    *,
    visit: int = 0,
    recipe: BrainRecipe | None = None,
    log_jacobian: bool = False,
) -> dict[str, Any]:
    """Synthesise one T1 image and its ground truth in memory.

    With an int or ``SeedSequence``, the subject's anatomy (head scale, deformation, bias) comes from child 0 of the
    seed and the noise from child ``1 + visit``: the same seed with another ``stage``/``age`` is the same subject
    with the same noise, and ``visit`` gives fresh noise. Cohort subject ``i`` of ``synthesize_brain_cohort(seed=s)``
    is ``np.random.SeedSequence(s, spawn_key=(1, i))``. With a ``Generator``, anatomy then noise are drawn from it.

    Args:
        rng_or_seed: Randomness of the subject.
        stage: Disease stage in [0, 1].
        age: Age in years.
        sex: 0 or 1 (1 has a larger head scale on average).
        template: Default :func:`load_brain_template()`.
        visit: Noise stream index (keyword only).
        recipe: Default ``BrainRecipe()``.
        log_jacobian: Also return the true log-Jacobian map (keyword only).

    Returns:
        dict: ``"image"``: ``(99, 117, 95)`` float32 T1; ``"tissue"``: ``(3, 99, 117, 95)`` float32 GM, WM, CSF
            fractions (multiples of 1/255); ``"tissue_u8"``: the same as uint8 levels; ``"affine"``: ``(4, 4)`` MNI
            affine; ``"truth"``: age, sex, stage, diagnosis and volumes in ml (``gm_volume_ml``,
            ``hippocampal_gm_ml``, ``ventricle_volume_ml``, ``wm_volume_ml``, ``csf_volume_ml``, ``icv_ml``) plus
            ``head_scale`` and ``min_jacobian`` of the subject's deformation; with ``log_jacobian=True`` (deformation
            mode only; it costs a full-grid Jacobian) also ``"log_jacobian"``: ``(99, 117, 95)`` float32 true log volume change of this visit
            relative to the subject's anatomy without atrophy (the difference of two visits' maps is their change to
            first order in the displacement).
    """
    _check_stage(stage)
    _check_age(age)
    _check_sex(sex)
    check_positive_int(visit, "visit", minimum=0)
    template = _check_template(template)
    recipe = BrainRecipe() if recipe is None else recipe
    anat_rng, noise_rng = _subject_streams(rng_or_seed, visit)
    anat = _sample_anatomy(anat_rng, int(sex), template, recipe)
    out = _render(anat, float(stage), float(age), int(sex), noise_rng, template, recipe)
    if log_jacobian:
        if recipe.atrophy != "deformation":
            raise ValueError("`log_jacobian` is known only for recipe.atrophy='deformation' (partial-volume atrophy "
                             "does not move tissue).")
        log_jac = log_jacobian_of_pullback(template, float(stage), float(age), recipe)
        out["log_jacobian"] = warp(log_jac[None], anat.coords)[0]
    out["truth"]["head_scale"] = round(anat.head_scale, 6)
    out["truth"]["min_jacobian"] = round(anat.min_jacobian, 6)
    return out


# ----------------------------------------------------------------------------------------------- the cohort
def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        raise ValueError(f"`split` must be three fractions (train, validation, test), got {split!r}.") from None
    if len(fr) != 3 or not all(math.isfinite(f) and f >= 0 for f in fr):
        raise ValueError(f"`split` must be three non-negative fractions (train, validation, test), got {split!r}.")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"`split` fractions must sum to 1, got {split!r} (sum {sum(fr):g}).")
    if fr[0] <= 0:
        raise ValueError(f"`split` needs a positive training fraction, got {split!r}.")
    return fr  # type: ignore[return-value]


def _split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Largest-remainder counts; a split with a positive fraction gets a subject while training keeps one."""
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in (1, 2):
        if fractions[i] > 0 and counts[i] == 0 and counts[0] > 1:
            counts[0] -= 1
            counts[i] += 1
    return counts


def _prepare_output_dir(
    output_dir: str | os.PathLike, overwrite: bool, subfolders: Sequence[str] = ("images", "tissue", "rois")
) -> Path:
    """Check that ``output_dir`` may be written (missing, empty, or ``overwrite``) and create ``subfolders``."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`output_dir` {str(out)!r} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"`output_dir` {str(out)!r} is not empty; choose an empty folder or pass overwrite=True "
            "(files with the same names are replaced, other files are left alone)."
        )
    for sub in subfolders:
        (out / sub).mkdir(parents=True, exist_ok=True)
    # cohort.json marks a complete cohort: drop an old one so an interrupted overwrite does not look complete.
    (out / "cohort.json").unlink(missing_ok=True)
    return out


def _file_mode() -> int:
    """Kept for the writers' signatures; ``atomic_write`` applies the umask itself."""
    return 0


def _atomic_write(path: Path, write: Callable[[str], None], mode: int, suffix: str = ".tmp") -> None:
    """Atomic write through the package's one helper (``mode`` is applied by it from the umask)."""
    atomic_write(path, write, suffix=suffix)


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, mode: int, slope: float | None = None) -> None:
    """Atomic NIfTI-1 save with MNI sform/qform codes; ``slope`` stores uint8 levels as fractions."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=4)  # 4 = MNI152
    img.header.set_sform(affine, code=4)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    _atomic_write(path, lambda tmp: nib.save(img, tmp), mode, suffix=".tmp.nii.gz")


def _check_template(template: BrainTemplate | None) -> BrainTemplate:
    """The given template, or the packaged one when ``None``."""
    template = load_brain_template() if template is None else template
    if not isinstance(template, BrainTemplate):
        raise TypeError(
            f"`template` must be a BrainTemplate (see load_brain_template()), got {type(template).__name__}."
        )
    return template


def _subject_streams(rng_or_seed: Any, visit: int) -> tuple[np.random.Generator, np.random.Generator]:
    """A subject's anatomy stream and the noise stream of one visit: one generator used for both, or two child
    streams of a seed (so a subject's visits share the anatomy and differ in noise)."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed, rng_or_seed
    ss = _seed_sequence(rng_or_seed, "rng_or_seed")
    return np.random.default_rng(_child(ss, 0)), np.random.default_rng(_child(ss, 1 + visit))


def _save_text(text: str, path: Path, mode: int) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), mode)


def _finish_cohort(out: Path, rows: list[dict[str, Any]], columns: Sequence[str], datalist: dict[str, Any],
                   cohort: dict[str, Any], summary: dict[str, Any], rois: Mapping[str, str], mode: int,
                   start: float) -> dict[str, Any]:
    """Write a cohort's ``ground_truth.csv``, ``datalist.json`` and, last (its presence marks a complete cohort),
    ``cohort.json``; return the summary a ``synth`` command prints."""
    buf = io.StringIO()
    csv_writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    csv_writer.writeheader()
    csv_writer.writerows(rows)
    _save_text(buf.getvalue(), out / "ground_truth.csv", mode)
    _save_text(json.dumps(datalist, indent=1) + "\n", out / "datalist.json", mode)
    _save_text(json.dumps(cohort, indent=1) + "\n", out / "cohort.json", mode)
    return {
        "output_dir": str(out),
        **summary,
        "datalist": str(out / "datalist.json"),
        "ground_truth": str(out / "ground_truth.csv"),
        "cohort": str(out / "cohort.json"),
        "rois": {k: str(out / v) for k, v in rois.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }


def _sample_schedule(
    rng: np.random.Generator, num_subjects: int, num_longitudinal: int, visits: int, recipe: BrainRecipe
) -> list[dict[str, Any]]:
    """Per subject: sex and the (age, stage) of every visit. Age and stage are drawn independently."""
    span = recipe.visit_interval_years * (visits - 1)
    age_lo, age_hi = recipe.age_range
    longitudinal = np.zeros(num_subjects, dtype=bool)
    longitudinal[rng.choice(num_subjects, size=num_longitudinal, replace=False)] = True
    subjects = []
    for i in range(num_subjects):
        sex = int(rng.integers(0, 2))
        if longitudinal[i]:
            age0 = rng.uniform(age_lo, age_hi - span)
            stage0 = rng.uniform(0.0, recipe.longitudinal_max_baseline_stage)
            rate = rng.uniform(*recipe.progression_per_year)
            times = [recipe.visit_interval_years * v for v in range(visits)]
        else:
            age0, stage0, rate, times = rng.uniform(age_lo, age_hi), rng.uniform(0.0, 1.0), 0.0, [0.0]
        # Rounded before synthesis so the recorded covariates are exactly the ones used.
        schedule = [(round(age0 + t, 2), round(min(stage0 + rate * t, 1.0), 4)) for t in times]
        subjects.append({"index": i, "sex": sex, "longitudinal": bool(longitudinal[i]), "visits": schedule})
    return subjects


def _assign_splits(rng: np.random.Generator, counts: Sequence[int]) -> dict[int, str]:
    """Subject index -> split name, from a random permutation cut into ``counts``."""
    order = rng.permutation(int(sum(counts)))
    return {int(i): name for name, members in zip(SPLITS, np.split(order, np.cumsum(counts)[:2])) for i in members}


def _cohort_record(
    root: np.random.SeedSequence,
    num_subjects: int,
    num_longitudinal: int,
    visits: int,
    fractions: tuple[float, float, float],
    recipe: BrainRecipe,
    template: BrainTemplate,
) -> dict[str, Any]:
    """The parameters part of ``cohort.json``: enough to regenerate the cohort."""
    from monai_pie import __version__

    return {
        "generator": "monai_pie.data.synthetic.brain.synthesize_brain_cohort",
        "monai_pie_version": __version__,
        "seed": int(root.entropy),
        "parameters": {
            "num_subjects": num_subjects,
            "num_longitudinal": num_longitudinal,
            "visits": visits,
            "split": list(fractions),
        },
        "recipe": asdict(recipe),
        "template": {
            "name": "MNI ICBM152 2009a nonlinear, nilearn files mni_icbm152_*_tal_nlin_sym_09a_converted, 2 mm",
            "shape": list(template.shape),
            "affine": template.affine.tolist(),
            "licence": MNI_LICENCE,
        },
        "geometry": {
            "hippocampal_centres_mm": HIPPOCAMPAL_CENTRES_MM,
            "hippocampal_roi_radius_mm": HIPPOCAMPAL_ROI_RADIUS_MM,
            "ventricle_seeds_mm": VENTRICLE_SEEDS_MM,
            "ventricle_box_mm": VENTRICLE_BOX_MM,
            "ventricle_csf_threshold": VENTRICLE_CSF_THRESHOLD,
            "ventricle_roi_margin_mm": VENTRICLE_ROI_MARGIN_MM,
            "ventricle_expansion_centres_mm": VENTRICLE_EXPANSION_CENTRES_MM,
            "diagnosis_thresholds": DIAGNOSIS_THRESHOLDS,
            "tissue_channels": TISSUE_CHANNELS,
            "tissue_scale": f"1/{TISSUE_LEVELS}",
        },
        "files": {"datalist": "datalist.json", "ground_truth": "ground_truth.csv", "rois": ROI_FILES},
    }


def _synthesize_subject(
    subj: dict[str, Any],
    sid: str,
    ss: np.random.SeedSequence,
    out: Path,
    recipe: BrainRecipe,
    save: Callable[..., None] | None = None,
) -> tuple[dict[str, float], list[tuple[str, dict[str, str], dict[str, Any]]]]:
    """Render and write one subject's visits (a job of :func:`synthesize_brain_cohort`, in or out of process).

    Returns:
        ``(anatomy summary, [(image id, relative paths, truth) per visit])``.
    """
    save = _save_nifti if save is None else save
    template = load_brain_template()
    anat = _sample_anatomy(np.random.default_rng(_child(ss, 0)), subj["sex"], template, recipe)
    visits = []
    for visit, (age, stage) in enumerate(subj["visits"]):
        res = _render(anat, stage, age, subj["sex"], np.random.default_rng(_child(ss, 1 + visit)), template, recipe)
        image_id = f"{sid}_ses-{visit}"
        paths = {"image": f"images/{image_id}.nii.gz", "tissue": f"tissue/{image_id}.nii.gz"}
        save(res["image"], template.affine, out / paths["image"], _file_mode())
        save(np.moveaxis(res["tissue_u8"], 0, -1), template.affine, out / paths["tissue"], _file_mode(),
             1.0 / TISSUE_LEVELS)
        visits.append((image_id, paths, res["truth"]))
    return {"head_scale": round(anat.head_scale, 6), "min_jacobian": round(anat.min_jacobian, 6)}, visits


def synthesize_brain_cohort(
    output_dir: str | os.PathLike,
    num_subjects: int = 40,
    num_longitudinal: int | None = None,
    visits: int = 3,
    seed: int = 0,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    overwrite: bool = False,
    progress: bool = True,
    *,
    recipe: BrainRecipe | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Write a synthetic brain T1 cohort with ground truth to ``output_dir``.

    Layout (paths in the JSON/CSV files are relative to ``output_dir``)::

        images/<subject>_ses-<visit>.nii.gz   float32 T1, (99, 117, 95), MNI 2 mm affine
        tissue/<subject>_ses-<visit>.nii.gz   uint8 (99, 117, 95, 3) GM, WM, CSF with slope 1/255
        rois/{brain_mask,hippocampal_roi,ventricle_roi}.nii.gz   uint8 fixed masks
        datalist.json      {"training": [...], "validation": [...], "test": [...]}, split by subject
        ground_truth.csv   one row per image, columns GROUND_TRUTH_COLUMNS
        cohort.json        parameters, seed, per-subject seeds, counts (written last: marks a complete cohort)

    Args:
        output_dir: Destination; must be empty or missing unless ``overwrite``.
        num_subjects: Number of subjects (>= 1).
        num_longitudinal: How many of them get ``visits`` visits ``recipe.visit_interval_years`` apart (the others get
            one); default ``min(10, num_subjects // 4)``.
        visits: Visits per longitudinal subject (>= 1).
        seed: Non-negative seed; the same seed gives identical arrays.
        split: Train, validation, test fractions of *subjects* (sum to 1).
        overwrite: Allow a non-empty ``output_dir``: files of the same names are replaced and an old ``cohort.json`` is
            removed first; nothing else is deleted (files of a larger earlier cohort stay, unlisted).
        progress: Show a tqdm progress bar.
        recipe: Effect sizes and noise; default ``BrainRecipe()``.
        workers: Processes rendering subjects in parallel (``1``: this process, with a writer thread); the arrays do
            not depend on it.

    Returns:
        dict: Summary: ``output_dir``, ``num_subjects``, ``num_longitudinal``, ``num_images``, subjects and images per
            split, diagnosis counts, the paths of ``datalist``, ``ground_truth``, ``cohort``, ``rois`` and ``seconds``.
    """
    check_positive_int(num_subjects, "num_subjects")
    if num_longitudinal is None:  # a quarter of the cohort, at most 10, so small cohorts work without options
        num_longitudinal = min(10, num_subjects // 4)
    check_positive_int(num_longitudinal, "num_longitudinal", minimum=0)
    if num_longitudinal > num_subjects:
        raise ValueError(f"`num_longitudinal` ({num_longitudinal}) cannot exceed `num_subjects` ({num_subjects}).")
    check_positive_int(visits, "visits")
    check_positive_int(workers, "workers")
    root = _seed_sequence(seed)
    fractions = _check_split(split)
    recipe = BrainRecipe() if recipe is None else recipe
    if num_longitudinal > 0 and recipe.visit_interval_years * (visits - 1) >= recipe.age_range[1] - recipe.age_range[0]:
        raise ValueError(
            f"`visits` ({visits}) x {recipe.visit_interval_years} years do not fit in the age range "
            f"{recipe.age_range} of the recipe."
        )
    out = _prepare_output_dir(output_dir, overwrite)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    mode = _file_mode()
    template = load_brain_template()
    cohort_rng = np.random.default_rng(_child(root, 0))
    subjects = _sample_schedule(cohort_rng, num_subjects, num_longitudinal, visits, recipe)
    counts = _split_counts(num_subjects, fractions)
    split_of = _assign_splits(cohort_rng, counts)
    width = max(3, len(str(num_subjects - 1)))
    for key, arr in (
        ("brain_mask", template.mask > 0),
        ("hippocampal_roi", template.hippocampal_roi),
        ("ventricle_roi", template.ventricle_roi),
    ):
        _save_nifti(arr.astype(np.uint8), template.affine, out / ROI_FILES[key], mode)

    datalist: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    rows: list[dict[str, Any]] = []
    subject_records = []
    num_images = sum(len(s["visits"]) for s in subjects)
    jobs = [(subj, f"sub-{subj['index']:0{width}d}", _child(_child(root, 1), subj["index"]), out, recipe)
            for subj in subjects]
    if workers == 1:
        done = []
        # Compression runs in one writer thread (zlib releases the GIL) while the next image is synthesised.
        pending: deque[Future] = deque()
        with (
            ThreadPoolExecutor(max_workers=1) as writer,
            tqdm(total=num_images, desc="synth brain", unit="img", disable=not progress) as bar,
        ):

            def save(*args: Any) -> None:
                while len(pending) > 4:  # bound the memory held by queued images; .result() re-raises write errors
                    pending.popleft().result()
                pending.append(writer.submit(_save_nifti, *args))

            for job in jobs:
                done.append(_synthesize_subject(*job, save=save))
                bar.update(len(job[0]["visits"]))
            for f in pending:
                f.result()
    else:  # each worker renders and writes whole subjects; the records are assembled here, in subject order
        from monai_pie.utils.parallel import process_map

        done = process_map(_synthesize_subject, jobs, workers, desc="synth brain (subjects)", progress=progress)
    for (subj, sid, *_), (anat, visits) in zip(jobs, done):
        i = subj["index"]
        subject_records.append(
            {
                "subject_id": sid,
                "split": split_of[i],
                "sex": subj["sex"],
                "longitudinal": subj["longitudinal"],
                "num_visits": len(subj["visits"]),
                **anat,
                "seed": {"entropy": int(root.entropy), "spawn_key": [1, i]},
            }
        )
        for visit, (image_id, paths, truth) in enumerate(visits):
            datalist[split_of[i]].append({**paths, "subject_id": sid, "visit": visit, **truth})
            rows.append(
                {
                    "image_id": image_id,
                    "subject_id": sid,
                    "visit": visit,
                    "split": split_of[i],
                    "longitudinal": int(subj["longitudinal"]),
                    **paths,
                    **truth,
                }
            )

    summary = {
        "num_subjects": num_subjects,
        "num_longitudinal": num_longitudinal,
        "num_images": num_images,
        "subjects_per_split": dict(zip(SPLITS, counts)),
        "images_per_split": {name: len(v) for name, v in datalist.items()},
        "diagnoses": {d: sum(r["diagnosis"] == d for r in rows) for d in DIAGNOSES},
    }
    cohort = _cohort_record(root, num_subjects, num_longitudinal, visits, fractions, recipe, template)
    cohort.update(subjects=subject_records, summary=summary)
    return _finish_cohort(out, rows, GROUND_TRUTH_COLUMNS, datalist, cohort, summary, ROI_FILES, mode, t0)
