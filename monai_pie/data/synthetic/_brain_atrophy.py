"""Atrophy by deformation with a known Jacobian, for the synthetic brain cohort.

The visit's tissue maps are the subject's baseline maps pulled back through a smooth, invertible map ``psi`` defined
in template space: ``tissue_visit(x) = tissue_template(psi(c(x)))``, where ``c`` is the subject's own warp. The
intracranial mask is not deformed, so wherever tissue moves away the space fills with CSF; tissue keeps its own
intensity (no grey-to-CSF blending in place). ``psi(y) = y + u(y)`` with three parts, all in mm:

* cortical thinning: ``u = g * w(depth) * n``, ``n`` the smoothed outward normal of the brain surface and
  ``w = exp(-depth / lambda)``; sampling further out removes tissue at the surface (cortex thins, sulci and the
  subarachnoid space widen). ``g`` grows with age and stage.
* ventricle expansion: ``u = -a * (y - c) * exp(-|y - c|^2 / (2 sigma^2))`` around points along the lateral
  ventricles; sampling closer to ``c`` enlarges what is there (near ``c`` the volume grows by ``1 / (1 - a)^3``).
* hippocampal shrinkage: the hippocampal tissue, ``h * (G, W)`` with ``h`` a ball around each hippocampal centre
  (1 mm soft edge), is pulled back through the radial field with ``+b`` (its volume falls by up to
  ``1 / (1 + b)^3``); the rest of the tissue stays, so the rim the shrinking hippocampus leaves becomes CSF, as
  the hippocampal fissure and temporal horn widen in AD. (A smooth weight would fade tissue in place instead.)

Age drives cortical thinning and a little ventricle expansion; disease stage drives all three, mostly the
hippocampi and ventricles. The true local volume change of a visit relative to the subject's baseline anatomy is
``1 / det D psi`` at ``c(x)`` (``det D(psi o c) = det D psi(c) det D c``), returned as a log-Jacobian map.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.special import expit

from ._deform import jacobian_determinant, warp

if TYPE_CHECKING:  # pragma: no cover
    from .brain import BrainRecipe, BrainTemplate

__all__ = ["VENTRICLE_EXPANSION_CENTRES_MM", "atrophy_pullback", "hippocampal_pullback", "log_jacobian_of_pullback", "split_hippocampal_tissue"]

#: points along each lateral ventricle (atrium, body, frontal horn, its anterior tip), MNI mm, from the template's
#: ventricle mask (centroids of 20 mm slabs in y)
VENTRICLE_EXPANSION_CENTRES_MM = tuple(
    (side * x, y, z) for side in (1.0, -1.0) for (x, y, z) in ((20.0, -36.0, 15.0), (11.0, -15.0, 22.0),
                                                                 (6.0, 5.0, 14.0), (9.0, 21.0, 7.0))
)
SURFACE_SMOOTHING_MM = 4.0
HIPPOCAMPAL_EDGE_MM = 1.0


@functools.lru_cache(maxsize=2)
def _surface_normal_field(template: BrainTemplate, depth_mm: float) -> np.ndarray:
    """``(3, X, Y, Z)`` float32 ``w(depth) * n`` in template voxels: the smoothed outward normal of the brain mask,
    weighted by ``exp(-depth / depth_mm)`` inside the brain and 1 outside."""
    vox_mm = template.voxel_mm
    brain = template.mask > 0.5
    depth = ndimage.distance_transform_edt(brain, sampling=vox_mm) - ndimage.distance_transform_edt(~brain, sampling=vox_mm)
    smooth = ndimage.gaussian_filter(depth, SURFACE_SMOOTHING_MM / vox_mm)
    grad = np.stack(np.gradient(smooth, *vox_mm))  # points inward (depth grows inward)
    norm = np.sqrt((grad * grad).sum(0)) + 1e-6
    weight = np.exp(-np.clip(depth, 0.0, None) / depth_mm)
    field = (-grad / norm * weight).astype(np.float32)
    field.flags.writeable = False
    return field


def _to_mm(coords: np.ndarray, template: BrainTemplate) -> tuple[np.ndarray, np.ndarray]:
    """MNI mm of template voxel coordinates ``(3, ...)`` (the affine is diagonal), and the ``(3, 1, 1, 1)`` diagonal."""
    diag = np.diag(template.affine)[:3].astype(np.float32).reshape(3, 1, 1, 1)
    return coords * diag + template.affine[:3, 3].astype(np.float32).reshape(3, 1, 1, 1), diag


def _radial_field(mm: np.ndarray, centres: tuple, strength: float, sigma_mm: float) -> np.ndarray:
    """``sum_c strength * (y - c) * exp(-|y - c|^2 / (2 sigma^2))`` in mm, ``(3, ...)`` float32."""
    out = np.zeros_like(mm)
    if strength == 0.0:
        return out
    for c in centres:
        d = mm - np.asarray(c, dtype=np.float32).reshape(3, *([1] * (mm.ndim - 1)))
        out += np.float32(strength) * d * np.exp((d * d).sum(0) * np.float32(-0.5 / sigma_mm**2))
    return out


def atrophy_strengths(stage: float, age: float, recipe: BrainRecipe) -> dict[str, float]:
    """Cortical thinning ``g`` (mm), ventricle expansion ``a`` and hippocampal shrinkage ``b`` of a visit."""
    years = max(float(age) - recipe.age_ref, 0.0)
    return {
        "cortical_thinning_mm": recipe.cortical_thinning_mm_per_year * years + recipe.cortical_thinning_mm_at_ad * stage,
        "ventricle_expansion": recipe.ventricle_expansion_per_year * years + recipe.ventricle_expansion_at_ad * stage,
        "hippocampal_shrinkage": recipe.hippocampal_shrinkage_per_year * years + recipe.hippocampal_shrinkage_at_ad * stage,
    }


def atrophy_pullback(coords: np.ndarray, template: BrainTemplate, stage: float, age: float,
                     recipe: BrainRecipe) -> np.ndarray:
    """``psi(coords)``: template voxel coordinates to sample for a visit.

    Args:
        coords: ``(3, X, Y, Z)`` float32 template voxel coordinates of the subject's baseline anatomy (``c(x)``).
        template: The template (diagonal affine).
        stage: Disease stage in [0, 1].
        age: Age in years.
        recipe: Effect sizes (``cortical_*``, ``ventricle_expansion_*``, ``hippocampal_shrinkage_*``).

    Returns:
        np.ndarray: ``(3, X, Y, Z)`` float32 voxel coordinates ``psi(c(x))``.
    """
    s = atrophy_strengths(stage, age, recipe)
    vox = template.voxel_mm.astype(np.float32).reshape(3, 1, 1, 1)
    mm, diag = _to_mm(coords, template)
    # mm along the MNI axes -> voxels along the array axes
    u = _radial_field(mm, VENTRICLE_EXPANSION_CENTRES_MM, -s["ventricle_expansion"], recipe.ventricle_sigma_mm) / diag
    if s["cortical_thinning_mm"] > 0:
        normal = warp(_surface_normal_field(template, recipe.cortical_depth_mm), coords)
        u += np.float32(s["cortical_thinning_mm"]) * normal / vox
    return coords + u


def hippocampal_pullback(coords: np.ndarray, template: BrainTemplate, stage: float, age: float,
                         recipe: BrainRecipe) -> tuple[np.ndarray, np.ndarray]:
    """The hippocampal tissue's own pull-back and weight at ``coords`` (template voxels, ``(3, X, Y, Z)``).

    Returns:
        tuple: ``(coords_h, weight)``: ``(3, X, Y, Z)`` float32 coordinates at which to sample the hippocampal tissue
            ``h * (G, W)``, and ``h`` ``(X, Y, Z)`` at ``coords`` (the share of the tissue there that is hippocampal).
    """
    from .brain import HIPPOCAMPAL_CENTRES_MM

    b = atrophy_strengths(stage, age, recipe)["hippocampal_shrinkage"]
    mm, diag = _to_mm(coords, template)
    u = _radial_field(mm, HIPPOCAMPAL_CENTRES_MM, b, recipe.hippocampal_field_sigma_mm) / diag
    return coords + u, hippocampal_weight(mm, recipe)


@functools.lru_cache(maxsize=2)
def split_hippocampal_tissue(template: BrainTemplate, radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Template ``(G, W)`` split into the non-hippocampal part ``(1 - h) (G, W)`` and the hippocampal part ``h (G, W)``,
    each ``(2, X, Y, Z)`` float32, read-only."""
    from .brain import _mm_grid

    h = _hippocampal_weight_mm(_mm_grid(template.shape, template.affine).astype(np.float32), radius_mm)
    tissue = np.stack([template.gm, template.wm])
    hip = (tissue * h).astype(np.float32)
    rest = (tissue - hip).astype(np.float32)
    hip.flags.writeable = rest.flags.writeable = False
    return rest, hip


