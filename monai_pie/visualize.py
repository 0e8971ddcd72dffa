"""Pictures people look at: mid-slice strips and GIFs of frame sequences, labelled sample grids (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .utils import atomic_write

__all__ = ["frame_strip", "labelled_grid", "mid_slices", "save_gif", "save_png", "to_uint8"]


def to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Window ``x`` to ``[lo, hi]`` and map to 0..255."""
    return (np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)


def mid_slices(volume: np.ndarray, center: Sequence[int] | None = None) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices ``(2D arrays)`` through ``center`` of a ``(X, Y, Z)`` RAS-ish volume,
    rotated so superior/anterior point up."""
    c = [s // 2 for s in volume.shape] if center is None else list(center)
    sag = np.rot90(volume[c[0], :, :])
    cor = np.rot90(volume[:, c[1], :])
    axi = np.rot90(volume[:, :, c[2]])
    return [sag, cor, axi]


def _row(slices: list[np.ndarray], height: int) -> np.ndarray:
    resized = []
    for s in slices:
        img = Image.fromarray(s)
        w = max(1, round(img.width * height / img.height))
        resized.append(np.asarray(img.resize((w, height), Image.BILINEAR)))
    return np.concatenate(resized, axis=1)


def frame_strip(
    frames: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    height: int = 128,
    diff: bool = True,
    center: Sequence[int] | None = None,
    amplitude: float | None = None,
) -> np.ndarray:
    """One RGB picture: a row of mid-slices per frame, plus (``diff``) the change from frame 0 in blue/red.

    Args:
        frames: ``(X, Y, Z)`` volumes (or ``(H, W)`` images) sharing a grid.
        labels: a caption per frame.
        height: pixel height of each tile.
        diff: add the change from frame 0 beside each row.
        center: voxel at which the mid-slices cross (default the centre).
        amplitude: the change that shows at full colour; default the 99.9th percentile of the last frame's change
            (give one scale when the frames are different methods, not steps of one).
    """
    vols = [np.asarray(f, dtype=np.float32) for f in frames]
    lo, hi = np.percentile(vols[0], [0.5, 99.5])
    if amplitude is None:
        amplitude = float(np.percentile(np.abs(vols[-1] - vols[0]), 99.9))
    amp = max(float(amplitude), 1e-6)
    rows = []
    for i, v in enumerate(vols):
        sl = mid_slices(v, center) if v.ndim == 3 else [v]
        gray = _row([to_uint8(s, lo, hi) for s in sl], height)
        tile = np.stack([gray] * 3, axis=-1)
        if diff:
            d = mid_slices(v - vols[0], center) if v.ndim == 3 else [v - vols[0]]
            d = _row([to_uint8(s, -amp, amp) for s in d], height).astype(np.float32) / 255.0
            rgb = np.stack([np.clip(2 * d - 1, 0, 1), np.zeros_like(d), np.clip(1 - 2 * d, 0, 1)], axis=-1)
            mag = np.abs(2 * d - 1)[..., None]
            tinted = (gray[..., None] / 255.0) * (1 - mag) + rgb * mag
            tile = np.concatenate([tile, (tinted * 255).astype(np.uint8)], axis=1)
        img = Image.fromarray(tile)
        if labels is not None:
            ImageDraw.Draw(img).text((4, 2), str(labels[i]), fill=(255, 255, 0))
        rows.append(np.asarray(img))
    return np.concatenate(rows, axis=0)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W[, 3])`` uint8 picture atomically."""
    return atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"), suffix=".tmp.png")


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration_ms: int = 400,
             labels: Sequence[str] | None = None, height: int = 160, center: Sequence[int] | None = None) -> Path:
    """Animated GIF of mid-slice rows, one GIF frame per volume, looping."""
    vols = [np.asarray(f, dtype=np.float32) for f in frames]
    lo, hi = np.percentile(vols[0], [0.5, 99.5])
    pics = []
    for i, v in enumerate(vols):
        sl = mid_slices(v, center) if v.ndim == 3 else [v]
        img = Image.fromarray(_row([to_uint8(s, lo, hi) for s in sl], height)).convert("RGB")
        if labels is not None:
            ImageDraw.Draw(img).text((4, 2), str(labels[i]), fill=(255, 255, 0))
        pics.append(img)
    return atomic_write(path, lambda tmp: pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:],
                                                       duration=duration_ms, loop=0), suffix=".tmp.gif")


