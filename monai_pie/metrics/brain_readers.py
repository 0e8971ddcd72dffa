"""Brain marker readers that do not invert the cohort's rendering model.

Two readers, each checked on the truth ladder and on autoencoder round trips before the validation uses it
(:func:`monai_pie.validation.brain_protocol.validate_readers`):

* :class:`TissueEM` - a three-class Gaussian mixture fitted by EM to each image's own brain intensities (means,
  variances and proportions re-estimated per image, as FSL FAST and SPM do), then partial-volume fractions by linear
  unmixing between the two nearest of those means. A global intensity drift moves the class means with it instead
  of reading as atrophy; unmixing is linear, so a blur moves fractions between voxels rather than creating tissue.
* :func:`tbm_jacobian` / :class:`TensorBasedMorphometry` - a symmetric diffeomorphic registration (dipy's SyN with a
  local cross-correlation metric, insensitive to smooth intensity changes) of frame ``n`` to frame 0; the
  determinant of the map's Jacobian is the local volume change. A structure's change is the sum of its frame-0
  probabilities times ``det - 1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .brain_markers import tissue_class_means, tissue_fractions

__all__ = ["TensorBasedMorphometry", "TissueEM", "fit_tissue_mixture", "tbm_jacobian"]

CLASSES = ("csf", "gm", "wm")


def fit_tissue_mixture(t1: np.ndarray, brain: np.ndarray, iterations: int = 40, tolerance: float = 1e-5,
                       max_voxels: int = 100_000) -> dict[str, np.ndarray]:
    """Fit a three-class 1-D Gaussian mixture to the intensities inside ``brain`` by EM.

    Started from a 1-D k-means whose centres start evenly across the intensity range (robust when one class, such as
    CSF, holds few voxels), so it needs no reference image.

    Args:
        t1: ``(X, Y, Z)`` image.
        brain: ``(X, Y, Z)`` mask of the voxels to fit.
        iterations: Most EM iterations.
        tolerance: Stop when the mean log-likelihood improves by less than this.
        max_voxels: Fit on at most this many voxels (a fixed, evenly spaced subsample: same image, same fit).

    Returns:
        dict: ``means``, ``stds``, ``weights`` ``(3,)`` each, sorted CSF < GM < WM.
    """
    v = np.asarray(t1, dtype=np.float64)[np.asarray(brain) > 0.5]
    if v.size < 30:
        raise ValueError(f"the brain mask has {v.size} voxels; at least 30 are needed to fit three tissue classes.")
    if not np.isfinite(v).all():
        raise ValueError("the image has NaN or infinite values inside the brain mask.")
    if v.size > max_voxels:
        v = v[:: int(np.ceil(v.size / max_voxels))]
    spread = max(float(np.std(v)), 1e-6)
    means = tissue_class_means(v, np.ones(v.shape, dtype=bool))
    label = np.argmin(np.abs(v[:, None] - means[None]), axis=1)
    stds = np.array([v[label == k].std() if (label == k).sum() > 1 else spread / 3 for k in range(3)]) + 1e-3 * spread
    weights = np.array([(label == k).mean() for k in range(3)]) + 1e-6
    last = -np.inf
    for _ in range(iterations):
        resp, loglik = _responsibilities(v, means, stds, weights)
        nk = resp.sum(0) + 1e-12
        weights = nk / v.size
        means = (resp * v[:, None]).sum(0) / nk
        stds = np.sqrt((resp * (v[:, None] - means) ** 2).sum(0) / nk) + 1e-6 * spread
        if loglik - last < tolerance:
            break
        last = loglik
    order = np.argsort(means)
    return {"means": means[order], "stds": stds[order], "weights": weights[order]}


def _responsibilities(v: np.ndarray, means: np.ndarray, stds: np.ndarray,
                      weights: np.ndarray) -> tuple[np.ndarray, float]:
    logp = -0.5 * ((v[:, None] - means) / stds) ** 2 - np.log(stds) + np.log(weights + 1e-300)
    top = logp.max(1, keepdims=True)
    p = np.exp(logp - top)
    total = p.sum(1, keepdims=True)
    return p / total, float((np.log(total) + top).mean())


class TissueEM:
    """Read tissue volumes (ml) from one T1 with a mixture fitted to that image alone.

    Args:
        brain: ``(X, Y, Z)`` brain mask where tissue is classified and fitted.
        rois: ``{"hippocampal": mask, "ventricle": mask}`` on the same grid.
        voxel_ml: Volume of one voxel in ml.
    """

    def __init__(self, brain: np.ndarray, rois: Mapping[str, np.ndarray], voxel_ml: float) -> None:
        self.brain = np.asarray(brain) > 0.5
        self.rois = {k: np.asarray(v) > 0.5 for k, v in rois.items()}
        self.voxel_ml = float(voxel_ml)

    def probabilities(self, t1: np.ndarray) -> np.ndarray:
        """``(3, X, Y, Z)`` float32 CSF, GM, WM fractions (zero outside the brain): linear partial-volume unmixing
        between the two nearest of this image's own class means."""
        t1 = np.asarray(t1)
        if t1.shape != self.brain.shape:
            raise ValueError(f"image shape {t1.shape} does not match the brain mask {self.brain.shape}.")
        fit = fit_tissue_mixture(t1, self.brain)
        return tissue_fractions(t1, fit["means"]) * self.brain

    def __call__(self, t1: np.ndarray) -> dict[str, float]:
        p = self.probabilities(t1)
        ml = self.voxel_ml
        out = {"gm_ml": float(p[1].sum() * ml), "parenchyma_ml": float((p[1] + p[2]).sum() * ml)}
        if "hippocampal" in self.rois:
            out["hippocampal_gm_ml"] = float(p[1][self.rois["hippocampal"]].sum() * ml)
        if "ventricle" in self.rois:
            out["ventricle_ml"] = float(p[0][self.rois["ventricle"]].sum() * ml)
        return out


