"""A task loaded once and run per request: what the MONAI Label app and the Slicer modules call.

:class:`TaskService` parses a bundle's ``configs/inference.json`` and loads its network with the weights once; each
request runs that bundle's own workflow (``evaluator``: preprocessing, inferer, writers) with the request's settings
and the network already in memory, in a private folder that is removed afterwards. What comes back is one file
(the final frame, every frame as a 4D NIfTI, or the generated image) and a JSON-able summary.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle_tools import bundle_dir, parse_bundle
from ..data.io import load_2d_image, save_nifti_like
from ..engines import load_network_weights
from ..utils.errors import root_cause
from .tasks import RequestError, TaskSpec, get_task

__all__ = ["TaskResult", "TaskService", "describe_parameters"]

#: errors of a run that are the request's fault (a bad image, a prompt outside the vocabulary, a value the bundle
#: rejects); anything else is the server's
_REQUEST_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError)
_NIFTI = (".nii", ".nii.gz")


@dataclass
class TaskResult:
    """What one request produced.

    Attributes:
        path: the result the request asked for (``frames="all"``: :attr:`frames`, else :attr:`final`).
        info: JSON-able summary: task, the settings used, the bundle's own summary, seconds taken.
        final: the final frame (or the frame asked for by number) of a progression, or the generated image, in a
            fresh temporary file the caller owns.
        frames: (``frames="all"``) every frame as one 4D NIfTI, a temporary file the caller owns; else ``None``.
    """

    info: dict[str, Any]
    final: Path
    frames: Path | None = None

    @property
    def path(self) -> Path:
        return self.frames if self.frames is not None else self.final

    def files(self) -> list[Path]:
        """Every file the result owns (to remove once it is sent)."""
        return [p for p in (self.final, self.frames) if p is not None]


def _is_weight_loader(handler: Any) -> bool:
    return isinstance(handler, Mapping) and str(handler.get("_target_", "")).endswith("LoadWeights")


class TaskService:
    """One served task, loaded once.

    Args:
        task: a task name from :data:`~monai_pie.serving.tasks.TASKS` or a :class:`TaskSpec`.
        bundle_root: the bundle folder (default: ``bundles/<task.bundle>`` beside the package).
        model_path: the weights (default: the bundle's ``model_path``, its shipped ``models/model.pt``).
        device: where the network runs (default: the bundle's ``device``, CUDA when available).
        compile_denoiser: run the bundle's denoiser through ``torch.compile`` (its ``compile_denoiser`` switch): the
            first request compiles, later ones are faster, which is what a long-lived server is for. A bundle
            without the switch is served uncompiled, with a warning.

    Raises:
        FileNotFoundError / ValueError / RuntimeError: missing, mismatched or corrupt weights, naming the file.
    """

    def __init__(self, task: str | TaskSpec, bundle_root: str | Path | None = None,
                 model_path: str | Path | None = None, device: str | torch.device | None = None,
                 compile_denoiser: bool = False) -> None:
        self.spec = get_task(task) if isinstance(task, str) else task
        self.root = bundle_dir(bundle_root or self.spec.bundle)
        base = parse_bundle(self.root)
        self.device = torch.device(device) if device is not None else base.get_parsed_content("device")
        self.defaults, self.bounds = _bundle_settings(self.spec, base)
        self.reference_image = base.get_parsed_content("reference_image") if base.get("reference_image") else None
        self.model_path = Path(model_path) if model_path else Path(base.get_parsed_content("model_path"))
        network = base.get_parsed_content("network_def")
        load_network_weights(network, self.model_path, f"{self.spec.bundle} model")
        self.network = network.to(self.device).eval()
        self._lock = threading.Lock()  # one request at a time on the shared network
        self.compile_denoiser = bool(compile_denoiser) and "compile_denoiser" in base.config
        if compile_denoiser and not self.compile_denoiser:
            warnings.warn(f"the {self.spec.bundle} bundle has no `compile_denoiser` switch; task {self.spec.name!r} "
                          "is served uncompiled.", stacklevel=2)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each parameter's default, range or choices and help (for ``/info/`` and the Slicer modules)."""
        return _describe(self.spec, self.defaults, self.bounds)

    def parse(self, params: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
        """The request's settings, checked, over the bundle's defaults.

        Args:
            params: parameter name -> value (numbers may be text).
            strict: unknown names are errors; otherwise (a MONAI Label request, which carries the server's own
                keys too) only names close to a parameter's are errors (a typo), the rest are ignored.
        """
        values = dict(self.defaults)
        names = {p.name for p in self.spec.parameters}
        for name, value in params.items():
            if name in names:
                values[name] = self.spec.parameter(name).parse(value, self.bounds.get(name))
            elif strict or _near_miss(name, names):
                self.spec.parameter(name)  # raises, naming the nearest parameter
        return values

    def run(self, image: str | Path | None, params: Mapping[str, Any] | None = None, strict: bool = True) -> TaskResult:
        """Run the task on ``image`` with ``params``.

        Args:
            image: the input image (progression: the image edited, NIfTI / PNG / DICOM as the bundle reads;
                brain generation: the grid the sample is placed over, default the bundle's reference image;
                text-to-image: not used).
            params: request settings (see :meth:`describe`).
            strict: see :meth:`parse`.

        Raises:
            RequestError: the request cannot be run as given; the message names the problem.
        """
        values = self.parse(params or {}, strict)
        if isinstance(values.get("frames"), int) and values["frames"] > values["num_rounds"]:
            raise RequestError(f"`frames` {values['frames']} does not exist: {values['num_rounds']} rounds give frames "
                               f"0 to {values['num_rounds']}.")
        overrides: dict[str, Any] = dict(self.spec.fixed)
        for p in self.spec.parameters:
            if p.key is not None:
                overrides[p.key] = [values[p.name]] if p.as_list else values[p.name]
        if self.spec.kind in ("progression", "anomaly"):
            overrides["image"] = str(_existing(image))
        elif self.reference_image is not None:
            overrides["reference_image"] = str(_existing(image)) if image else self.reference_image
        work = Path(tempfile.mkdtemp(prefix=f"monai_pie_{self.spec.name}_"))
        overrides.update({"output_dir": str(work), "device": self.device, "network": self.network})
        if self.compile_denoiser:
            overrides["compile_denoiser"] = True
        start = time.perf_counter()
        try:
            parser = parse_bundle(self.root, overrides)
            parser["handlers"] = [h for h in parser["handlers"] if not _is_weight_loader(h)]  # loaded once, above
            with self._lock:
                parser.get_parsed_content("evaluator").run()
            final, frames, summary = self._collect(work, values, image)
        except RequestError:
            raise
        except Exception as err:  # MONAI wraps the cause; the user's problem is the innermost error
            cause = root_cause(err)
            if isinstance(cause, _REQUEST_ERRORS):
                raise RequestError(str(cause).strip("'\"")) from err
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info = {"task": self.spec.name, "bundle": self.spec.bundle, "params": values,
                "seconds": round(time.perf_counter() - start, 3), "summary": summary}
        return TaskResult(info, final, frames)

    def _collect(self, work: Path, values: Mapping[str, Any],
                 image: str | Path | None) -> tuple[Path, Path | None, Any]:
        """Move the results out of the run folder (final frame, anomaly map or sample; the 4D frames when asked);
        read the bundle's summary."""
        if self.spec.kind == "anomaly":
            if not (work / "anomaly.nii.gz").is_file():
                raise RuntimeError(f"the {self.spec.bundle} bundle wrote no anomaly map in {work}.")
            return _take(work / "anomaly.nii.gz"), None, _read_json(work / "anomaly.json")
        if self.spec.kind == "progression":
            summary = _read_json(work / "progression.json")
            frames = sorted(work.glob("frame_*.nii.gz")) if str(image).lower().endswith(_NIFTI) else []
            frames = frames or sorted(work.glob("frame_*.png"))
            if not frames:
                raise RuntimeError(f"the {self.spec.bundle} bundle wrote no frames in {work}.")
            stacked = _stack_frames(sorted(work.glob("frame_*.png")) or frames, image) \
                if values.get("frames") == "all" else None
            chosen = values.get("frames")
            return _take(frames[chosen if isinstance(chosen, int) else -1]), stacked, summary
        samples = sorted(work.rglob("sample_*.*"))
        if not samples:
            raise RuntimeError(f"the {self.spec.bundle} bundle wrote no sample in {work}.")
        return _take(samples[0]), None, _read_json(work / "generation.json")


def _bundle_settings(spec: TaskSpec, parser: Any) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """Each parameter's default and the ranges held in the bundle config (e.g. the conditioner's age range)."""
    defaults = {}
    for p in spec.parameters:
        value = p.default if p.key is None else parser.get_parsed_content(p.key)
        defaults[p.name] = value[0] if p.as_list and p.key is not None else value
    bounds = {p.name: (float(parser[p.bounds][0]), float(parser[p.bounds][1]))
              for p in spec.parameters if isinstance(p.bounds, str)}
    return defaults, bounds


def _describe(spec: TaskSpec, defaults: Mapping[str, Any],
              bounds: Mapping[str, tuple[float, float]]) -> dict[str, dict[str, Any]]:
    out = {}
    for p in spec.parameters:
        entry: dict[str, Any] = {"type": p.kind.__name__, "default": defaults[p.name], "help": p.help}
        low_high = bounds.get(p.name, p.bounds if isinstance(p.bounds, tuple) else None)
        if low_high is not None:
            entry["range"] = list(low_high)
        if p.choices is not None:
            entry["choices"] = list(p.choices)
        out[p.name] = entry
    return out


def describe_parameters(task: str | TaskSpec, bundle_root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """:meth:`TaskService.describe` from the bundle config alone (no weights loaded)."""
    spec = get_task(task) if isinstance(task, str) else task
    defaults, bounds = _bundle_settings(spec, parse_bundle(bundle_dir(bundle_root or spec.bundle)))
    return _describe(spec, defaults, bounds)


def _near_miss(name: str, names: set[str]) -> bool:
    return bool(difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.8))


def _existing(image: str | Path | None) -> Path:
    if image is None or not Path(image).is_file():
        raise RequestError(f"image {str(image)!r} not found: give the path of an image file the server can read.")
    return Path(image)


def _read_json(path: Path) -> Any:
    """The bundle's summary without the paths inside the run folder, which is removed after the request."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not _inside(v, path.parent)}
        if isinstance(value, list):
            return [strip(v) for v in value if not _inside(v, path.parent)]
        return value

    return strip(json.loads(path.read_text())) if path.is_file() else None


def _inside(value: Any, folder: Path) -> bool:
    """A path (or a list of paths only) inside ``folder``."""
    if isinstance(value, list) and value:
        return all(_inside(v, folder) for v in value)
    return isinstance(value, str) and value.startswith(str(folder))


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def _take(path: Path) -> Path:
    """``path`` moved to a fresh temporary file (same extension) that outlives the run folder."""
    fd, target = tempfile.mkstemp(suffix=_suffix(path), prefix="monai_pie_result_")
    os.close(fd)
    shutil.move(str(path), target)
    return Path(target)


def _stack_frames(frames: list[Path], image: str | Path | None) -> Path:
    """Every frame as one 4D NIfTI ``(*spatial, T)`` (3D Slicer loads it as a sequence). Volumes keep the input's
    affine; 2D frames (PNG) are laid out as the final-frame NIfTI is (:func:`~monai_pie.engines.writers.as_input_nifti`:
    a one-slice NIfTI input's axes, affine and intensity units, else ``(W, H, 1)`` in [0, 1])."""
    import nibabel as nib

    from ..engines.writers import as_input_nifti

    if frames[0].name.endswith(_NIFTI):
        affine = nib.load(frames[0]).affine
        data = np.stack([np.asarray(nib.load(f).dataobj, dtype=np.float32) for f in frames], axis=-1)
    else:
        laid_out = [as_input_nifti(load_2d_image(f), str(image)) for f in frames]
        affine = laid_out[-1][1]
        data = np.stack([a.astype(np.float32) for a, _ in laid_out], axis=-1)
    fd, target = tempfile.mkstemp(suffix=".nii.gz", prefix="monai_pie_frames_")
    os.close(fd)
    return save_nifti_like(data, affine, target)
