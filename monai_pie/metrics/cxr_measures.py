"""Chest X-ray measurements from masks: the cardiothoracic ratio and the pleural-effusion height.

One definition, used by the phantom renderer for its ground truth and by the mask reader on generated images.
"""

from __future__ import annotations

import numpy as np

__all__ = ["measure_ctr", "measure_effusion_fraction"]


def measure_ctr(heart: np.ndarray, thorax: np.ndarray) -> tuple[float, int, int]:
    """Cardiothoracic ratio from masks.

    Args:
        heart: boolean ``(H, W)`` heart mask.
        thorax: boolean ``(H, W)`` inner thoracic cavity (inside the ribs, above the diaphragm).

    Returns:
        ``(ctr, heart_width_px, thoracic_width_px)``: ``heart_width_px`` is the horizontal extent (first to last
        column) of the heart, i.e. the sum of the largest right and left excursions from the midline;
        ``thoracic_width_px`` the largest first-to-last extent of the thorax on any row; ``ctr`` their ratio (0 if
        either is empty).
    """
    cols = np.nonzero(heart.any(axis=0))[0]
    heart_w = int(cols[-1] - cols[0] + 1) if cols.size else 0
    thorax_w = 0
    rows = np.nonzero(thorax.any(axis=1))[0]
    if rows.size:
        sub = thorax[rows]
        first = sub.argmax(axis=1)
        last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
        thorax_w = int((last - first + 1).max())
    return (heart_w / thorax_w if thorax_w else 0.0), heart_w, thorax_w


def measure_effusion_fraction(lung: np.ndarray, effusion: np.ndarray) -> float:
    """Effusion height as a fraction of lung height: rows from the lung's lowest row up to the effusion's
    highest row, over the lung's row extent. Both masks ``(H, W)`` boolean, for one side; 0 without fluid."""
    lung_rows = np.nonzero(lung.any(axis=1))[0]
    eff_rows = np.nonzero((effusion & lung).any(axis=1))[0]
    if not lung_rows.size or not eff_rows.size:
        return 0.0
    return float((lung_rows[-1] - eff_rows[0] + 1) / (lung_rows[-1] - lung_rows[0] + 1))
