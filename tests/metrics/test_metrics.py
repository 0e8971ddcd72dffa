"""Metrics: diversity, memorisation distances, rank correlation, partial-volume brain markers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_pie.metrics import (
    BrainMarkers,
    ms_ssim_diversity,
    nearest_neighbour_distances,
    spearman_rho,
    tissue_class_means,
    tissue_fractions,
)


def test_ms_ssim_diversity_is_one_for_copies_and_lower_for_different_images():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 1, 32, 32, 32, generator=g)
    same = ms_ssim_diversity(base.repeat(3, 1, 1, 1, 1))
    diff = ms_ssim_diversity(torch.rand(3, 1, 32, 32, 32, generator=g))
    assert same == pytest.approx(1.0, abs=1e-4) and diff < 0.5
    with pytest.raises(ValueError, match="at least 2"):
        ms_ssim_diversity(base)


def test_nearest_neighbour_distances():
    ref = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    q = torch.tensor([[0.9, 1.1]])
    assert nearest_neighbour_distances(q, ref)[0] == pytest.approx(0.1)
    self_nn = nearest_neighbour_distances(ref, ref, exclude_self=True)
    assert self_nn.tolist() == pytest.approx([1.0, 1.0, 4.0])


def test_spearman():
    assert spearman_rho([0, 1, 2, 3], [1, 2, 5, 9]) == pytest.approx(1.0)
    assert spearman_rho([0, 1, 2, 3], [9, 5, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman_rho([0, 1, 2], [1, 1, 1]))


def test_tissue_fractions_unmix_pure_and_mixed_voxels():
    means = np.array([0.15, 0.55, 0.85])
    f = tissue_fractions(np.array([0.15, 0.55, 0.85, 0.35, 0.7]), means)
    np.testing.assert_allclose(f[:, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(f[:, 3], [0.5, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(f[:, 4], [0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(f.sum(0), 1, atol=1e-6)


def test_brain_markers_see_ventricle_growth():
    rng = np.random.default_rng(0)
    img = np.full((20, 20, 20), 0.85) + rng.normal(0, 0.01, (20, 20, 20))
    img[5:15, 5:15, :10] = 0.55  # grey matter block
    img[7:13, 7:13, 12:16] = 0.15  # ventricle (~2 % of voxels)
    brain = np.ones_like(img)
    vent = np.zeros_like(img)
    vent[6:14, 6:14, 11:18] = 1
    assert tissue_class_means(img, brain) == pytest.approx([0.15, 0.55, 0.85], abs=0.02)
    m = BrainMarkers(brain, {"ventricle": vent}, voxel_ml=0.008, reference=img)
    before = m(img)
    grown = img.copy()
    grown[6:14, 6:14, 12:17] = 0.15
    after = m(grown)
    assert after["ventricle_ml"] > before["ventricle_ml"] and after["parenchyma_ml"] < before["parenchyma_ml"]
