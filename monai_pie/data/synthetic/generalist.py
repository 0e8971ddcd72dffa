"""A multi-modality 2D datalist for the MediSyn-style generalist model: CXR phantoms plus brain MRI slices.

One text-conditioned model learns several modalities when the modality is part of the prompt
("A chest X-ray image, ..." / "A brain MRI image, ..."). The brain slices are axial cuts of the synthetic brain
cohort (:func:`monai_pie.data.synthetic.synthesize_brain_cohort`) through the lateral ventricles, whose prompt names the
subject's diagnosis, so the generalist also learns a disease finding in a second modality.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...vocabulary import BRAIN_DIAGNOSIS_FINDING, BRAIN_REPORT_PREFIX
from .cxr import _png_bytes

__all__ = ["brain_slice_cohort", "merge_datalists",
           "synthesize_generalist_cohort"]

_SPLITS = ("training", "validation", "test")


def _axial_slice(volume: np.ndarray, z: int, size: int) -> np.ndarray:
    """Axial slice ``(size, size)`` in [0, 1], anterior up, patient left on image right (radiological)."""
    from PIL import Image

    sl = np.rot90(volume[:, :, z])  # (Y, X): anterior at the top
    sl = np.fliplr(sl)  # radiological convention, as on a PA chest film
    h, w = sl.shape
    side = max(h, w)  # pad to a square so the head keeps its aspect ratio
    pad = np.zeros((side, side), dtype=np.float32)
    pad[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = sl
    hi = float(np.percentile(pad[pad > 0], 99.5)) if (pad > 0).any() else 1.0
    img = Image.fromarray(np.clip(pad / max(hi, 1e-6), 0, 1).astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32).clip(0, 1)


def brain_slice_cohort(
    cohort_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    size: int = 64,
    slice_offsets_mm: Sequence[float] = (-4.0, 0.0, 4.0),
    ventricle_z_mm: float = 14.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write axial PNG slices of a synthetic brain cohort with generalist prompts and a datalist.

    Args:
        cohort_dir: A folder written by :func:`monai_pie.data.synthetic.synthesize_brain_cohort` (``datalist.json`` with
            ``diagnosis``).
        output_dir: Destination (``images/<subject>_ses-<visit>_z<k>.png``, ``datalist.json``); must be empty unless
            ``overwrite``. The cohort is never modified.
        size: Output side in pixels.
        slice_offsets_mm: Axial offsets around ``ventricle_z_mm`` (MNI z, mm); one slice each.

    Returns:
        dict: ``output_dir``, ``datalist``, ``counts`` per split, ``num_images``.
    """
    import nibabel as nib

    from monai_pie.utils.io import atomic_write_bytes, atomic_write_text

    src, out = Path(cohort_dir), Path(output_dir)
    listing = src / "datalist.json"
    if not listing.is_file():
        raise FileNotFoundError(f"{str(listing)!r} not found; is {str(src)!r} a brain cohort folder?")
    if out.resolve() == src.resolve():
        raise ValueError("`output_dir` must differ from the cohort folder (the cohort is never modified).")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"`output_dir` {str(out)!r} is not empty; pass overwrite=True to write into it.")
    (out / "images").mkdir(parents=True, exist_ok=True)
    cohort = json.loads(listing.read_text())
    datalist: dict[str, list[dict[str, Any]]] = {s: [] for s in _SPLITS}
    for split in _SPLITS:
        for item in cohort.get(split, []):
            if item.get("diagnosis") not in BRAIN_DIAGNOSIS_FINDING:
                raise ValueError(f"{item.get('image')}: diagnosis {item.get('diagnosis')!r} is not one of "
                                 f"{sorted(BRAIN_DIAGNOSIS_FINDING)}.")
            img = nib.as_closest_canonical(nib.load(str(src / item["image"])))  # RAS, so the flips below hold
            vol = np.asarray(img.dataobj, dtype=np.float32)
            inv = np.linalg.inv(img.affine)
            stem = Path(item["image"]).name.split(".")[0]
            for k, off in enumerate(slice_offsets_mm):
                z = int(round((inv @ np.array([0.0, 0.0, ventricle_z_mm + off, 1.0]))[2]))
                if not 0 <= z < vol.shape[2]:
                    raise ValueError(f"slice at z = {ventricle_z_mm + off} mm lies outside {item['image']}.")
                rel = f"images/{stem}_z{k}.png"
                atomic_write_bytes(out / rel, _png_bytes(_axial_slice(vol, z, size)))
                datalist[split].append({
                    "image": rel,
                    "report": f"{BRAIN_REPORT_PREFIX}, {BRAIN_DIAGNOSIS_FINDING[item['diagnosis']]}",
                    "modality": "brain mri",
                    "diagnosis": item["diagnosis"],
                    "stage": item.get("stage"),
                    "subject_id": item.get("subject_id"),
                })
    path = out / "datalist.json"
    atomic_write_text(path, json.dumps(datalist, indent=1) + "\n")
    counts = {s: len(v) for s, v in datalist.items()}
    return {"output_dir": str(out), "datalist": str(path), "counts": counts, "num_images": sum(counts.values())}


