"""Postprocessing of the anomaly workflow (TauAD): the maps and reconstructions back on the input's grid and in its
units, and the writers (NIfTI, an overlay picture, a JSON with regional scores and severity).

Dictionary transforms on one decollated item, like :mod:`monai_pie.engines.writers`: the batch fields (``image``
as the model-grid ``MetaTensor``, ``output_dir``) merged with the prediction ``pred``
(``AnomalyResult.batch_first()`` for one image). Nothing overwrites an input; every file is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..data.io import save_nifti_like
from ..metrics.severity import SeverityModel
from ..utils import atomic_write_text, json_safe
from ..visualize import anomaly_overlay, save_png
from .writers import (
    _check_not_input,
    _input_path,
    _make_newest,
    _output_dir,
    volume_to_input_grid,
)

__all__ = ["AnomalyToInputGridd", "SaveAnomalyd"]

#: the volumes of an anomaly result written on the input's grid; the map last, so it is the newest NIfTI (what 3D
#: Slicer's bundle runner loads as the result)
ANOMALY_VOLUMES = ("healthy", "unhealthy", "anomaly")


class AnomalyToInputGridd(MapTransform):
    """The anomaly map and both reconstructions on the input's grid and in its units (SUVR for PET).

    The reconstructions come back as ``input + map_back(reconstruction - model-grid input)``, so voxels both
    reconstructions leave alone stay the input's; the map is mapped back itself (it is a difference already).

    Args:
        keys: the prediction key.
        transform: the preprocessing ``Compose`` whose spatial steps are inverted.
        image_key: the model-grid image with its meta data.
    """

    def __init__(self, keys: KeysCollection = "pred", transform: Any = None, image_key: str = "image") -> None:
        super().__init__(keys)
        if transform is None:
            raise ValueError("AnomalyToInputGridd needs the preprocessing `transform` to invert.")
        self.transform, self.image_key = transform, image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            x = torch.as_tensor(d[self.image_key]).detach().float().cpu()[0]
            parts = [torch.as_tensor(pred["anomaly"]).float().cpu()[0],
                     torch.as_tensor(pred["healthy"]).float().cpu()[0] - x,
                     torch.as_tensor(pred["unhealthy"]).float().cpu()[0] - x]
            original, (amap, d_h, d_u) = volume_to_input_grid(d, self.image_key, self.transform, parts)
            d["input_original"] = original
            d["input_anomaly"] = np.clip(amap, 0, None)
            d["input_healthy"], d["input_unhealthy"] = original + d_h, original + d_u
        return d


class SaveAnomalyd(MapTransform):
    """Write ``anomaly.nii.gz``, ``healthy.nii.gz``, ``unhealthy.nii.gz`` (input grid), ``anomaly_overlay.png`` and
    ``anomaly.json`` (regional scores, severity, settings); the summary is kept under ``summary``.

    Args:
        keys: the prediction key.
        region_names: the name of each region of the label map (in label order 1..R).
        severity: a :class:`SeverityModel` (or the path of its JSON) applied to the regional scores, or ``None``.
        inferer: the ``AnomalyInferer`` (its settings are recorded).
        device: recorded as where the run happened.
        output_dir_key: the item's output folder.
    """

    def __init__(self, keys: KeysCollection = "pred", region_names: Sequence[str] = (),
                 severity: SeverityModel | str | Path | None = None, inferer: Any = None, device: Any = None,
                 output_dir_key: str = "output_dir") -> None:
        super().__init__(keys)
        self.region_names = [str(n) for n in region_names]
        self.severity = SeverityModel.load(severity) if isinstance(severity, (str, Path)) else severity
        if self.severity is not None and self.region_names and list(self.severity.features) != self.region_names:
            raise ValueError(f"the severity model's features {list(self.severity.features)} are not the regions "
                             f"{self.region_names}; it was trained for another region map.")
        self.inferer, self.device, self.output_dir_key = inferer, device, output_dir_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        out = _output_dir(d, self.output_dir_key)
        affine = d["input_affine"]
        for key in self.key_iterator(d):
            pred = d[key]
            paths = {name: str(save_nifti_like(d[f"input_{name}"], affine, _check_not_input(out / f"{name}.nii.gz", d)))
                     for name in ANOMALY_VOLUMES}
            _make_newest(Path(paths["anomaly"]))
            picture = anomaly_overlay(d["input_original"], d["input_anomaly"],
                                      others=[("pseudo-healthy", d["input_healthy"])])
            paths["overlay"] = str(save_png(picture, _check_not_input(out / "anomaly_overlay.png", d)))
            summary: dict[str, Any] = {"input": _input_path(d, "image"), "outputs": paths,
                                       "params": json_safe(self.inferer.params()) if self.inferer is not None else {}}
            brain = d["input_anomaly"] > 0
            summary["anomaly_mean_in_mask"] = float(torch.as_tensor(pred["anomaly"]).float().mean()) / max(
                float(torch.as_tensor(pred["mask"]).float().mean()), 1e-12)
            summary["anomaly_voxels_above_zero"] = int(brain.sum())
            if "regional" in pred:
                scores = [float(v) for v in torch.as_tensor(pred["regional"]).reshape(-1)]
                names = self.region_names or [f"region_{i + 1}" for i in range(len(scores))]
                if len(names) != len(scores):
                    raise ValueError(f"{len(scores)} regions in the label map but {len(names)} region names.")
                summary["regional"] = dict(zip(names, scores))
                if self.severity is not None:
                    summary["severity"] = self.severity.predict(scores)
            summary["seconds"] = round(float(torch.as_tensor(pred["seconds"]).reshape(-1)[0]), 2)
            if self.device is not None:
                summary["device"] = str(self.device)
            summary["output_dir"], summary["strip"] = str(out), paths["overlay"]
            atomic_write_text(_check_not_input(out / "anomaly.json", d), json.dumps(json_safe(summary), indent=2))
            d["summary"] = summary
        return d
