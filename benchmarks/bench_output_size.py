"""Disk size of a brain progression's outputs: frames and change maps stored as the input was (``output_dtype="input"``,
the bundle default: the input's integer type and scaling; change maps as scaled int16) against float32.

Runs the shipped ``brain_mri_progression`` bundle (8 rounds, its defaults) on the bundle's example T1 (2 mm,
99 x 117 x 95, int16) and on the same image resampled to 1 mm (198 x 234 x 190, int16), once per storage setting,
and sums the bytes of the written NIfTI files by kind. Also reports the largest difference between the frames of the
two settings, in units of the input's intensity range.

Usage::

    python benchmarks/bench_output_size.py            # ~6 min on 2 CPU cores
    python benchmarks/bench_output_size.py --quick    # the 2 mm input only, 2 rounds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

BUNDLE = REPO / "bundles" / "brain_mri_progression"
EXAMPLE = BUNDLE / "docs" / "example_t1.nii.gz"


def one_mm_copy(path: Path, out: Path) -> Path:
    """The example T1 resampled to 1 mm (cubic), stored as scaled int16 like the original."""
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import zoom

    img = nib.load(path)
    factors = [float(z) for z in img.header.get_zooms()[:3]]
    data = zoom(np.asarray(img.dataobj, dtype=np.float32), factors, order=3)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] / np.array(factors)
    new = nib.Nifti1Image(data.astype(np.float32), affine)
    new.set_data_dtype(np.int16)  # nibabel fits the scaling
    nib.save(new, out)
    return out


def run(image: Path, output_dtype: str, out_dir: Path, rounds: int) -> dict[str, int]:
    """Run the bundle; bytes of the written frame and change-map files."""
    from monai_pie.bundle_tools import run_bundle

    run_bundle(BUNDLE, {"bundle_root": str(BUNDLE), "image": str(image), "output_dir": str(out_dir),
                        "output_dtype": output_dtype, "num_rounds": rounds, "progress": False})
    files = list(out_dir.rglob("*.nii.gz"))
    return {"frames": sum(f.stat().st_size for f in files if f.name.startswith("frame_")),
            "change maps": sum(f.stat().st_size for f in files if f.name.startswith("change_")),
            "n_frames": sum(f.name.startswith("frame_") for f in files)}


def _frames(out_dir: Path):
    import nibabel as nib
    import numpy as np

    return [np.asarray(nib.load(f).dataobj, dtype=np.float32) for f in sorted(out_dir.rglob("frame_*.nii.gz"))]


def main(argv: list[str] | None = None) -> None:
    import nibabel as nib
    import numpy as np

    from _harness import header, load_average

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "output_size.md"))
    args = parser.parse_args(argv)
    load_before = load_average()
    rounds = 2 if args.quick else 8
    tmp = Path(tempfile.mkdtemp(prefix="bench_output_size_"))
    images = [EXAMPLE] if args.quick else [EXAMPLE, one_mm_copy(EXAMPLE, tmp / "example_1mm.nii.gz")]
    inputs = {}
    for image in images:
        img = nib.load(image)
        zooms = "x".join(f"{z:g}" for z in img.header.get_zooms()[:3])
        inputs[f"{zooms} mm, {'x'.join(map(str, img.shape))}, {img.get_data_dtype()}"] = image
    lines = header(f"# Brain progression outputs on disk: stored as the input vs float32 ({rounds} rounds)", 1,
                   load_before)
    lines += ["| input | input MB | output_dtype | frames MB | change maps MB | total MB | vs float32 | "
              "max frame difference / input range |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, image in inputs.items():
        sizes = {}
        for dtype in ("float32", "input"):
            out_dir = tmp / f"{image.stem}_{dtype}"
            sizes[dtype] = run(image, dtype, out_dir, rounds)
        a, b = _frames(tmp / f"{image.stem}_float32"), _frames(tmp / f"{image.stem}_input")
        src = np.asarray(nib.load(image).dataobj, dtype=np.float32)
        diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b)) / float(np.ptp(src))
        ref = sizes["float32"]["frames"] + sizes["float32"]["change maps"]
        for dtype, s in sizes.items():
            total = s["frames"] + s["change maps"]
            lines.append(f"| {name} | {image.stat().st_size / 1e6:.1f} | {dtype} | {s['frames'] / 1e6:.1f} | "
                         f"{s['change maps'] / 1e6:.1f} | {total / 1e6:.1f} | {total / ref:.2f}x | "
                         + (f"{diff:.1e} |" if dtype == "input" else "- |"))
    lines += ["", f"Frames per run: {sizes['input']['n_frames']} (the input and {rounds} rounds); gzip-compressed "
              "NIfTI as the bundle writes them."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