def merge_datalists(sources: Mapping[str, str | os.PathLike], output_path: str | os.PathLike,
                    overwrite: bool = False) -> dict[str, Any]:
    """Merge cohort datalists into one whose image paths are relative to ``output_path``'s folder.

    Items keep the fields that every item of every source has (e.g. ``image``, ``report``, ``modality``), so that
    they collate into batches; per-cohort truth stays in each cohort's own datalist.

    Args:
        sources: ``{modality name: cohort folder with datalist.json}``; each item gets a ``modality`` field.
        output_path: The merged ``datalist.json`` (written atomically; an existing file needs ``overwrite``).
    """
    from monai_pie.utils.io import atomic_write_text

    if not sources:
        raise ValueError("`sources` must name at least one cohort folder.")
    out = Path(output_path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists; pass overwrite=True to replace it.")
    base = out.parent.resolve()
    merged: dict[str, list[dict[str, Any]]] = {s: [] for s in _SPLITS}
    for modality, folder in sources.items():
        listing = Path(folder) / "datalist.json"
        if not listing.is_file():
            raise FileNotFoundError(f"{str(listing)!r} not found (source {modality!r}).")
        for split, items in json.loads(listing.read_text()).items():
            for item in items:
                rel = os.path.relpath((Path(folder) / item["image"]).resolve(), base)
                # per-cohort side files (masks) stay with their cohort: only the image path is rebased
                rest = {k: v for k, v in item.items() if k != "masks"}
                merged.setdefault(split, []).append({**rest, "image": rel, "modality": modality})
    # batches collate only fields every item has (PyTorch's collate takes its keys from the first item)
    items = [i for v in merged.values() for i in v]
    common = set.intersection(*(set(i) for i in items)) if items else set()
    merged = {s: [{k: v for k, v in i.items() if k in common} for i in items_] for s, items_ in merged.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(merged, indent=1) + "\n")
    return {"datalist": str(out), "counts": {s: len(v) for s, v in merged.items()}}


def synthesize_generalist_cohort(
    output_dir: str | os.PathLike,
    num_cxr: int = 800,
    num_brain_subjects: int = 60,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """CXR phantoms, a brain cohort and its slices, and the merged datalist, under one folder.

    Layout: ``cxr/`` (:func:`monai_pie.data.synthetic.synthesize_cxr_cohort`), ``brain/``
    (:func:`monai_pie.data.synthetic.synthesize_brain_cohort`), ``brain_slices/`` (:func:`brain_slice_cohort`) and
    ``datalist.json`` (:func:`merge_datalists`, modalities ``chest x-ray`` and ``brain mri``): train the
    ``cxr_text_ldm`` bundle with ``--dataset_dir <output_dir>``.
    """
    from .brain import synthesize_brain_cohort
    from .cxr import synthesize_cxr_cohort

    out = Path(output_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"`output_dir` {str(out)!r} is not empty; pass overwrite=True to write into it.")
    cxr = synthesize_cxr_cohort(out / "cxr", num_images=num_cxr, size=size, seed=seed, overwrite=overwrite,
                                progress=progress)
    brain = synthesize_brain_cohort(out / "brain", num_subjects=num_brain_subjects, seed=seed, overwrite=overwrite,
                                    progress=progress)
    slices = brain_slice_cohort(out / "brain", out / "brain_slices", size=size, overwrite=overwrite)
    merged = merge_datalists({"chest x-ray": out / "cxr", "brain mri": out / "brain_slices"}, out / "datalist.json",
                             overwrite=overwrite)
    return {"output_dir": str(out), "datalist": merged["datalist"], "counts": merged["counts"],
            "cxr_images": cxr["num_images"], "brain_slices": slices["num_images"],
            "brain_images": brain.get("num_images")}
