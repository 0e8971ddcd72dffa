"""Chest X-ray measurements from masks (one definition for the phantom truth and the mask reader)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_pie.metrics import measure_ctr, measure_effusion_fraction


def test_measure_ctr_on_hand_made_masks():
    thorax = np.zeros((20, 30), bool)
    thorax[5:15, 2:28] = True  # 26 wide
    heart = np.zeros_like(thorax)
    heart[8:12, 10:23] = True  # 13 wide
    assert measure_ctr(heart, thorax) == (0.5, 13, 26)
    assert measure_ctr(np.zeros_like(heart), thorax)[0] == 0.0


def test_effusion_fraction_is_the_height_of_fluid_over_the_lung_height():
    lung = np.zeros((20, 10), bool)
    lung[2:18] = True  # rows 2..17: 16 rows
    eff = np.zeros_like(lung)
    assert measure_effusion_fraction(lung, eff) == 0.0
    eff[14:] = True  # fluid from row 14 to the base (row 17): 4 rows
    assert measure_effusion_fraction(lung, eff) == pytest.approx(4 / 16)
    eff[:] = True
    assert measure_effusion_fraction(lung, eff) == 1.0