def hippocampal_weight(mm: np.ndarray, recipe: BrainRecipe) -> np.ndarray:
    """``h``: balls of ``hippocampal_radius_mm`` (1 mm soft edge) around the hippocampal centres, at MNI mm
    ``(3, ...)``."""
    return _hippocampal_weight_mm(mm, recipe.hippocampal_radius_mm)


def _hippocampal_weight_mm(mm: np.ndarray, radius_mm: float) -> np.ndarray:
    from .brain import HIPPOCAMPAL_CENTRES_MM

    h = np.zeros(mm.shape[1:], dtype=np.float32)
    for c in HIPPOCAMPAL_CENTRES_MM:
        d = mm - np.asarray(c, dtype=np.float32).reshape(3, *([1] * (mm.ndim - 1)))
        h += expit((np.float32(radius_mm) - np.sqrt((d * d).sum(0))) / np.float32(HIPPOCAMPAL_EDGE_MM))
    return np.minimum(h, 1.0).astype(np.float32)


def log_jacobian_of_pullback(template: BrainTemplate, stage: float, age: float, recipe: BrainRecipe) -> np.ndarray:
    """True log volume change ``-log det D psi`` on the template grid, ``(X, Y, Z)`` float32 (> 0: expansion).

    Where the tissue is hippocampal (weight ``h``) its own shrinkage is added as ``-h log det D psi_h``: the
    change of the tissue that is there, which is what a registration of frame 0 to frame n measures.

    Raises:
        RuntimeError: if the map folds (``det <= 0``), i.e. the recipe's effects are too large.
    """
    grid = np.indices(template.shape, dtype=np.float32)
    det = jacobian_determinant(atrophy_pullback(grid, template, stage, age, recipe))
    coords_h, h = hippocampal_pullback(grid, template, stage, age, recipe)
    det_h = jacobian_determinant(coords_h)
    if float(det_h.min()) <= 0.0:
        raise RuntimeError(f"the hippocampal shrinkage folds (min Jacobian {det_h.min():.3f}); reduce it.")
    det = det * np.exp(h * np.log(det_h))  # the hippocampal tissue's own change where it dominates
    if float(det.min()) <= 0.0:
        raise RuntimeError(f"the atrophy deformation folds (min Jacobian {det.min():.3f}) at stage {stage}, age {age}; "
                           "reduce the recipe's atrophy effects.")
    return (-np.log(det)).astype(np.float32)
