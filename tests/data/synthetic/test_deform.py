"""A pull-back with a prescribed log Jacobian: the volume change it promises is the one a warp delivers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from monai_pie.data.synthetic._deform import jacobian_determinant, pullback_with_log_jacobian, warp


def _ball(n: int = 40, radius: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    r = np.sqrt((np.stack(np.meshgrid(*(np.arange(n) - n / 2,) * 3, indexing="ij")) ** 2).sum(0))
    return (r < radius).astype(np.float64), r < 18


@pytest.mark.parametrize("factor", [1.3, 0.8])
def test_prescribed_log_jacobian_is_met_and_scales_the_content(factor):
    ball, brain = _ball()
    shape = ndimage.gaussian_filter(ball, 1.0)
    want = -np.log(factor) * shape  # content at x has its volume scaled by exp(-L(x))
    want[brain] -= want.sum() / brain.sum()  # what the ball takes, the rest of the "brain" gives
    coords = pullback_with_log_jacobian(want)
    assert coords.shape == (3, *ball.shape) and coords.dtype == np.float32
    got = np.log(jacobian_determinant(coords))
    assert np.abs(got - want).max() < 0.01  # the linear solve alone is off by more than this at 30 %
    warped = warp(ball[None], coords)[0]
    # change of variables: the content is conserved once each output voxel is weighted by det D psi
    assert (warped * np.exp(got)).sum() == pytest.approx(ball.sum(), rel=0.01)
    # and the ball's volume changes by about the factor the field promises (first order: L taken where the content was)
    assert warped.sum() == pytest.approx((ball * np.exp(-want)).sum(), rel=0.04)
    assert (warped.sum() - ball.sum()) * (factor - 1) > 0  # grows when asked to grow, shrinks when asked to shrink


def test_zero_log_jacobian_is_the_identity_and_bad_input_is_refused():
    coords = pullback_with_log_jacobian(np.zeros((6, 7, 8)))
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (6, 7, 8)), indexing="ij"))
    np.testing.assert_allclose(coords, grid, atol=1e-6)
    with pytest.raises(ValueError, match="finite"):
        pullback_with_log_jacobian(np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        pullback_with_log_jacobian(np.zeros((4, 4)))
    spike = np.zeros((16, 16, 16))
    spike[8, 8, 8] = 40.0
    with pytest.raises(ValueError, match="folds"):
        pullback_with_log_jacobian(spike)
