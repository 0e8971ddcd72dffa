"""Fingerprints of every bundle's outputs for fixed seeds, to check that a refactor changes no output.

``python tests/helpers/reference_outputs.py write`` runs each scenario with the shipped weights and stores the
fingerprints in ``tests/bundles/reference/bundle_outputs.npz``; ``tests/bundles/test_reference_outputs.py`` runs the same
scenarios and compares (within a last-bit tolerance, for other CPUs); ``... reference_outputs.py compare`` says which
files are bit-identical. The stored file was produced by the code before the bundle-workflow refactor (commit cc4d045,
with this module's scenarios); regenerate it only when a change of outputs is intended (new weights, a fixed bug), and say so.

A fingerprint per output file: the decoded array's SHA-256, shape, sum, sum of absolute values, and a strided
subsample (so a mismatch can be sized, not just detected). JSON files contribute their numeric statistics.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "bundles" / "reference" / "bundle_outputs.npz"
BUNDLES = ROOT / "bundles"
#: JSON fields compared (their numbers): the results and settings; timings, paths and fields added later are not
JSON_FIELDS = ("rounds", "params", "target", "covariates", "num_samples", "num_samples_per_prompt", "guidance_scale",
               "num_inference_steps")


def _brain_datalist(folder: Path) -> str:
    """One item with a box ROI on the example T1's grid and its own age and sex (written by the scenario, so that
    nothing extra is committed)."""
    import nibabel as nib

    example = BUNDLES / "brain_mri_progression" / "docs" / "example_t1.nii.gz"
    ref = nib.load(str(example))
    roi = np.zeros(ref.shape, np.float32)
    roi[30:70, 40:80, 30:65] = 1.0
    nib.save(nib.Nifti1Image(roi, ref.affine), str(folder / "roi.nii.gz"))
    path = folder / "brain_datalist.json"
    path.write_text(json.dumps({"test": [{"image": str(example), "roi": str(folder / "roi.nii.gz"), "age": 80.0,
                                          "sex": 1}]}))
    return str(path)


def _cxr_datalist(folder: Path) -> str:
    """Two items with the same file name in two folders (output names from the relative paths), one with its own
    prompt."""
    import shutil

    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLES / "cxr_progression" / "docs" / "example_cxr.png", folder / sub / "cxr.png")
    items = [{"image": "a/cxr.png"}, {"image": "b/cxr.png", "prompt": "A chest X-ray image, pleural effusion"}]
    path = folder / "datalist.json"
    path.write_text(json.dumps({"test": items}))
    return str(path)


def scenarios(work: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """``name -> (bundle, overrides)``; the overrides use the bundle keys of the current configs."""
    work.mkdir(parents=True, exist_ok=True)
    return {
        "brain_progression": ("brain_mri_progression", {"num_rounds": 2, "num_inference_steps": 10, "seed": 3}),
        "brain_progression_roi": ("brain_mri_progression", {"datalist_file": _brain_datalist(work), "num_rounds": 1,
                                                            "num_inference_steps": 10, "target_diagnosis": "MCI"}),
        "brain_generation": ("brain_mri_ldm", {"num_samples": 3, "num_inference_steps": 3, "seed": 1}),
        "cxr_progression": ("cxr_progression", {"num_rounds": 2, "num_inference_steps": 10}),
        "cxr_progression_datalist": ("cxr_progression", {"datalist_file": _cxr_datalist(work), "dataset_dir": str(work),
                                                         "num_rounds": 1, "num_inference_steps": 10}),
        "cxr_generation": ("cxr_text_ldm", {"prompts": ["A chest X-ray image, no finding",
                                                        "A chest X-ray image, cardiomegaly"],
                                            "num_samples_per_prompt": 2, "num_inference_steps": 3, "batch_size": 3}),
    }


def _legacy(overrides: dict[str, Any]) -> dict[str, Any]:
    """The same scenario in the keys of the configs before the refactor (``datalist`` was a JSON file path)."""
    out = dict(overrides)
    if "datalist_file" in out:
        out["datalist"] = out.pop("datalist_file")
    return out


def run_scenario(name: str, work: Path, legacy: bool = False) -> Path:
    """Run one scenario through ``monai.bundle.run`` into ``work/name``; returns the output folder."""
    from monai.bundle import run

    bundle, overrides = scenarios(work / "inputs")[name]
    if legacy:
        overrides = _legacy(overrides)
    out = work / name
    root = BUNDLES / bundle
    run(config_file=str(root / "configs" / "inference.json"), bundle_root=str(root), output_dir=str(out), **overrides)
    return out


def _array(path: Path) -> np.ndarray | None:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        return np.concatenate([np.asarray(img.dataobj, dtype=np.float64).ravel(), img.affine.ravel()])
    if name.endswith((".png", ".gif")):
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return np.concatenate([np.asarray(f.convert("RGB") if f.mode == "P" else f, np.float64).ravel()
                                   for f in ImageSequence.Iterator(im)])
    if name.endswith(".json"):
        nums: list[float] = []

        def walk(x: Any) -> None:
            if isinstance(x, dict):
                for k in sorted(x):
                    walk(x[k])
            elif isinstance(x, list):
                for v in x:
                    walk(v)
            elif isinstance(x, bool):
                nums.append(float(x))
            elif isinstance(x, (int, float)):
                nums.append(float(x))

        data = json.loads(path.read_text())
        walk({k: v for k, v in data.items() if k in JSON_FIELDS})
        return np.asarray(nums, np.float64)
    return None


def fingerprint(out: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {sha, size, sum, abs_sum, sub}}`` for every readable output file under ``out``."""
    prints = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        arr = _array(path)
        if arr is None:
            continue
        a32 = arr.astype(np.float32)
        prints[str(path.relative_to(out))] = {
            "sha": hashlib.sha256(a32.tobytes()).hexdigest(), "size": int(arr.size), "sum": float(arr.sum()),
            "abs_sum": float(np.abs(arr).sum()), "sub": a32[:: max(1, arr.size // 4000)],
        }
    return prints


def write(work: Path) -> None:
    store: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name in scenarios(work / "inputs"):
        prints = fingerprint(run_scenario(name, work))
        meta[name] = {}
        for rel, fp in prints.items():
            key = f"{name}/{rel}"
            store[key] = fp.pop("sub")
            meta[name][rel] = fp
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **store)
    print(f"wrote {REFERENCE} ({sum(len(v) for v in meta.values())} files)")


def load_reference() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    data = np.load(REFERENCE)
    meta = json.loads(bytes(data["__meta__"]).decode())
    return meta, {k: data[k] for k in data.files if k != "__meta__"}


def compare(work: Path) -> bool:
    """Run every scenario and print, per reference file, whether it is bit-identical (SHA-256 of the decoded array)
    and the largest difference on its subsample; True when all are identical."""
    meta, subs = load_reference()
    identical = True
    for name in meta:
        prints = fingerprint(run_scenario(name, work))
        for rel, want in meta[name].items():
            got = prints.get(rel)
            same = got is not None and got["sha"] == want["sha"]
            diff = float(np.abs(got["sub"] - subs[f"{name}/{rel}"]).max()) if got and got["size"] == want["size"] else None
            identical &= same
            print(f"{name}/{rel}: {'identical' if same else 'DIFFERENT'} (max subsample difference {diff})")
        for rel in sorted(set(prints) - set(meta[name])):
            print(f"{name}/{rel}: new output")
    return identical


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] not in (["write"], ["compare"]):
        sys.exit("usage: python tests/helpers/reference_outputs.py write|compare")
    with tempfile.TemporaryDirectory() as tmp:
        if sys.argv[1] == "write":
            write(Path(tmp))
        else:
            sys.exit(0 if compare(Path(tmp)) else 1)
