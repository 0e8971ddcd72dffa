"""Brain readers independent of the cohort's renderer: EM tissue mixture and tensor-based morphometry (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from monai_pie.metrics.brain_readers import TensorBasedMorphometry, TissueEM, fit_tissue_mixture, tbm_jacobian

MEANS = (0.15, 0.55, 0.85)


def phantom(ventricle_radius=5.0, size=40, noise=0.02, seed=0, scale=1.0):
    """A WM ball with a GM shell and a central CSF 'ventricle' ball; ``(image, brain, ventricle roi, truth ml)``."""
    rng = np.random.default_rng(seed)
    r = np.sqrt(((np.indices((size,) * 3) - (size - 1) / 2) ** 2).sum(0))
    brain = r < 16
    img = np.where(r < ventricle_radius, MEANS[0], np.where(r < 12, MEANS[2], MEANS[1])) * brain
    img = (img + noise * rng.standard_normal(img.shape)) * scale
    return img.astype(np.float32), brain, r < 9, float((r < ventricle_radius).sum())


def test_mixture_finds_the_classes_and_follows_a_global_intensity_change():
    img, brain, _, _ = phantom()
    fit = fit_tissue_mixture(img, brain)
    np.testing.assert_allclose(fit["means"], MEANS, atol=0.01)
    scaled = fit_tissue_mixture(img * 0.9, brain)
    np.testing.assert_allclose(scaled["means"], np.array(MEANS) * 0.9, atol=0.01)
    with pytest.raises(ValueError, match="at least 30"):
        fit_tissue_mixture(img, np.zeros_like(brain))
    bad = img.copy()
    bad[20, 20, 20] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_tissue_mixture(bad, brain)


def test_tissue_em_reads_volumes_and_ignores_intensity_drift():
    small, brain, roi, truth_small = phantom(5.0)
    large, _, _, truth_large = phantom(7.0, seed=1)
    reader = TissueEM(brain, {"ventricle": roi}, voxel_ml=1.0)
    a, b = reader(small), reader(large)
    assert a["ventricle_ml"] == pytest.approx(truth_small, rel=0.05)
    assert b["ventricle_ml"] - a["ventricle_ml"] == pytest.approx(truth_large - truth_small, rel=0.05)
    # a uniform 2 % darkening moves the class means, not the volumes (a fixed-mean reader reads it as atrophy)
    assert reader(small * 0.98)["ventricle_ml"] == pytest.approx(a["ventricle_ml"], rel=0.01)
    with pytest.raises(ValueError, match="does not match"):
        reader(small[:-1])


def test_tbm_measures_a_known_expansion():
    pytest.importorskip("dipy")
    base, brain, roi, truth0 = phantom(5.0, noise=0.01)
    grown, _, _, truth1 = phantom(6.0, noise=0.01, seed=1)
    base, grown = ndimage.gaussian_filter(base, 0.7), ndimage.gaussian_filter(grown, 0.7)
    det = tbm_jacobian(base, grown, level_iters=(20, 10))
    r = np.sqrt(((np.indices(base.shape) - (base.shape[0] - 1) / 2) ** 2).sum(0))
    assert det[r < 3].mean() > 1.2  # the ventricle expands ...
    assert abs(det[(r > 13) & (r < 15)].mean() - 1.0) < 0.1  # ... and the outer brain does not move
    tbm = TensorBasedMorphometry(brain, {"ventricle": roi, "hippocampal": r > 100}, voxel_ml=1.0)
    change = tbm.change(base, grown, det=det)
    assert change["ventricle_ml"] == pytest.approx(truth1 - truth0, rel=0.35)
    same = tbm_jacobian(base, base, level_iters=(10,))
    assert np.abs(same - 1.0).max() < 0.05  # identical frames: no change
