"""Postprocessing of the inference workflows: results back on the input's grid, and the writers (NIfTI / 16-bit PNG
frames and change maps, the strip and GIF people look at, the JSON summary, generated samples).

Each is a MONAI dictionary transform working on one decollated item: the batch fields (``image`` as the model-grid
``MetaTensor`` with its meta data and applied operations, ``output_dir``, the item's condition fields) merged with
the prediction ``pred``. Nothing ever overwrites an input: every path is checked against the item's input files,
and every file is written atomically.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, allow_missing_keys_mode

from ..data.io import NiftiStorage, load_2d_image, read_volume, save_nifti_like, save_png16
from ..data.transforms import SCALE_HIGH, SCALE_LOW
from ..inferers.composition import bounded_change_mm
from ..utils import atomic_write_text, json_safe, round_rows
from ..visualize import frame_strip, save_gif, save_png

__all__ = [
    "OUTPUT_DTYPES",
    "ProgressionToInputGridd",
    "volume_to_input_grid",
    "as_input_nifti",
    "SaveFramesd",
    "SaveProgressionPicturesd",
    "SaveProgressionSummaryd",
    "SaveSamplesd",
]

#: item fields that hold input files; no writer may replace one
INPUT_FILE_KEYS = ("image", "roi")
#: how frames and change maps are stored: ``"input"`` frames as the input file was (its integer type and scaling, or
#: float32), changes as int16 scaled to their range; ``"int16"`` frames too as int16 scaled to their range;
#: ``"float32"`` everything as float32 (every bit kept, 2-4x the bytes)
OUTPUT_DTYPES = ("input", "int16", "float32")


def _input_path(item: Mapping[Hashable, Any], key: str = "image") -> str:
    value = item.get(key)
    meta = getattr(value, "meta", None) or {}
    return str(meta.get("filename_or_obj", value if isinstance(value, (str, os.PathLike)) else ""))


def _check_not_input(path: Path, item: Mapping[Hashable, Any]) -> Path:
    for key in INPUT_FILE_KEYS:
        src = _input_path(item, key)
        if src and Path(src).exists() and Path(src).resolve() == path.resolve():
            raise ValueError(f"writing {path} would overwrite the input {src}; choose another output_dir.")
    return path


def _output_dir(item: Mapping[Hashable, Any], key: str) -> Path:
    if item.get(key) in (None, ""):
        raise KeyError(f"the item has no {key!r}: build the dataset's data with monai_pie.data.as_items.")
    return Path(str(item[key]))


def volume_to_input_grid(d: dict, image_key: str, transform: Any,
                         volumes: torch.Tensor | Sequence[torch.Tensor]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Map model-grid differences back to the input's grid and units.

    Args:
        d: the item: ``image_key`` holds the model-grid ``MetaTensor`` with its applied operations and the intensity
            range the scaling recorded (``scale_low`` / ``scale_high``); sets ``d["input_affine"]``.
        image_key: the image key.
        transform: the preprocessing ``Compose`` whose invertible spatial steps are undone.
        volumes: ``(*model_spatial)`` differences in model-grid intensity units (a change, an anomaly map).

    Returns:
        The input volume ``(*input_spatial)`` and each of ``volumes`` on its grid, times the intensity range.
    """
    image = d[image_key]
    original = read_volume(_input_path(d, image_key))
    d["input_affine"] = np.asarray(original.affine, dtype=np.float64)
    scale = float(image.meta[SCALE_HIGH]) - float(image.meta[SCALE_LOW])
    back = []
    for volume in volumes:
        # each inverse pops the recorded operations: give it its own copy
        delta = MetaTensor(torch.as_tensor(volume)[None] * scale, meta=copy.deepcopy(dict(image.meta)),
                           applied_operations=copy.deepcopy(list(image.applied_operations)))
        with allow_missing_keys_mode(transform):  # the ROI and other keys are absent here
            delta = transform.inverse({image_key: delta})[image_key]
        delta = torch.as_tensor(delta).float()
        if tuple(delta.shape) != tuple(original.shape):
            raise RuntimeError(f"mapping back gave shape {tuple(delta.shape)}, the input has {tuple(original.shape)}.")
        back.append(delta[0].numpy())
    return original.as_tensor().float()[0].numpy(), back


