"""Synthetic 2D chest X-ray (PA) phantoms with ground truth, for text-guided synthesis and PIE progression.

No real radiograph ships with monai-pie, so subjects are drawn: body outline, lung fields, heart, mediastinum,
diaphragm domes, ribs, clavicles, spine, hilar vessels, then findings whose truth is measured from the rendered
masks (cardiothoracic ratio, effusion height, opacity area, perihilar haze). Every image is a deterministic
function of ``(seed, size, severities)``, so the same subject can be re-rendered at several severities to give
a ground-truth progression sequence.

Display convention: standard PA viewing, the patient faces the viewer, so the patient's **left** (heart side)
is on the **image right** (higher column index). Arrays are ``(H, W)`` = rows (top to bottom) x columns.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from monai_pie.metrics.cxr_measures import measure_ctr, measure_effusion_fraction
from monai_pie.vocabulary import CHEXPERT_COLUMNS, CXR_FINDINGS, canonical_finding, cxr_report, finding_key

__all__ = [
    "CXR_MASK_STRUCTURES",
    "CXR_PRESENCE_THRESHOLD",
    "CXRSubject",
    "DEFAULT_PREVALENCE",
    "EFFUSION_SIDES",
    "render_cxr_phantom",
    "render_cxr_progression",
    "sample_cxr_subject",
    "synthesize_cxr_cohort",
]

# A finding is named in the report iff its severity is strictly greater than this.
CXR_PRESENCE_THRESHOLD = 0.2
CXR_MASK_STRUCTURES: tuple[str, ...] = ("lungs", "heart", "thorax", "effusion", "opacity")
EFFUSION_SIDES = ("right", "left", "bilateral")
DEFAULT_PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.3,
    "pleural effusion": 0.3,
    "consolidation": 0.25,
    "edema": 0.2,
}
MIN_SIZE = 32
_NORMAL_CTR = (0.42, 0.48)  # subject's own heart at severity 0
_MAX_CTR = 0.68  # cardiomegaly severity 1
_MAX_EFFUSION = 0.5  # fluid level (fraction of lung height) at effusion severity 1
_MAX_OPACITY_RADIUS = 0.42  # consolidation radius at severity 1, in thoracic half-widths
_HILA_UT = ((-0.25, 0.44), (0.27, 0.40))  # hila (u, t), right then left; the left hilum sits higher


def _check_severities(severities: Mapping[str, float] | None) -> dict[str, float]:
    """Validate ``severities`` and return it complete (missing findings -> 0) keyed by vocabulary spelling."""
    out = dict.fromkeys(CXR_FINDINGS, 0.0)
    if severities is not None and not isinstance(severities, Mapping):
        raise TypeError(f"`severities` must be a mapping {{finding: severity}}, got {type(severities).__name__}.")
    for name, value in (severities or {}).items():
        try:
            key = canonical_finding(name)
        except ValueError as e:
            raise ValueError(f"`severities`: {e}") from None
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = float("nan")
        if not (0.0 <= v <= 1.0):  # also rejects NaN
            raise ValueError(f"`severities[{name!r}]` must be in [0, 1], got {value!r}.")
        out[key] = v
    return out


def _check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name`` unless it is an integer >= ``minimum``."""
    ok = isinstance(value, (int, np.integer, float)) and not isinstance(value, bool)
    if not ok or value != int(value) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_size(size: int) -> int:
    return _check_int(size, "size", MIN_SIZE)


# -------------------------------------------------------------------------------------------------- subject


@dataclass(frozen=True)
class CXRSubject:
    """Anatomy and acquisition parameters of one phantom subject (normalised units: image width/height = 1).

    ``u`` below is the horizontal offset from the midline in thoracic half-widths (``u = +-1`` at the inner
    rib margins, ``u > 0`` patient's left = image right); ``t`` is the height from the lung apex (0) to the
    costophrenic angles (1).
    """

    seed: int
    center_x: float  # midline
    shift_y: float  # vertical positioning jitter
    rotation_deg: float  # in-plane rotation jitter
    thorax_half_width: float  # inner rib margin half-width at the widest level
    apex_y: float  # lung apices
    cp_y: float  # costophrenic angles
    dome_right_t: float  # top of the right hemidiaphragm (higher: liver)
    dome_left_t: float
    body_margin: float  # chest wall soft tissue beyond the ribs
    normal_ctr: float  # cardiothoracic ratio of this subject's normal heart
    heart_aspect: float  # short / long semi-axis of the cardiac ellipse
    heart_tilt_deg: float  # long axis tilt (apex down and to the patient's left)
    heart_center_t: float
    rib_count: int  # posterior ribs visible above the costophrenic angles
    rib_spacing_power: float  # > 1: intercostal spaces widen towards the bases
    rib_thickness: float  # posterior rib thickness, in image heights
    clavicle_t: float  # medial clavicle end, in t units (negative: above the apices)
    exposure: float  # attenuation-to-brightness gain
    gamma: float
    noise_sigma: float
    gastric_bubble: bool
    effusion_side: str  # used when rendering an effusion without an explicit side
    opacity_side: str  # "right" | "left"
    opacity_t: float  # consolidation centre height
    opacity_u: float  # consolidation centre |u|
    opacity_aspect: float
    texture_seed: int  # vessels, parenchymal texture, consolidation outline
    noise_seed: int  # quantum noise: fixed per subject so progressions share it


