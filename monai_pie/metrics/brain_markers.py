"""A documented, segmentation-free-of-training way to read brain markers from a T1: partial-volume tissue fractions.

Method: inside the brain mask, k-means (k = 3) on intensities gives CSF < GM < WM class means from the FIRST
image of a series; every image of the series is then read with those fixed means by linear unmixing between the two
nearest classes (a voxel between the CSF and GM means is part CSF, part GM). GM volume is the sum of GM fractions
times the voxel volume; hippocampal GM sums it inside a hippocampal ROI; ventricle volume sums the CSF fraction
inside a ventricle ROI; parenchymal volume sums GM + WM fractions.

Known limits (measured in ``docs/validation/brain_progression.md``, "Readers"):

* Fixing the class means makes any intensity drift read as tissue change: a uniform 2 % darkening reads as
  ventricle growth and hippocampal loss. Fixed means are blur-tolerant, though. ``TissueEM`` re-fits the means to each
  image (drift-proof, blur-sensitive); ``TensorBasedMorphometry`` reads volume change from a registration.
* This unmixing is the inverse of how the first (partial-volume) synthetic cohort was rendered, so on that cohort it
  was not an independent reader.
* With one T1 channel, a voxel that loses GM to CSF at the GM/WM border darkens into the GM range, so whole-GM volume
  can read UP under atrophy. Use a proper segmentation for whole GM.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["BrainMarkers", "tissue_class_means", "tissue_fractions"]


def tissue_class_means(t1: np.ndarray, brain: np.ndarray, iterations: int = 50) -> np.ndarray:
    """CSF, GM, WM intensity means ``(3,)`` by 1-D k-means inside ``brain``, started evenly across the 0.5-99.5 %
    intensity range (robust when one class, e.g. CSF, holds few voxels)."""
    v = t1[brain > 0.5].astype(np.float64)
    if v.size < 10:
        raise ValueError("brain mask has fewer than 10 voxels.")
    lo, hi = np.percentile(v, [0.5, 99.5])
    centres = lo + (hi - lo) * np.array([1 / 6, 3 / 6, 5 / 6])
    for _ in range(iterations):
        label = np.argmin(np.abs(v[:, None] - centres[None]), axis=1)
        new = np.array([v[label == k].mean() if np.any(label == k) else centres[k] for k in range(3)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def tissue_fractions(t1: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Partial-volume fractions ``(3, *spatial)`` (CSF, GM, WM) by linear unmixing between neighbouring classes."""
    c, g, w = (float(m) for m in means)
    x = t1.astype(np.float64)
    gm_low = np.clip((x - c) / (g - c), 0, 1)  # CSF -> GM ramp
    gm_high = np.clip((w - x) / (w - g), 0, 1)  # GM -> WM ramp
    gm = np.where(x <= g, gm_low, gm_high)
    csf = np.where(x <= g, 1 - gm_low, 0.0)
    wm = np.where(x > g, 1 - gm_high, 0.0)
    return np.stack([csf, gm, wm]).astype(np.float32)


class BrainMarkers:
    """Read GM, hippocampal-region GM and ventricle volumes (ml) from T1 images on one grid.

    Args:
        brain: brain mask ``(X, Y, Z)``.
        rois: ``{"hippocampal": mask, "ventricle": mask}`` on the same grid.
        voxel_ml: volume of one voxel in ml.
        reference: the image whose class means are used for all (e.g. frame 0 of a progression).
    """

    def __init__(self, brain: np.ndarray, rois: Mapping[str, np.ndarray], voxel_ml: float, reference: np.ndarray) -> None:
        self.brain = brain > 0.5
        self.rois = {k: np.asarray(v) > 0.5 for k, v in rois.items()}
        self.voxel_ml = float(voxel_ml)
        self.means = tissue_class_means(reference, self.brain)

    def __call__(self, t1: np.ndarray) -> dict[str, float]:
        f = tissue_fractions(t1, self.means) * self.brain
        out = {"gm_ml": float(f[1].sum() * self.voxel_ml), "parenchyma_ml": float((f[1] + f[2]).sum() * self.voxel_ml)}
        if "hippocampal" in self.rois:
            out["hippocampal_gm_ml"] = float(f[1][self.rois["hippocampal"]].sum() * self.voxel_ml)
        if "ventricle" in self.rois:
            out["ventricle_ml"] = float(f[0][self.rois["ventricle"]].sum() * self.voxel_ml)
        return out