class ProgressionToInputGridd(MapTransform):
    """A progression's frames back on the input's grid and in its units: ``input + map_back(frame_n - frame_0)``.

    Only the change is resampled, so voxels the edit left alone come back bit-identical (no resampling blur), and
    frame 0 is the input itself. Two ways back:

    * ``transform`` given (volumes): invert its invertible spatial steps (orientation, spacing, pad / crop) with the
      operations recorded on the item's model-grid image, and rescale by the intensity range that
      :class:`~monai_pie.data.ScaleIntensityPercentilesd` recorded;
    * no ``transform`` (radiographs): resize the change bilinearly to the input's size and clip frames to
      ``clip``.

    With ``bounded_change_mm`` (volumes) each mapped-back change is then sharpened within the input's own local
    intensity range (:func:`~monai_pie.inferers.composition.bounded_change`): a latent edit's change is as blurred as
    the autoencoder's grid, and added to the sharp input it pushes voxels past the tissue next to them (darker than
    CSF inside a widening ventricle) instead of moving the boundary. A zero change stays zero.

    Args:
        keys: the prediction key (a per-item ``ProgressionResult.batch_first()`` dict with ``frames``
            ``(N+1, C, *model_spatial)``).
        image_key: the model-grid image ``(C, *model_spatial)`` with its meta data.
        transform: the preprocessing ``Compose`` (volumes), or ``None``.
        clip: value range of input-grid frames (``None``: unclipped).
        bounded_change_mm: the blur of the change to undo, a Gaussian standard deviation in mm (about 0.4 of a latent
            voxel: 4 mm for the brain bundles' 10 mm latent grid); ``None`` keeps the plain residual. Volumes only.
        frames_key, changes_key: output keys: lists of ``(*input_spatial)`` float32 arrays, ``N+1`` frames and ``N``
            changes.
    """

    def __init__(self, keys: KeysCollection = "pred", image_key: str = "image", transform: Any = None,
                 clip: Sequence[float] | None = None, frames_key: str = "input_frames",
                 changes_key: str = "input_changes", bounded_change_mm: float | None = None) -> None:
        super().__init__(keys)
        self.image_key, self.transform = image_key, transform
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        if bounded_change_mm is not None:
            if transform is None:
                raise ValueError("`bounded_change_mm` needs volumes with a voxel size (a `transform` to map back "
                                 "with); 2D images have none.")
            if not float(bounded_change_mm) > 0:
                raise ValueError(f"`bounded_change_mm` must be > 0 (mm) or None, got {bounded_change_mm}.")
        self.bounded_change_mm = None if bounded_change_mm is None else float(bounded_change_mm)
        self.frames_key, self.changes_key = frames_key, changes_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            frames = torch.as_tensor(d[key]["frames"]).detach().float().cpu()  # (N+1, C, *model)
            changes = frames[1:, 0] - frames[0, 0]  # (N, *model)
            if self.transform is not None:
                original, back = self._volume(d, changes)
            else:
                original, back = self._image(d, changes)
            out = [original] + [original + c for c in back]
            if self.clip is not None:
                out = [out[0]] + [np.clip(f, *self.clip) for f in out[1:]]
            d[self.frames_key], d[self.changes_key] = out, back
        return d

    def _volume(self, d: dict, changes: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
        original, back = volume_to_input_grid(d, self.image_key, self.transform, changes)
        if self.bounded_change_mm is not None:
            voxel_mm = np.linalg.norm(np.asarray(d["input_affine"])[:3, :3], axis=0)
            back = [bounded_change_mm(original, c, self.bounded_change_mm, voxel_mm) for c in back]
        return original, back

    def _image(self, d: dict, changes: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
        original = load_2d_image(_input_path(d, self.image_key))
        if not len(changes):
            return original, []
        back = F.interpolate(changes[:, None], size=tuple(original.shape), mode="bilinear", align_corners=False)
        return original, list(back[:, 0].numpy())


class SaveFramesd(MapTransform):
    """Write a progression's frames on the input's grid: ``frame_00`` (the input) ... ``frame_NN``, and for volumes
    the changes ``change_01`` ... ``change_NN``.

    Volumes are written as NIfTI with the input's affine; 2D images as 16-bit PNGs (values in [0, 1]) plus the ROI
    (``roi.png``), and the final frame also as NIfTI. The final frame is written last, so it is the newest
    ``*.nii.gz`` in the folder: what 3D Slicer's bundle runner loads as the result.

    Args:
        keys: the key of the input-grid frames (from :class:`ProgressionToInputGridd`).
        changes_key: the key of the input-grid changes.
        output_dir_key: the item's output folder.
        format: ``"nifti"`` or ``"png16"``.
        roi_key: (``png16``) the model-grid ROI ``(1, H, W)`` to write as ``roi.png`` on the input's grid.
        output_dtype: (``nifti``) one of :data:`OUTPUT_DTYPES`. The default ``"input"`` stores frames at the
            input's own precision (frame 0 reads back as the input) and changes to 1 / 65535 of their range.
    """

    def __init__(self, keys: KeysCollection = "input_frames", changes_key: str = "input_changes",
                 output_dir_key: str = "output_dir", format: str = "nifti", roi_key: str | None = None,
                 output_dtype: str = "input") -> None:
        super().__init__(keys)
        if format not in ("nifti", "png16"):
            raise ValueError(f"`format` must be 'nifti' or 'png16', got {format!r}.")
        if output_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"`output_dtype` must be one of {OUTPUT_DTYPES}, got {output_dtype!r}.")
        self.changes_key, self.output_dir_key, self.format, self.roi_key = changes_key, output_dir_key, format, roi_key
        self.output_dtype = output_dtype

    def storages(self, source: str) -> tuple[NiftiStorage, NiftiStorage]:
        """``(frames, changes)`` storage for an input file ``source``."""
        if self.output_dtype == "float32":
            return NiftiStorage(), NiftiStorage()
        scaled = NiftiStorage("int16")
        return (NiftiStorage.like(source) if self.output_dtype == "input" else scaled), scaled

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        out = _output_dir(d, self.output_dir_key)
        for key in self.key_iterator(d):
            frames, paths = d[key], []
            if self.format == "nifti":
                affine = d["input_affine"]
                frame_storage, change_storage = self.storages(_input_path(d, "image"))
                for n, change in enumerate(d[self.changes_key], start=1):
                    save_nifti_like(change, affine, _check_not_input(out / f"change_{n:02d}.nii.gz", d), change_storage)
                for n, frame in enumerate(frames):
                    target = _check_not_input(out / f"frame_{n:02d}.nii.gz", d)
                    paths.append(str(save_nifti_like(frame, affine, target, frame_storage)))
            else:
                for n, frame in enumerate(frames):
                    paths.append(str(save_png16(frame, _check_not_input(out / f"frame_{n:02d}.png", d))))
                if self.roi_key is not None and self.roi_key in d:
                    roi = torch.as_tensor(d[self.roi_key]).float().cpu()[None]  # (1, 1, H, W)
                    full = F.interpolate(roi, size=tuple(frames[0].shape), mode="nearest")[0, 0].numpy()
                    d["roi_png"] = str(save_png((full > 0.5).astype(np.uint8) * 255, _check_not_input(out / "roi.png", d)))
                final = out / f"frame_{len(frames) - 1:02d}.nii.gz"  # the result 3D Slicer loads: a one-slice volume
                array, affine = as_input_nifti(frames[-1], _input_path(d, "image"))
                save_nifti_like(array, affine, _check_not_input(final, d))
            _make_newest(out / f"frame_{len(frames) - 1:02d}.nii.gz")
            d["frame_paths"] = paths
        return d


def as_input_nifti(frame: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A 2D frame ``(H, W)`` in [0, 1] as a one-slice NIfTI array: when the input was a NIfTI of the same size, laid
    out like it (its axes, its affine) and in its intensity units (undoing the min-max scaling of
    :func:`~monai_pie.data.load_2d_image`), so it overlays the input in a viewer; else ``(W, H, 1)`` in [0, 1] with an
    identity affine, the layout ``load_2d_image`` reads back as ``(H, W)``."""
    array = frame.T[..., None]
    if source.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(source)
        if int(np.prod(img.shape)) == array.size and tuple(n for n in img.shape if n != 1) == frame.T.shape:
            data = np.asarray(img.dataobj, dtype=np.float64)
            lo, hi = float(data.min()), float(data.max())
            return (array * (hi - lo) + lo).reshape(img.shape).astype(np.float32), np.asarray(img.affine)
    return array, np.eye(4)


def _make_newest(path: Path) -> None:
    """Give ``path`` a modification time after every other ``*.nii.gz`` in its folder: files written within one
    clock tick share a timestamp, and tools pick "the newest NIfTI" as the result."""
    others = [p.stat().st_mtime_ns for p in path.parent.glob("*.nii.gz") if p != path]
    if others and path.stat().st_mtime_ns <= max(others):
        stamp = max(others) + 1_000_000  # 1 ms
        os.utime(path, ns=(stamp, stamp))


class SaveProgressionPicturesd(MapTransform):
    """Write ``progression_strip.png`` (mid-slices per frame, the change from the input in blue / red) and
    ``progression.gif`` from the input-grid frames.

    Args:
        keys: the key of the input-grid frames.
        output_dir_key: the item's output folder.
    """

    def __init__(self, keys: KeysCollection = "input_frames", output_dir_key: str = "output_dir") -> None:
        super().__init__(keys)
        self.output_dir_key = output_dir_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        out = _output_dir(d, self.output_dir_key)
        for key in self.key_iterator(d):
            frames = d[key]
            labels = ["input"] + [f"round {n}" for n in range(1, len(frames))]
            d["strip"] = str(save_png(frame_strip(frames, labels), _check_not_input(out / "progression_strip.png", d)))
            d["gif"] = str(save_gif(frames, _check_not_input(out / "progression.gif", d), labels=labels))
        return d


class SaveProgressionSummaryd(MapTransform):
    """Write ``progression.json``: the input, ROI, target, the inferer's parameters, per-round statistics, output
    paths and timings; the summary is also kept under ``summary`` for :class:`ProgressionSummary`.

    Args:
        keys: the prediction key (per-item ``ProgressionResult.batch_first()`` dict).
        inferer: the ``ProgressionInferer`` (its parameters are recorded).
        item_fields: task fields to record, ``{json field: item key}`` or ``{json field: {sub field: item key}}``
            (e.g. ``{"target": {"stage": "stage", "age": "age"}}``, ``{"prompt": "prompt"}``).
        device: recorded as where the run happened.
        output_dir_key: the item's output folder.
    """

    def __init__(self, keys: KeysCollection = "pred", inferer: Any = None,
                 item_fields: Mapping[str, Any] | None = None, device: Any = None,
                 output_dir_key: str = "output_dir") -> None:
        super().__init__(keys)
        self.inferer, self.item_fields = inferer, dict(item_fields or {})
        self.device, self.output_dir_key = device, output_dir_key

    def _field(self, d: Mapping[Hashable, Any], spec: Any) -> Any:
        if isinstance(spec, Mapping):
            return {k: self._field(d, v) for k, v in spec.items()}
        return json_safe(d.get(spec))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        out = _output_dir(d, self.output_dir_key)
        for key in self.key_iterator(d):
            pred = d[key]
            rounds = int(torch.as_tensor(pred["frames"]).shape[0]) - 1
            stats = {k: torch.as_tensor(v)[:, None] for k, v in pred.items()  # the per-round statistics, (N, 1)
                     if torch.is_tensor(v) and v.ndim == 1 and v.shape[0] == rounds}
            image = d.get("image")
            summary: dict[str, Any] = {
                "input": _input_path(d, "image"),
                "roi": str(d.get("roi_source", "")),
                **{name: self._field(d, spec) for name, spec in self.item_fields.items()},
                "image_size": list(image.shape[1:]) if image is not None else None,
                "input_shape": list(np.shape(d["input_frames"][0])) if "input_frames" in d else None,
                "params": json_safe(self.inferer.params()) if self.inferer is not None else {},
                "seed": json_safe(d.get("seed")),
                "rounds": round_rows(stats),
                "frames": d.get("frame_paths", []),
                "strip": d.get("strip"),
                "gif": d.get("gif"),
                "output_dir": str(out),
            }
            if "roi_png" in d:
                summary["roi_png"] = d["roi_png"]
            per_round = float(pred["seconds_per_round"])
            summary["seconds"] = round(per_round * len(summary["rounds"]), 2)
            summary["seconds_per_round"] = round(per_round, 3)
            if self.device is not None:
                summary["device"] = str(self.device)
            atomic_write_text(_check_not_input(out / "progression.json", d), json.dumps(summary, indent=2))
            d["summary"] = summary
        return d


class SaveSamplesd(MapTransform):
    """Write each generated sample to ``<output_dir>/<output_name>`` plus the format's extension.

    Args:
        keys: the prediction key, an image ``(C, *spatial)`` in [0, 1].
        output_dir: the run's output folder.
        format: ``"nifti"`` (volumes, with ``affine``) or ``"png16"`` (2D, 16-bit grayscale).
        affine: the model grid's voxel-to-world matrix for NIfTI (e.g. from a reference image through the
            preprocessing); identity when not given.
        name_key: the item key holding the file's name (without extension; may contain a subfolder).
        path_key: output key for the written path.
    """

    def __init__(self, keys: KeysCollection = "pred", output_dir: str | Path = ".", format: str = "nifti",
                 affine: Any = None, name_key: str = "output_name", path_key: str = "sample_path") -> None:
        super().__init__(keys)
        if format not in ("nifti", "png16"):
            raise ValueError(f"`format` must be 'nifti' or 'png16', got {format!r}.")
        self.output_dir, self.format, self.affine = Path(output_dir), format, affine
        self.name_key, self.path_key = name_key, path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).detach().float().cpu()
            name = str(d[self.name_key])
            if self.format == "nifti":
                affine = np.eye(4) if self.affine is None else self.affine
                path = save_nifti_like(x, affine, self.output_dir / f"{name}.nii.gz")
            else:
                path = save_png16(x[0].numpy(), self.output_dir / f"{name}.png")
            d[self.path_key] = str(path)
        return d