def sample_cxr_subject(seed: int = 0) -> CXRSubject:
    """Draw a subject's anatomy from ``seed`` (the same seed always gives the same subject, at any size)."""
    seed = _check_int(seed, "seed", 0)
    ss = np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss.spawn(1)[0])
    texture_seed, noise_seed = (int(s) for s in ss.generate_state(3)[1:])
    u = rng.uniform
    apex = u(0.10, 0.13)
    return CXRSubject(
        seed=int(seed),
        center_x=0.5 + rng.normal(0, 0.012),
        shift_y=rng.normal(0, 0.012),
        rotation_deg=rng.normal(0, 1.8),
        thorax_half_width=u(0.34, 0.385),
        apex_y=apex,
        cp_y=apex + u(0.68, 0.74),
        dome_right_t=u(0.70, 0.78),
        dome_left_t=u(0.76, 0.84),
        body_margin=u(0.035, 0.07),
        normal_ctr=u(*_NORMAL_CTR),
        heart_aspect=u(0.62, 0.72),
        heart_tilt_deg=u(30, 42),
        heart_center_t=u(0.68, 0.73),
        rib_count=int(rng.integers(9, 11)),
        rib_spacing_power=u(1.0, 1.25),
        rib_thickness=u(0.018, 0.024),
        clavicle_t=u(0.08, 0.16),
        exposure=u(0.92, 1.08),
        gamma=u(0.9, 1.15),
        noise_sigma=u(0.008, 0.022),
        gastric_bubble=bool(rng.random() < 0.7),
        effusion_side=str(rng.choice(EFFUSION_SIDES, p=[0.35, 0.3, 0.35])),
        opacity_side=str(rng.choice(["right", "left"])),
        opacity_t=u(0.35, 0.75),
        opacity_u=u(0.45, 0.65),
        opacity_aspect=u(0.75, 1.3),
        texture_seed=texture_seed,
        noise_seed=noise_seed,
    )


# ------------------------------------------------------------------------------------------------- geometry


@dataclass
class _Frame:
    """Pixel-centre coordinates of one render, in the subject's (rotated, shifted) body frame."""

    size: int
    x: np.ndarray  # (H, W) normalised image coordinates in the body frame
    y: np.ndarray
    u: np.ndarray  # (H, W) offset from the midline in thoracic half-widths
    t: np.ndarray  # (H, W) height from apex (0) to costophrenic angle (1)
    s: CXRSubject

    def y_of_t(self, t: float | np.ndarray) -> float | np.ndarray:
        return self.s.apex_y + t * (self.s.cp_y - self.s.apex_y)


def _frame(s: CXRSubject, size: int) -> _Frame:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    a = np.deg2rad(s.rotation_deg)
    dx, dy = xx - s.center_x, yy - 0.5
    x = s.center_x + np.cos(a) * dx + np.sin(a) * dy
    y = 0.5 - np.sin(a) * dx + np.cos(a) * dy - s.shift_y
    u = (x - s.center_x) / s.thorax_half_width
    t = (y - s.apex_y) / (s.cp_y - s.apex_y)
    return _Frame(size, x.astype(np.float32), y.astype(np.float32), u.astype(np.float32), t.astype(np.float32), s)


def _diaphragm_t(f: _Frame, u: np.ndarray) -> np.ndarray:
    """Height of the diaphragm surface (t units) at ``u``: two parabolic domes meeting under the heart."""
    s = f.s
    # Each dome reaches t = 1.02 at the lateral wall, so the costophrenic angles are sharp and acute.
    right = s.dome_right_t + (1.02 - s.dome_right_t) * ((u + 0.45) / 0.55) ** 2
    left = s.dome_left_t + (1.02 - s.dome_left_t) * ((u - 0.5) / 0.5) ** 2
    # Centrally the heart sits on a flatter tendon at about the height of the domes.
    central = 0.5 * (s.dome_right_t + s.dome_left_t) + 0.08
    return np.minimum(np.minimum(right, left), central)


