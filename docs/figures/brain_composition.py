"""Regenerate docs/figures/brain_composition.png: one tuning subject's longitudinal edit (stage 0.1 -> 0.9) composed
as a plain residual and bounded, beside the truth, through the lateral ventricles.

    python docs/figures/brain_composition.py outputs/validation/brain_tune   # the work_dir of `--stage tune`
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_pie.data.synthetic import load_brain_template
from monai_pie.visualize import labelled_grid, save_png


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)


RUNS = {"plain": "long_strength0.5_guidance_scale2.0",
        "bounded": "long_strength0.5_guidance_scale2.0_bounded_change_mm4.0"}


def main(tune_dir: str, subject: str = "s000_n0", out: str = "docs/figures/brain_composition.png") -> None:
    work = Path(tune_dir)
    x0, x1 = (load(work / "subjects" / f"{subject}_stage{s}.nii.gz") for s in (0.1, 0.9))
    edits = {k: load(sorted((work / run / subject).glob("frame_*.nii.gz"))[-1]) for k, run in RUNS.items()}
    centre = np.argwhere(load_brain_template().ventricles).mean(0).astype(int)

    def cut(a: np.ndarray) -> np.ndarray:  # a coronal-ish window through the ventricles' centre
        return np.rot90(a[centre[0] - 30:centre[0] + 30, centre[1] - 35:centre[1] + 35, centre[2]])

    top = float(np.percentile(x0, 99.5))
    span = float(np.abs(x1 - x0).max())  # colour range +-span / 2 around grey
    rows = [[cut(a) / top for a in (x0, x1, edits["plain"], edits["bounded"])],
            [cut(a - x0) / span + 0.5 for a in (x1, edits["plain"], edits["bounded"])]]
    labels = ["input | truth | plain | bounded", "change: truth | plain | bounded"]
    save_png(labelled_grid(rows, labels, height=220), out)


if __name__ == "__main__":
    main(*sys.argv[1:])
