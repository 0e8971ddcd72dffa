"""Figure and volume tables of ``docs/data_brain_cohort.md`` (PIL only, no matplotlib).

Run ``python -m monai_pie.data.synthetic._brain_figure docs/figures`` to regenerate ``brain_cohort_cn_vs_ad.png`` and print
the markdown tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from monai_pie.data.synthetic.brain import (
    BrainRecipe,
    BrainTemplate,
    _child,
    _render,
    _sample_anatomy,
    load_brain_template,
    synthesize_brain_subject,
)

__all__ = ["cn_vs_ad_figure", "volume_tables"]

FIGURE_SEED = 7
SLICES_MM = {"axial z=+16 mm": (2, 16.0), "coronal y=-12 mm": (1, -12.0), "sagittal x=+24 mm": (0, 24.0)}


def _slice(vol: np.ndarray, axis: int, mm: float, template: BrainTemplate) -> np.ndarray:
    """2D display slice (superior/anterior up, subject's right on the right)."""
    idx = int(round((mm - template.affine[axis, 3]) / template.affine[axis, axis]))
    return np.take(vol, idx, axis=axis).T[::-1]


def _gray(x: np.ndarray, hi: float) -> np.ndarray:
    g = (np.clip(x / hi, 0, 1) * 255).astype(np.uint8)
    return np.stack([g] * 3, -1)


def _diverging(x: np.ndarray, hi: float) -> np.ndarray:
    """Red for positive, blue for negative, black for zero."""
    t = np.clip(x / hi, -1, 1)
    rgb = np.zeros((*x.shape, 3), dtype=np.float64)
    rgb[..., 0] = np.clip(t, 0, 1)
    rgb[..., 1] = np.clip(np.abs(t) - 0.6, 0, 1) * 2.0  # brighten strong changes towards yellow / cyan
    rgb[..., 2] = np.clip(-t, 0, 1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def cn_vs_ad_figure(path: str | Path, seed: int = FIGURE_SEED, age: float = 70.0, zoom: int = 3) -> Path:
    """Mid-slices of one subject at stage 0 (CN) and stage 1 (AD), same noise, and the difference CN - AD.

    Args:
        path: PNG to write.
        seed, age: Subject seed and age of both images.
        zoom: Nearest-neighbour upscaling of the 2 mm voxels.

    Returns:
        Path: The written PNG.
    """
    from PIL import Image, ImageDraw, ImageFont

    template = load_brain_template()
    cn = synthesize_brain_subject(seed, 0.0, age, 0, template)
    ad = synthesize_brain_subject(seed, 1.0, age, 0, template)
    rows = [
        ("CN (stage 0)", cn["image"], lambda s: _gray(s, 1.0)),
        ("AD (stage 1)", ad["image"], lambda s: _gray(s, 1.0)),
        ("CN - AD (red: signal lost)", cn["image"] - ad["image"], lambda s: _diverging(s, 0.4)),
    ]
    cell = max(template.shape) * zoom
    label_h, pad = 22, 6
    width = len(SLICES_MM) * (cell + pad) + pad
    height = len(rows) * (cell + label_h + pad) + pad + label_h
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for c, name in enumerate(SLICES_MM):
        draw.text((pad + c * (cell + pad), 4), name, fill="black", font=font)
    for r, (title, vol, colour) in enumerate(rows):
        y0 = label_h + r * (cell + label_h + pad) + pad
        draw.text((pad, y0), title, fill="black", font=font)
        for c, (axis, mm) in enumerate(SLICES_MM.values()):
            rgb = colour(_slice(vol, axis, mm, template))
            tile = Image.fromarray(rgb).resize((rgb.shape[1] * zoom, rgb.shape[0] * zoom), Image.NEAREST)
            x = pad + c * (cell + pad) + (cell - tile.width) // 2
            canvas.paste(tile, (x, y0 + label_h + (cell - tile.height) // 2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path


def volume_tables(num_subjects: int = 6, age: float = 70.0) -> str:
    """Markdown tables of ground-truth volumes vs stage (age fixed) and vs age (stage 0), mean +- sd over subjects.

    Subjects are cohort-style seeds ``SeedSequence(0, spawn_key=(1, i))``, alternating sex.
    """
    template, recipe = load_brain_template(), BrainRecipe()
    anats = [
        _sample_anatomy(
            np.random.default_rng(_child(np.random.SeedSequence(0, spawn_key=(1, i)), 0)), i % 2, template, recipe
        )
        for i in range(num_subjects)
    ]
    keys = ("gm_volume_ml", "hippocampal_gm_ml", "ventricle_volume_ml", "wm_volume_ml", "csf_volume_ml")

    def table(settings: list[tuple[float, float]], first: str) -> list[str]:
        lines = [
            f"| {first} | diagnosis | GM (ml) | hippocampal GM (ml) | ventricles (ml) | WM (ml) | CSF (ml) |",
            "|---|---|---|---|---|---|---|",
        ]
        base = None
        for stage, a in settings:
            vals = np.array(
                [
                    [_render(an, stage, a, i % 2, np.random.default_rng(0), template, recipe)["truth"][k] for k in keys]
                    for i, an in enumerate(anats)
                ]
            )
            base = vals if base is None else base
            rel = (vals / base - 1).mean(0) * 100
            cells = [
                f"{m:.1f} ± {s:.1f}" + ("" if j > 2 or base is vals else f" ({r:+.1f} %)")
                for j, (m, s, r) in enumerate(zip(vals.mean(0), vals.std(0), rel))
            ]
            label = stage if first == "stage" else a
            from monai_pie.vocabulary import diagnosis_from_stage

            lines.append(f"| {label:g} | {diagnosis_from_stage(stage)} | " + " | ".join(cells) + " |")
        return lines

    by_stage = table([(s, age) for s in (0.0, 0.25, 0.5, 0.75, 1.0)], "stage")
    by_age = table([(0.0, a) for a in (55.0, 65.0, 75.0, 90.0)], "age")
    return "\n".join(by_stage) + "\n\n" + "\n".join(by_age)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/figures")
    print(cn_vs_ad_figure(folder / "brain_cohort_cn_vs_ad.png"))
    print(volume_tables())