def _mediastinum_u(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and left mediastinal borders (|u|) above the heart: SVC on the right, aortic knob and pulmonary
    trunk on the left."""
    tt = np.clip(t, 0, 1)
    right = 0.14 + 0.10 * tt
    left = 0.13 + 0.08 * tt + 0.13 * np.exp(-(((t - 0.28) / 0.08) ** 2)) + 0.08 * np.exp(-(((t - 0.42) / 0.06) ** 2))
    return right, left


def _heart_axes(f: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Frame coordinates rotated onto the heart's long (p) and short (q) axes, in u units."""
    phi = np.deg2rad(f.s.heart_tilt_deg)
    v = f.t * ((f.s.cp_y - f.s.apex_y) / f.s.thorax_half_width)  # t -> u units
    return np.cos(phi) * f.u + np.sin(phi) * v, -np.sin(phi) * f.u + np.cos(phi) * v


def _heart_mask(f: _Frame, axes: tuple[np.ndarray, np.ndarray], scale: float) -> np.ndarray:
    """Cardiac silhouette: a tilted ellipse (apex down and to the patient's left) sitting on the diaphragm.

    ``scale`` 1 is a heart of about 0.44 thoracic widths; larger hearts grow mostly leftwards and downwards.
    """
    s = f.s
    a = 0.5 * scale
    b = 0.5 * s.heart_aspect * (1 + 0.4 * (scale - 1))
    cu = 0.16 + 0.22 * (scale - 1)
    cv = (s.heart_center_t + 0.04 * (scale - 1)) * ((s.cp_y - s.apex_y) / s.thorax_half_width)
    phi = np.deg2rad(s.heart_tilt_deg)
    pc, qc = np.cos(phi) * cu + np.sin(phi) * cv, -np.sin(phi) * cu + np.cos(phi) * cv
    p, q = axes
    return ((p - pc) / a) ** 2 + ((q - qc) / b) ** 2 <= 1.0


def _calibrated_heart(f: _Frame, thorax: np.ndarray, ctr: float) -> np.ndarray:
    """Heart mask whose measured CTR (see :func:`measure_ctr`) is the closest to ``ctr`` (bisection on scale)."""
    _, _, thorax_w = measure_ctr(thorax, thorax)
    rows = np.nonzero(thorax.any(axis=1))[0]
    lower = slice(rows[0] + (rows[-1] - rows[0]) // 4, rows[-1] + 1)  # the heart lives in the lower thorax
    p, q = _heart_axes(f)
    crop = (p[lower], q[lower])
    lo, hi = 0.5, 2.5
    for _ in range(11):
        mid = 0.5 * (lo + hi)
        cols = np.nonzero((_heart_mask(f, crop, mid) & thorax[lower]).any(axis=0))[0]
        width = cols[-1] - cols[0] + 1 if cols.size else 0
        lo, hi = (mid, hi) if width < ctr * thorax_w else (lo, mid)
    return _heart_mask(f, (p, q), 0.5 * (lo + hi)) & thorax


def _anatomy_masks(f: _Frame, ctr: float) -> dict[str, np.ndarray]:
    """Boolean ``(H, W)`` masks: thorax (inside the ribs, above the diaphragm), heart, lungs (right, left)."""
    au, t = np.abs(f.u), f.t
    above_diaphragm = t <= _diaphragm_t(f, f.u)
    # Superellipse apices, vertical lateral walls below t = 0.6.
    tc = 0.6
    cage = ((np.abs(au - 0.5) / 0.5) ** 2.4 + (np.clip(tc - t, 0, None) / tc) ** 2.4 <= 1.0) & (t >= 0)
    med_r, med_l = _mediastinum_u(t)
    mediastinum = (f.u >= -med_r) & (f.u <= med_l) & (t >= -0.3)
    thorax = (cage | mediastinum) & above_diaphragm & (au <= 1.0)
    heart = _calibrated_heart(f, thorax, ctr)
    lung = cage & above_diaphragm & ~mediastinum & ~heart
    return {
        "thorax": thorax,
        "heart": heart,
        "lung_right": lung & (f.u < 0),
        "lung_left": lung & (f.u > 0),
    }


# ------------------------------------------------------------------------------------------------- drawing


def _blur(a: np.ndarray, sigma_px: float, truncate: float = 3.0) -> np.ndarray:
    return ndimage.gaussian_filter(a.astype(np.float32, copy=False), sigma_px, mode="nearest", truncate=truncate)


def _band(dist: np.ndarray, half_width: float) -> np.ndarray:
    """Projected thickness of a round bar at perpendicular distance ``dist``: sqrt(1 - (d/w)^2)."""
    return np.sqrt(np.clip(1.0 - (dist / half_width) ** 2, 0.0, None))


def _body(f: _Frame) -> np.ndarray:
    """Soft-tissue path length (0..1): torso as an elliptic cylinder, widening into the shoulders at the top,
    whose upper surface slopes down from the neck; air beside the lower chest."""
    s = f.s
    dx = np.abs(f.x - s.center_x)
    chest = s.thorax_half_width + s.body_margin
    # Shoulders and upper arms: the outline flares out gradually from the axillae upwards.
    y_axilla = s.apex_y + 0.32
    flare = np.clip((y_axilla - f.y) / 0.34, 0, 1)
    half = chest + (0.62 - chest) * flare**1.6
    torso = np.clip(1 - (dx / half) ** 2, 0, None) ** 0.45
    # Trapezius line: from the neck (|dx| ~ 0.1) down and out to the acromion.
    y_top = s.apex_y - 0.14 + 0.2 * np.clip((dx - 0.09) / 0.36, 0, None) ** 2
    torso *= np.sqrt(np.clip((f.y - y_top) / 0.1, 0, 1))
    neck = np.sqrt(np.clip(1 - (dx / 0.1) ** 2, 0, None))
    return np.maximum(torso, 0.8 * neck).astype(np.float32)


def _humeri(f: _Frame) -> np.ndarray:
    """Humeral heads at the shoulders (often partly outside the field of view)."""
    s = f.s
    dx = np.abs(f.x - s.center_x) - (s.thorax_half_width + 0.15)
    dy = f.y - (s.apex_y + 0.04)
    return _band(np.hypot(dx, dy), 0.065)


def _rib_levels(f: _Frame) -> list[float]:
    """Height (image units) of each posterior rib's medial end, top to bottom."""
    s = f.s
    n = s.rib_count
    frac = (np.arange(n) / (n - 1)) ** (1.0 / s.rib_spacing_power)
    return [float(v) for v in f.y_of_t(-0.12 + frac * 1.0)]


def _ribs(f: _Frame) -> np.ndarray:
    """Posterior ribs (arcs convex upwards from the spine, curving down at the lateral wall) and fainter, wider
    anterior ribs (sloping down from the lateral wall towards the sternum)."""
    s = f.s
    out = np.zeros_like(f.x)
    row_lo, row_hi = f.y.min(axis=1), f.y.max(axis=1)
    levels = _rib_levels(f)
    n = len(levels)
    for i, y0 in enumerate(levels):
        # Upper ribs are shorter with a tighter arc; lower ones are thicker and droop more laterally.
        reach = 0.7 + 0.3 * min(i / 3, 1)
        rise, droop = 0.035 * (1 - 0.6 * i / n), 0.45 + 0.3 * (i / n)
        b = rise / 0.45**2  # -a*dd + b*dd^2 peaks at dd = 0.45 with height `rise`
        a = 0.9 * b - 0.03 * i / n  # lower ribs slope down laterally
        y_lat = y0 - a / reach + b / reach**2 + droop * max(1 / reach - 0.55, 0) ** 2
        # Only rows the rib can reach are evaluated (the bands are thin; this is most of the speed).
        rows = np.nonzero((row_hi > y0 - rise - 0.03) & (row_lo < y_lat + 0.25))[0]
        if not rows.size:
            continue
        sl = slice(rows[0], rows[-1] + 1)
        x, y = f.x[sl], f.y[sl]
        d = np.abs(x - s.center_x) / s.thorax_half_width  # 0 at the spine, 1 at the inner rib margin
        fade = np.clip((1.15 - d) / 0.08, 0, 1) * np.clip((s.cp_y + 0.06 - y) / 0.08, 0, 1)
        dd = d / reach
        lat = np.clip(dd - 0.55, 0, None)
        yc = y0 - a * dd + b * dd**2 + droop * lat**2
        slope = (-a + 2 * b * dd + 2 * droop * lat) / (reach * s.thorax_half_width)
        dist = np.abs(y - yc) / np.sqrt(1 + slope**2)
        hw = 0.5 * s.rib_thickness * (0.8 + 0.4 * i / n)
        band = _band(dist, hw) * fade * np.clip((d - 0.08) / 0.05, 0, 1)
        # Anterior rib: joins the posterior arc at the lateral wall, runs down-medially to the costal cartilage.
        ya = y_lat + 0.2 * (1.0 - d)
        dist_a = np.abs(y - ya) / np.sqrt(1 + (0.2 / s.thorax_half_width) ** 2)
        band += 0.3 * _band(dist_a, 1.4 * hw) * np.clip((d - 0.3) / 0.15, 0, 1) * np.clip((1.02 - d) / 0.05, 0, 1)
        out[sl] += band
    return out


def _clavicles(f: _Frame) -> np.ndarray:
    """Clavicles from the sternal notch out to the acromion, crossing the lung apices."""
    s = f.s
    d = np.abs(f.x - s.center_x)
    y_med = float(f.y_of_t(s.clavicle_t))
    # Gentle S: medial third dips, lateral end rises to the acromion.
    dn = d / s.thorax_half_width
    yc = y_med - 0.07 * dn + 0.025 * np.sin(np.pi * np.clip(dn, 0, 1.2) / 1.2)
    extent = (dn > 0.14) & (dn < 1.18)
    return _band(np.abs(f.y - yc), 0.017) * extent * np.clip((1.18 - dn) / 0.05, 0, 1)


def _spine(f: _Frame) -> np.ndarray:
    """Vertebral column: bodies separated by disc spaces, with pedicles; faint through the heart."""
    s = f.s
    dx = f.x - s.center_x
    body = _band(dx, 0.045) ** 0.4  # box-like vertebral bodies
    spacing = (s.cp_y - s.apex_y) / (s.rib_count + 0.5)
    phase = (f.y - s.apex_y) / spacing
    discs = 0.75 + 0.25 * np.clip(np.abs(np.sin(np.pi * phase)) * 3, 0, 1)
    ped_y = np.abs(((phase + 0.5) % 1.0) - 0.5) * spacing
    pedicles = _band(np.hypot((np.abs(dx) - 0.028) / 0.009, ped_y / (0.3 * spacing)), 1.0)
    return body * discs + 0.5 * pedicles


def _airways(f: _Frame) -> np.ndarray:
    """Trachea down to the carina and the two main bronchi (air: negative density)."""
    s = f.s
    dx = f.x - s.center_x
    y_car = float(f.y_of_t(0.36))
    trachea = _band(dx + 0.004, 0.02) * (f.y < y_car) * np.clip((f.y + 0.02) / 0.06, 0, 1)
    bron = np.zeros_like(f.x)
    for side, ang in ((-1, 0.55), (1, 0.80)):  # the left main bronchus is longer and more horizontal
        along = (side * dx) * np.sin(ang) + (f.y - y_car) * np.cos(ang)
        perp = (side * dx) * np.cos(ang) - (f.y - y_car) * np.sin(ang)
        bron += _band(perp, 0.013) * (along > -0.005) * (along < 0.07)
    return np.clip(trachea + bron, 0, 1)


def _vessel_tree(rng: np.random.Generator) -> np.ndarray:
    """Branches of one hilum's vascular tree as rows ``(theta0, kappa, r_start, r_end, width)``.

    A branch is the curve ``theta(r) = theta0 + kappa * (r - r_start)`` in polar coordinates around the hilum
    (theta 0 = lateral, +pi/2 = down); children leave their parent at an angle and continue outwards.
    """
    rows = []
    for _ in range(7):
        trunk = [rng.uniform(-1.2, 1.5), rng.normal(0, 1.5), 0.0, rng.uniform(0.12, 0.2), rng.uniform(0.007, 0.01)]
        rows.append(trunk)
        parents = [trunk]
        for _level in range(2):
            children = []
            for p in parents:
                for sign in (-1, 1):
                    rb = p[2] + rng.uniform(0.3, 0.8) * (p[3] - p[2])
                    th = p[0] + p[1] * (rb - p[2])
                    frac = (rb - p[2]) / (p[3] - p[2])
                    child = [th, p[1] + sign * rng.uniform(2.0, 6.0), rb, rb + rng.uniform(0.07, 0.14),
                             p[4] * (1 - 0.5 * frac) * 0.8]
                    children.append(child)
            rows += children
            parents = children
    return np.asarray(rows, dtype=np.float32)


def _vessels(f: _Frame, lungs: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vascular markings: branching, tapering trees from each hilum, evaluated on lung pixels only."""
    s = f.s
    out = np.zeros_like(f.x)
    for side, (hu, ht), lung in zip((-1, 1), _HILA_UT, lungs):
        tree = _vessel_tree(rng)
        iy, ix = np.nonzero(ndimage.binary_dilation(lung, iterations=2))
        hx, hy = s.center_x + hu * s.thorax_half_width, float(f.y_of_t(ht))
        dx, dy = f.x[iy, ix] - hx, f.y[iy, ix] - hy
        r = np.hypot(dx, dy) + np.float32(1e-6)
        # Sorting by radius turns each branch's radial extent into a contiguous slice.
        order = np.argsort(r)
        iy, ix, r, theta = iy[order], ix[order], r[order], np.arctan2(dy, side * dx)[order]
        total = 0.5 * np.exp(-((r / 0.04) ** 2))  # hilar vessels seen end-on
        for th0, kappa, r0, r1, w0 in tree.tolist():
            sel = slice(*np.searchsorted(r, [r0, r1]))
            rs = r[sel]
            prog = (rs - r0) / (r1 - r0)
            ang = (theta[sel] - th0 - kappa * (rs - r0) + np.pi) % (2 * np.pi) - np.pi
            total[sel] += _band(np.abs(ang) * rs, w0 * (1 - 0.6 * prog)) * np.sqrt(1 - prog)
        out[iy, ix] += total
    return out


def _upsample(a: np.ndarray, size: int, step: int) -> np.ndarray:
    """Bilinear upsampling of a coarse grid (spacing ``step``, offset by one cell) to ``(size, size)``.

    Gathers and weights rather than a matrix product: BLAS threads spinning on a busy machine cost more than
    the product itself."""
    pos = (np.arange(size) + 0.5) / step + 0.5  # output pixel centres in coarse-grid units
    i0 = np.clip(np.floor(pos).astype(int), 0, a.shape[0] - 2)
    w = np.clip(pos - i0, 0, 1).astype(np.float32)
    rows = a[i0] * (1 - w)[:, None] + a[i0 + 1] * w[:, None]
    return rows[:, i0] * (1 - w)[None] + rows[:, i0 + 1] * w[None]


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian random field ``(size, size)`` with correlation length ``sigma_px``.

    Wide fields are drawn on a coarse grid and upsampled bilinearly, which is much cheaper than a wide blur."""
    step = max(1, int(sigma_px / 1.5))
    low = -(-size // step) + 2 if step > 1 else size
    n = _blur(rng.standard_normal((low, low)).astype(np.float32), sigma_px / step, truncate=2.0)
    if step > 1:
        n = _upsample(n, size, step)
    return n / (n.std() + 1e-8)


# ------------------------------------------------------------------------------------------------- findings


def _effusion(f: _Frame, lung: np.ndarray, side_sign: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Fluid layer at the base of one lung up to ``fraction`` of its height, with a lateral meniscus.

    Returns the boolean mask ``(H, W)`` (inside ``lung``) and the fill weight ``(H, W)`` in [0, 1], which ramps
    up below the meniscus and extends a few pixels past the lung so the fluid has no seam at its margins.
    """
    if fraction <= 0 or not lung.any():
        return np.zeros_like(lung), np.zeros(lung.shape, np.float32)
    rows = np.nonzero(lung.any(axis=1))[0]
    top, bottom = rows[0], rows[-1]
    height = (bottom - top + 1) / f.size
    level = (bottom + 1) / f.size - fraction * height  # image-row units, at the medial side
    # Meniscus: the fluid climbs the lateral chest wall (concave upwards), more so for larger effusions.
    lat = np.clip((side_sign * f.u - 0.15) / 0.85, 0, 1)
    surface = level - (0.04 + 0.12 * fraction) * height * lat**2
    yy = (np.arange(f.size, dtype=np.float32)[:, None] + 0.5) / f.size
    depth = (yy - surface) / (0.06 * height)
    mask = lung & (depth >= 0)
    near = ndimage.binary_dilation(lung, iterations=max(2, round(3 * f.size / 128)))
    weight = np.clip(depth + 0.35, 0, 1) * near
    return mask, weight.astype(np.float32)


def _opacity_field(f: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Lobulated bump (1 at the consolidation centre, decaying outwards); thresholding it gives nested regions."""
    s = f.s
    sign = 1 if s.opacity_side == "left" else -1
    aspect = (s.cp_y - s.apex_y) / s.thorax_half_width
    du = (f.u - sign * s.opacity_u) / s.opacity_aspect
    dv = (f.t - s.opacity_t) * aspect * s.opacity_aspect
    r = np.hypot(du, dv)
    lobes = 0.7 * _smooth_noise(rng, f.size, 0.05 * f.size) + 0.3 * _smooth_noise(rng, f.size, 0.02 * f.size)
    # exp(-(r/R)^2) keeps the centre at 1; multiplicative noise away from it makes the outline lobulated.
    return np.exp(-((r / _MAX_OPACITY_RADIUS) ** 2) * (1.0 + 0.45 * np.tanh(lobes) * np.clip(r * 4, 0, 1)))


def _perihilar(f: _Frame, lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bat-wing weight ``(H, W)`` in [0, 1] (compact support around the hila, sparing the periphery; it only
    acts where there is air) and the perihilar region mask (weight > 0.25 inside the lungs)."""
    w = np.zeros_like(f.x)
    aspect = (f.s.cp_y - f.s.apex_y) / f.s.thorax_half_width
    for hu, ht in _HILA_UT:
        r2 = ((f.u - hu) / 0.55) ** 2 + ((f.t - ht) * aspect / 0.75) ** 2
        w = np.maximum(w, np.clip(1.0 - r2, 0, None) ** 2)
    return w.astype(np.float32), (w > 0.25) & lungs


# -------------------------------------------------------------------------------------------------- measures


def _target_ctr(s: CXRSubject, severity: float) -> float:
    """Severity 0 -> the subject's normal CTR, the presence threshold -> 0.5, severity 1 -> 0.68."""
    thr = CXR_PRESENCE_THRESHOLD
    if severity <= thr:
        return s.normal_ctr + (0.5 - s.normal_ctr) * severity / thr
    return 0.5 + (_MAX_CTR - 0.5) * (severity - thr) / (1.0 - thr)


# ------------------------------------------------------------------------------------------------- renderer


def render_cxr_phantom(
    severities: Mapping[str, float] | None = None,
    seed: int = 0,
    size: int = 128,
    subject: CXRSubject | None = None,
    effusion_side: str | None = None,
    noise: bool = True,
) -> dict[str, Any]:
    """Render one PA chest radiograph phantom and its ground truth.

    Args:
        severities: ``{finding: severity in [0, 1]}`` for names in :data:`CXR_FINDINGS` (``"pleural_effusion"`` and
            other case/underscore variants accepted); missing findings are 0 (absent).
        seed: Subject seed: anatomy, texture and noise. Ignored when ``subject`` is given.
        size: Output is ``(size, size)``; at least 32. Anatomy is defined in normalised units, so a seed gives the
            same anatomy and findings at every size (texture and noise are drawn per size).
        subject: A subject from :func:`sample_cxr_subject` (to edit anatomy with ``dataclasses.replace``).
        effusion_side: ``"right"``, ``"left"`` (patient sides; left = image right) or ``"bilateral"``; None: the
            subject's.
        noise: Add quantum noise (the same noise field at every severity of a subject).

    Returns:
        dict: ``image``: ``(size, size)`` float32 in [0, 1] (bright = dense); ``masks``: ``{lungs, heart, thorax,
            effusion, opacity, perihilar, bones}`` boolean ``(size, size)`` (bones: ribs, spine, clavicles, humeral
            heads); ``report``: PIE prompt; ``severity``:
            ``{finding: float}``; ``labels``: ``{finding_key: 0/1}`` (severity > :data:`CXR_PRESENCE_THRESHOLD`);
            measured truth ``ctr``, ``heart_width_px``, ``thoracic_width_px``, ``effusion_fraction`` (max of the
            sides), ``effusion_fraction_right``, ``effusion_fraction_left``, ``opacity_area_px``,
            ``opacity_fraction`` (of the lung area), ``edema_index`` (mean added brightness in the perihilar
            region); and ``seed``, ``size``, ``effusion_side``, ``opacity_side``.
    """
    sev = _check_severities(severities)
    size = _check_size(size)
    s = subject if subject is not None else sample_cxr_subject(seed)
    if effusion_side is not None and effusion_side not in EFFUSION_SIDES:
        raise ValueError(f"`effusion_side` must be one of {list(EFFUSION_SIDES)} or None, got {effusion_side!r}.")
    side = effusion_side or s.effusion_side
    f = _frame(s, size)
    tex = np.random.default_rng(s.texture_seed)
    px = size / 128.0  # blur widths are tuned at 128 pixels

    m = _anatomy_masks(f, _target_ctr(s, sev["cardiomegaly"]))
    lungs = m["lung_right"] | m["lung_left"]
    # Texture fields are drawn unconditionally and in a fixed order, so that changing one severity never
    # changes the subject's other structures.
    vessels = _blur(_vessels(f, (m["lung_right"], m["lung_left"]), tex), 0.7 * px)
    parenchyma = _smooth_noise(tex, size, 1.2 * px)
    habitus = _smooth_noise(tex, size, 8.0 * px)
    field = _opacity_field(f, tex)
    patchy = np.tanh(parenchyma)
    fluffy = np.tanh(_smooth_noise(tex, size, 3.0 * px))

    # Densities are in display units (soft tissue ~0.8). Lung air column: thicker at the bases (larger AP
    # diameter), thinner at the apices and the lateral periphery; margins taper over a few pixels.
    lung_soft = _blur(lungs, 0.8 * px)
    taper = np.clip(_blur(lungs, 2.0 * px) * 1.6 - 0.3, 0, 1)
    column = 0.3 + 0.14 * np.clip(f.t, 0, 1) - 0.1 * np.clip(np.abs(f.u) - 0.5, 0, 1)
    air = np.maximum(lung_soft, taper) * taper * column

    # Findings replace a fraction of the air column by fluid or exudate: effusion, then consolidation, then
    # edema fill what the previous ones left.
    eff_mask = np.zeros_like(lungs)
    fill_eff = np.zeros_like(air)
    fractions = {"right": 0.0, "left": 0.0}
    f_eff = _MAX_EFFUSION * sev["pleural effusion"]
    for name, sign in (("right", -1), ("left", 1)):
        if side in (name, "bilateral") and f_eff > 0:
            mk, w = _effusion(f, m[f"lung_{name}"], sign, f_eff)
            eff_mask |= mk
            fill_eff = np.maximum(fill_eff, _blur(w, 1.0 * px))
            fractions[name] = measure_effusion_fraction(m[f"lung_{name}"], mk)
    op_mask = np.zeros_like(lungs)
    fill_op = np.zeros_like(air)
    if sev["consolidation"] > 0:
        thr = np.exp(-sev["consolidation"])  # field is exp(-(r/R)^2): the region grows like sqrt(severity)
        op_mask = (field >= thr) & lungs
        edge = np.clip((field - thr) / 0.25 + 0.3, 0, 1)
        fill_op = (0.75 + 0.15 * sev["consolidation"]) * edge * (0.85 + 0.15 * patchy) * lung_soft
    bat, perihilar = _perihilar(f, lungs)
    fill_ed = np.clip(1.1 * sev["edema"] * bat**0.7 * (0.8 + 0.2 * fluffy), 0, 1)

    # Everything that does not depend on the findings.
    static = 0.8 * _body(f) * (1 + 0.04 * habitus) + 0.03 * fill_eff * lung_soft
    static -= 0.1 * _blur(_airways(f), 1.0 * px)
    static += 0.03 * _blur(m["heart"], 1.0 * px) * np.clip(f.u + 0.9, 0, 1)  # thicker towards the apex
    ribs, spine, clavicles, humeri = _ribs(f), _spine(f), _clavicles(f), _humeri(f)
    static += 0.13 * clavicles + 0.12 * humeri
    if s.gastric_bubble:
        gx, gy = s.center_x + 0.5 * s.thorax_half_width, float(f.y_of_t(s.dome_left_t + 0.12))
        static -= 0.15 * _band(np.hypot((f.x - gx) / 0.06, (f.y - gy) / 0.03), 1.0) * (f.y > gy - 0.01)
    lung_markings = (0.12 * vessels + 0.02 * parenchyma) * lung_soft
    bones = 0.075 * ribs + 0.05 * spine

    def density(with_edema: bool) -> np.ndarray:
        kept = (1 - fill_eff) * (1 - fill_op) * (1 - fill_ed if with_edema else 1.0)
        # Vessels and parenchyma are seen against air only; bones lose contrast over dense regions.
        seen = 0.35 + 0.65 * np.clip(air * kept / 0.4, 0, 1)
        return static - air * kept + lung_markings * kept + seen * bones

    base = _display(f, density(False), px)
    image = _display(f, density(True), px) if sev["edema"] > 0 else base
    edema_index = float((image - base)[perihilar].mean()) if perihilar.any() else 0.0
    if noise:
        nrng = np.random.default_rng(s.noise_seed)
        image = image + s.noise_sigma * np.sqrt(image + 0.05) * nrng.standard_normal(image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    ctr, heart_w, thorax_w = measure_ctr(m["heart"], m["thorax"])
    lung_area = int(lungs.sum())
    labels = {finding_key(k): int(v > CXR_PRESENCE_THRESHOLD) for k, v in sev.items()}
    return {
        "image": image,
        "masks": {
            "lungs": lungs,
            "heart": m["heart"],
            "thorax": m["thorax"],
            "effusion": eff_mask,
            "opacity": op_mask,
            "perihilar": perihilar,
            "bones": (ribs + spine + clavicles + humeri) > 0.5,
        },
        "report": cxr_report(k for k, v in sev.items() if v > CXR_PRESENCE_THRESHOLD),
        "severity": sev,
        "labels": labels,
        "ctr": float(ctr),
        "heart_width_px": heart_w,
        "thoracic_width_px": thorax_w,
        "effusion_fraction": max(fractions.values()),
        "effusion_fraction_right": fractions["right"],
        "effusion_fraction_left": fractions["left"],
        "effusion_side": side if f_eff > 0 else "none",
        "opacity_area_px": int(op_mask.sum()),
        "opacity_fraction": float(op_mask.sum() / lung_area) if lung_area else 0.0,
        "opacity_side": s.opacity_side if sev["consolidation"] > 0 else "none",
        "edema_index": edema_index,
        "seed": s.seed,
        "size": size,
    }


def _display(f: _Frame, mu: np.ndarray, px: float) -> np.ndarray:
    """Density -> brightness: subject exposure, a soft shoulder above 0.7 (film-like), gamma, detector blur."""
    s = f.s
    x = np.clip(s.exposure * mu, 0, None)
    x = np.where(x < 0.7, x, 0.7 + 0.3 * np.tanh((x - 0.7) / 0.3))
    return np.clip(_blur(x, 0.55 * px), 0, 1) ** s.gamma


def render_cxr_progression(
    finding: str | Sequence[str],
    severities: Sequence[float],
    seed: int = 0,
    size: int = 128,
    base_severities: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Render one subject (same anatomy and noise) at each of ``severities`` of ``finding``.

    Args:
        finding: A name from :data:`CXR_FINDINGS`, or several that progress together.
        severities: Severities in [0, 1], one render each (e.g. ``np.linspace(0, 1, 5)``).
        base_severities: Severities of the other findings, held fixed along the sequence.
        kwargs: Forwarded to :func:`render_cxr_phantom` (``subject``, ``effusion_side``, ``noise``).

    Returns:
        list of dict: One :func:`render_cxr_phantom` result per severity: a ground-truth progression sequence.
    """
    names = [finding] if isinstance(finding, str) else list(finding)
    if not names:
        raise ValueError("`finding` must name at least one finding.")
    try:
        names = [canonical_finding(n) for n in names]
    except ValueError as e:
        raise ValueError(f"`finding`: {e}") from None
    if isinstance(severities, (str, bytes)) or len(severities) == 0:
        raise ValueError(f"`severities` must be a non-empty sequence of floats in [0, 1], got {severities!r}.")
    base = _check_severities(base_severities)
    subject = kwargs.pop("subject", None) or sample_cxr_subject(seed)
    out = []
    for v in severities:
        sev = {**base, **dict.fromkeys(names, float(v))}
        out.append(render_cxr_phantom(sev, size=size, subject=subject, **kwargs))
    return out


# --------------------------------------------------------------------------------------------------- cohort


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _csv_text(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _check_prevalence(prevalence: float | Mapping[str, float] | None) -> dict[str, float]:
    if prevalence is None:
        return dict(DEFAULT_PREVALENCE)
    if isinstance(prevalence, Mapping):
        out = dict(DEFAULT_PREVALENCE)
        for k, v in prevalence.items():
            try:
                key = canonical_finding(k)
            except ValueError as e:
                raise ValueError(f"`prevalence`: {e}") from None
            out[key] = v
    else:
        out = dict.fromkeys(CXR_FINDINGS, prevalence)
    for k, raw in out.items():
        try:
            v = out[k] = float(raw)
        except (TypeError, ValueError):
            v = float("nan")
        if not (0.0 <= v <= 1.0):
            raise ValueError(f"`prevalence[{k!r}]` must be in [0, 1], got {raw!r}.")
    return out


def _split_counts(n: int, split: Sequence[float]) -> list[int]:
    """Images per (train, validation, test): largest-remainder rounding, and every split with a positive fraction
    gets at least one image when there are enough images."""
    try:
        fr = [float(p) for p in split]
    except (TypeError, ValueError):
        fr = []
    if len(fr) != 3 or any(not (0.0 <= p <= 1.0) for p in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"`split` must be 3 fractions in [0, 1] summing to 1 (train, val, test), got {split!r}.")
    raw = [n * p for p in fr]
    counts = [int(np.floor(r)) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if fr[i] > 0 and counts[i] == 0 and n >= sum(p > 0 for p in fr):
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    return counts


def _sample_case(seed: int, index: int, prevalence: Mapping[str, float]) -> tuple[int, dict[str, float]]:
    """Subject seed and severities of cohort image ``index``; independent of the cohort's size."""
    rng = np.random.default_rng([int(seed), int(index)])
    subject_seed = int(rng.integers(0, 2**31 - 1))
    sev = {}
    for name in CXR_FINDINGS:
        present = rng.random() < prevalence[name]
        level = rng.uniform(0.35, 1.0)  # drawn either way so prevalences do not shift other draws
        sev[name] = float(level) if present else 0.0
    return subject_seed, sev


_TRUTH_KEYS = (
    "ctr",
    "heart_width_px",
    "thoracic_width_px",
    "effusion_fraction",
    "effusion_fraction_right",
    "effusion_fraction_left",
    "effusion_side",
    "opacity_area_px",
    "opacity_fraction",
    "opacity_side",
    "edema_index",
)


def _cohort_records(cid: str, r: Mapping[str, Any], subject_seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Datalist item (relative paths, labels, severities, measured truth) and CheXpert label row of one image."""
    truth = {k: (round(r[k], 6) if isinstance(r[k], float) else r[k]) for k in _TRUTH_KEYS}
    severity = {f"severity_{finding_key(k)}": round(v, 6) for k, v in r["severity"].items()}
    image_rel = f"images/{cid}.png"
    item = {
        "id": cid,
        "image": image_rel,
        "report": r["report"],
        **r["labels"],
        **severity,
        **truth,
        "seed": subject_seed,
        "masks": {name: f"masks/{cid}_{name}.png" for name in CXR_MASK_STRUCTURES},
    }
    labels = {CHEXPERT_COLUMNS[k]: f"{float(r['labels'][finding_key(k)]):.1f}" for k in CXR_FINDINGS}
    no_finding = "0.0" if any(r["labels"].values()) else "1.0"
    return item, {"Path": image_rel, **labels, "No Finding": no_finding}


def synthesize_cxr_cohort(
    output_dir: str | os.PathLike,
    num_images: int = 200,
    size: int = 128,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    prevalence: float | Mapping[str, float] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a labelled phantom chest X-ray cohort to ``output_dir``.

    Files (all written atomically; paths in the tables are relative to ``output_dir``):
    ``images/cxr-NNNN.png`` (8-bit), ``masks/cxr-NNNN_<structure>.png`` (0/255, structures
    :data:`CXR_MASK_STRUCTURES`), ``datalist.json`` (``{"training", "validation", "test"}`` lists of items with
    ``image``, ``report``, 0/1 labels keyed by :func:`finding_key`, severities and measured truth),
    ``ground_truth.csv`` (one row per image) and ``labels.csv`` (CheXpert style: ``Path`` + finding columns +
    ``No Finding``, 1.0/0.0).

    Args:
        output_dir: Target folder; created if missing. Must be empty unless ``overwrite``.
        num_images: Number of images (>= 1).
        size: Image side in pixels (>= 32).
        seed: Cohort seed; image ``i`` depends only on ``(seed, i, prevalence)``, not on ``num_images``.
        split: (train, validation, test) fractions summing to 1 (largest-remainder rounding; a split with a positive
            fraction gets at least one image when ``num_images >= 3``); the assignment is a seeded permutation.
        prevalence: Probability that each finding is present (severity drawn in [0.35, 1]); a float for all findings or
            a partial ``{finding: p}`` over the defaults ``DEFAULT_PREVALENCE``. Absent findings have severity 0.
        overwrite: Allow writing into a non-empty folder (files of the same name are replaced, others are left alone).
        progress: Show a tqdm progress bar.

    Returns:
        dict: ``output_dir``, ``num_images``, ``size``, ``seed``, ``counts`` (per split), ``prevalence`` (observed
            fraction positive per finding), ``datalist``, ``ground_truth``, ``labels`` (file paths), ``seconds``.
    """
    from monai_pie.utils.io import atomic_write_bytes, atomic_write_text

    num_images, size = _check_int(num_images, "num_images", 1), _check_size(size)
    seed = _check_int(seed, "seed", 0)
    prev = _check_prevalence(prevalence)
    counts = _split_counts(num_images, split)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`output_dir` {str(out)!r} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"`output_dir` {str(out)!r} is not empty; pass overwrite=True to write into it.")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)

    order = np.random.default_rng([int(seed), 2**31]).permutation(num_images)
    split_of = np.empty(num_images, dtype=object)
    split_of[order[: counts[0]]] = "training"
    split_of[order[counts[0] : counts[0] + counts[1]]] = "validation"
    split_of[order[counts[0] + counts[1] :]] = "test"

    it: Iterable[int] = range(num_images)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=num_images, desc="cxr phantoms", unit="img")
    start = time.perf_counter()
    datalist: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    gt_rows, label_rows = [], []
    pending: deque[Future] = deque()

    def write_png(rel: str, arr: np.ndarray) -> None:
        atomic_write_bytes(out / rel, _png_bytes(arr))

    # PNG encoding and fsync release the GIL, so two writer threads overlap them with rendering.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in it:
            subject_seed, sev = _sample_case(seed, i, prev)
            r = render_cxr_phantom(sev, seed=subject_seed, size=size)
            item, label_row = _cohort_records(f"cxr-{i:04d}", r, subject_seed)
            pending.append(pool.submit(write_png, item["image"], r["image"]))
            for name, rel in item["masks"].items():
                pending.append(pool.submit(write_png, rel, r["masks"][name]))
            while len(pending) > 64:  # bound the memory held by queued images
                pending.popleft().result()
            datalist[str(split_of[i])].append(item)
            gt_rows.append({"id": item["id"], "split": split_of[i], **{k: v for k, v in item.items() if k != "masks"}})
            label_rows.append(label_row)
        for fut in pending:
            fut.result()  # re-raise any write error
    seconds = time.perf_counter() - start

    # Tables last: a datalist on disk means every image it lists is complete.
    paths = {"datalist": out / "datalist.json", "ground_truth": out / "ground_truth.csv", "labels": out / "labels.csv"}
    atomic_write_text(paths["datalist"], json.dumps(datalist, indent=1) + "\n")
    atomic_write_text(paths["ground_truth"], _csv_text(gt_rows, list(gt_rows[0])))
    label_cols = ["Path", *(CHEXPERT_COLUMNS[k] for k in CXR_FINDINGS), "No Finding"]
    atomic_write_text(paths["labels"], _csv_text(label_rows, label_cols))
    observed = {k: float(np.mean([row[finding_key(k)] for row in gt_rows])) for k in CXR_FINDINGS}
    return {
        "output_dir": str(out),
        "num_images": num_images,
        "size": size,
        "seed": int(seed),
        "counts": dict(zip(("training", "validation", "test"), counts)),
        "prevalence": observed,
        **{k: str(v) for k, v in paths.items()},
        "seconds": seconds,
    }