def labelled_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None, height: int = 96,
                  lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """One RGB picture of 2D images, one row per group, each tile ``height`` pixels square, the first tile of each
    row captioned with the group's label.

    Args:
        rows: per row, the ``(H, W)`` images (rows may differ in length; short rows are padded with black).
        labels: a caption per row.
        height: tile side in pixels.
        lo, hi: intensity window of the images.
    """
    tiles = []
    for r, images in enumerate(rows):
        row = []
        for i, img in enumerate(images):
            pic = Image.fromarray(to_uint8(np.asarray(img, dtype=np.float32), lo, hi)).resize((height, height),
                                                                                           Image.BILINEAR).convert("RGB")
            if labels is not None and i == 0:
                ImageDraw.Draw(pic).text((3, 2), str(labels[r]), fill=(255, 255, 0))
            row.append(np.asarray(pic))
        tiles.append(row)
    width = max(len(row) for row in tiles)
    blank = np.zeros((height, height, 3), np.uint8)
    return np.concatenate([np.concatenate(row + [blank] * (width - len(row)), axis=1) for row in tiles], axis=0)



def anomaly_overlay(volume: np.ndarray, amap: np.ndarray, others: Sequence[tuple[str, np.ndarray]] = (),
                    height: int = 128, amplitude: float | None = None, center: Sequence[int] | None = None) -> np.ndarray:
    """One RGB picture of an anomaly map: mid-slices of ``volume`` in grey, then the same slices with ``amap`` in a
    hot colour scale over them, then any ``others`` (e.g. the pseudo-healthy reconstruction) in the volume's window.

    Args:
        volume: ``(X, Y, Z)`` image (or ``(H, W)``).
        amap: the anomaly map on the same grid (>= 0).
        others: ``(label, volume)`` rows to add below.
        height: pixel height of each tile.
        amplitude: the map value shown at full colour; default its 99.5th percentile.
        center: voxel where the mid-slices cross; default the map's maximum (so the slices show the finding).
    """
    vol, m = np.asarray(volume, dtype=np.float32), np.clip(np.asarray(amap, dtype=np.float32), 0, None)
    if center is None and vol.ndim == 3 and m.max() > 0:
        center = [int(c) for c in np.unravel_index(int(np.argmax(m)), m.shape)]
    lo, hi = np.percentile(vol, [0.5, 99.5])
    amp = float(amplitude) if amplitude is not None else float(np.percentile(m[m > 0], 99.5)) if (m > 0).any() else 1.0
    amp = max(amp, 1e-6)

    def slices(v: np.ndarray) -> list[np.ndarray]:
        return mid_slices(v, center) if v.ndim == 3 else [v]

    gray = _row([to_uint8(s, lo, hi) for s in slices(vol)], height)
    heat = _row([to_uint8(s, 0, amp) for s in slices(m)], height).astype(np.float32) / 255.0
    hot = np.stack([np.clip(3 * heat, 0, 1), np.clip(3 * heat - 1, 0, 1), np.clip(3 * heat - 2, 0, 1)], axis=-1)
    alpha = np.clip(2 * heat, 0, 1)[..., None]
    over = (gray[..., None] / 255.0) * (1 - alpha) + hot * alpha
    rows = [("input", np.stack([gray] * 3, axis=-1)), (f"anomaly (full colour at {amp:.3g})",
                                                      (over * 255).astype(np.uint8))]
    rows += [(label, np.stack([_row([to_uint8(s, lo, hi) for s in slices(np.asarray(o, np.float32))], height)] * 3,
                              axis=-1)) for label, o in others]
    out = []
    for label, tile in rows:
        img = Image.fromarray(tile)
        ImageDraw.Draw(img).text((4, 2), label, fill=(255, 255, 0))
        out.append(np.asarray(img))
    return np.concatenate(out, axis=0)
