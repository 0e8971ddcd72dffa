"""Bounded composition of a blurred change: a moved boundary comes back as a moved boundary, a null change as zero."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from monai_pie.inferers.composition import bounded_change, bounded_change_mm, window_for

CSF, WM = 0.2, 0.8


def ventricle(half_width: float, shape: tuple[int, int, int] = (32, 16, 16)) -> np.ndarray:
    """A thin dark slab (CSF, like a lateral ventricle) in bright tissue (WM), with partial-volume edges."""
    x = np.arange(shape[0], dtype=np.float32) - (shape[0] - 1) / 2
    inside = np.clip(half_width + 0.5 - np.abs(x), 0.0, 1.0)[:, None, None] * np.ones(shape, dtype=np.float32)
    return (WM - (WM - CSF) * inside).astype(np.float32)


NOISE = np.random.default_rng(0).normal(0, 0.02, (32, 16, 16)).astype(np.float32)


def csf_volume(image: np.ndarray) -> float:
    """CSF read as a reader does: linear unmixing between the class levels, clipped to [0, 1]."""
    return float(np.clip((WM - image) / (WM - CSF), 0.0, 1.0).sum())


def test_a_null_change_stays_exactly_zero():
    image = ventricle(2.0) + NOISE
    out = bounded_change(image, np.zeros_like(image), sigma=2.0)
    assert not out.any() and np.array_equal(image + out, image)


def test_a_blurred_widening_comes_back_as_a_widening_of_the_right_size():
    before, after = ventricle(2.0) + NOISE, ventricle(3.0) + NOISE  # one voxel wider on each side
    truth = csf_volume(after) - csf_volume(before)
    blurred = ndimage.gaussian_filter(after - before, 2.0)  # what a latent grid returns of the change
    plain = csf_volume(before + blurred) - csf_volume(before)
    bounded = bounded_change(before, blurred, sigma=2.0)
    sharp = csf_volume(before + bounded) - csf_volume(before)
    # the plain residual darkens the inside below CSF, which no reader counts; the bounded one moves the edges
    assert plain < 0.8 * truth
    assert abs(sharp - truth) < 0.1 * truth
    assert (before + bounded).min() >= before.min() and (before + bounded).max() <= before.max()
    # the change is moved, not made: its total is kept (to the deconvolution's tolerance)
    assert abs(bounded.sum() - blurred.sum()) < 0.1 * abs(blurred.sum())


def test_a_change_with_room_is_only_deconvolved():
    image = np.where(np.indices((24, 24)).sum(0) % 2 == 0, 0.3, 0.9).astype(np.float32)  # every pixel has room
    change = np.zeros_like(image)
    change[10:14, 8:12] = -0.05
    blurred = ndimage.gaussian_filter(change, 1.0)
    out = bounded_change(image, blurred, sigma=1.0, iterations=30, bound_smooth=0.0)
    assert np.abs(ndimage.gaussian_filter(out, 1.0) - blurred).max() < 0.05 * np.abs(blurred).max()  # 2D too
    assert np.abs(out).max() > 1.5 * np.abs(blurred).max()  # sharper than what it was given


def test_the_neighbourhood_reaches_the_same_mm_on_any_grid():
    assert window_for((2.0, 2.0, 2.0)) == (3, 3, 3) and window_for((1.0, 1.0, 2.0)) == (5, 5, 3)
    before, after = ventricle(2.0) + NOISE, ventricle(3.0) + NOISE
    blurred = ndimage.gaussian_filter(after - before, 2.0)
    in_mm = bounded_change_mm(before, blurred, 4.0, (2.0, 2.0, 2.0))  # 4 mm on a 2 mm grid: sigma 2 voxels, window 3
    assert np.array_equal(in_mm, bounded_change(before, blurred, sigma=2.0, window=3))


@pytest.mark.parametrize("image, change, kwargs, message", [
    (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), {}, "one 2D or 3D shape"),
    (np.zeros((4, 4, 4)), np.full((4, 4, 4), np.nan), {}, "finite"),
    (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"sigma": 0.0}, "sigma"),
    (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"iterations": 0}, "iterations"),
])
def test_bad_input_names_the_problem(image, change, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bounded_change(image, change, **{"sigma": 1.0, **kwargs})