def tbm_jacobian(frame0: np.ndarray, frame_n: np.ndarray, level_iters: Sequence[int] = (20, 10, 5),
                 radius: int = 2) -> np.ndarray:
    """Jacobian determinant of the map from frame 0 to frame ``n`` on frame 0's grid (``> 1``: expansion).

    Registers frame ``n`` (moving) to frame 0 (static) with dipy's SyN and a local cross-correlation metric;
    ``phi(y) = y + d(y)`` sends a frame-0 voxel to where its tissue is in frame ``n``, so ``det D phi`` is the local
    volume ratio frame ``n`` / frame 0.

    Args:
        frame0, frame_n: ``(X, Y, Z)`` images on one grid.
        level_iters: SyN iterations per resolution level, coarse to fine.
        radius: Cross-correlation window radius (voxels).

    Returns:
        np.ndarray: ``(X, Y, Z)`` float32 determinant.
    """
    try:
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
        from dipy.align.metrics import CCMetric
    except ImportError as e:  # optional dependency: the `validation` extra
        raise ImportError("tensor-based morphometry needs dipy: pip install 'monai-pie[validation]'.") from e
    import logging

    a, b = np.asarray(frame0, dtype=np.float64), np.asarray(frame_n, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"frames must be two 3D images of one shape, got {a.shape} and {b.shape}.")
    dipy_log = logging.getLogger("dipy")
    level = dipy_log.level
    dipy_log.setLevel(logging.WARNING)  # dipy logs every level at INFO
    try:
        sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, sigma_diff=2.0, radius=radius),
                                                 level_iters=list(level_iters))
        mapping = sdr.optimize(a, b)
    finally:
        dipy_log.setLevel(level)
    d = np.asarray(mapping.get_forward_field(), dtype=np.float64)  # (X, Y, Z, 3) voxel displacements
    grad = np.stack([np.stack(np.gradient(d[..., i]), -1) for i in range(3)], -2) + np.eye(3)
    return np.linalg.det(grad).astype(np.float32)


class TensorBasedMorphometry:
    """Structure volume changes (ml) between frame 0 and frame ``n`` by tensor-based morphometry.

    The structures are soft masks on frame 0: the ventricles are :class:`TissueEM`'s CSF probability inside the
    ventricle ROI, the hippocampi its GM probability inside the hippocampal ROI.

    Args:
        brain: ``(X, Y, Z)`` brain mask.
        rois: ``{"hippocampal": mask, "ventricle": mask}``.
        voxel_ml: Volume of one voxel in ml.
        level_iters: SyN iterations per level.
    """

    def __init__(self, brain: np.ndarray, rois: Mapping[str, np.ndarray], voxel_ml: float,
                 level_iters: Sequence[int] = (20, 10, 5)) -> None:
        self.tissue = TissueEM(brain, rois, voxel_ml)
        self.level_iters = tuple(level_iters)

    def change(self, frame0: np.ndarray, frame_n: np.ndarray, det: np.ndarray | None = None) -> dict[str, float]:
        """``{"ventricle_ml", "hippocampal_gm_ml", "brain_ml"}`` change from frame 0 to frame ``n``; ``det`` reuses a
        computed :func:`tbm_jacobian`."""
        if det is None:
            det = tbm_jacobian(frame0, frame_n, self.level_iters)
        p = self.tissue.probabilities(frame0)
        rois, ml = self.tissue.rois, self.tissue.voxel_ml
        grow = det.astype(np.float64) - 1.0
        return {
            "ventricle_ml": float((p[0] * grow)[rois["ventricle"]].sum() * ml),
            "hippocampal_gm_ml": float((p[1] * grow)[rois["hippocampal"]].sum() * ml),
            "brain_ml": float(((p[1] + p[2]) * grow)[self.tissue.brain].sum() * ml),
        }
