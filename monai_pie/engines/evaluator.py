"""The inference workflow every bundle's ``evaluator`` runs: MONAI's ``SupervisedEvaluator`` fed by a generative
inferer, with the batch preparation and the handlers that load weights, check conditions and report a summary.

A bundle's ``inference.json`` reads top to bottom: ``datalist -> preprocessing -> dataset -> dataloader ->
network -> inferer -> postprocessing (writers) -> evaluator``; tools that drive MONAI bundles (3D Slicer's bundle
runner, MONAI Label) run ``evaluator`` alone, so everything an inference needs hangs off it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from ..utils import atomic_write_text, json_safe
from ..visualize import labelled_grid, save_png
from .diffusion import collect_condition

__all__ = ["AnomalyPrepareBatch", "CheckConditions", "ConditionalPrepareBatch", "GenerationSummary",
           "GenerativeEvaluator", "ProgressionSummary"]


class GenerativeEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` for generative inferers whose prediction is a structured result.

    When the inferer returns an object with ``batch_first()`` (e.g. ``ProgressionResult``), the evaluator stores that
    batch-first dict as the prediction, so MONAI's decollation gives the postprocessing one dict per image
    (``pred["frames"]`` ``(N+1, C, *spatial)``, the per-round statistics ``(N,)``, ...). Everything else (arguments,
    handlers, postprocessing, AMP) is ``SupervisedEvaluator``'s.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # FORWARD_COMPLETED fires before MODEL_COMPLETED, where MONAI decollates
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._batch_first_prediction)

    @staticmethod
    def _batch_first_prediction(engine: Engine) -> None:
        pred = engine.state.output.get(Keys.PRED) if isinstance(engine.state.output, dict) else None
        if hasattr(pred, "batch_first"):
            engine.state.output[Keys.PRED] = pred.batch_first()


def _batch_seed(batchdata: dict, seed_key: str | None, out: dict[str, Any]) -> None:
    """Put the batch's one seed into ``out["seed"]``; a batch whose items carry different seeds is an error."""
    if seed_key is None or seed_key not in batchdata:
        return
    seeds = {int(s) for s in torch.as_tensor(batchdata[seed_key]).reshape(-1).tolist()}
    if len(seeds) != 1:
        raise ValueError(f"the items of a batch have different seeds {sorted(seeds)}; use batch size 1 for "
                         "per-item seeds.")
    out["seed"] = seeds.pop()


class ConditionalPrepareBatch:
    """Batch -> ``(inputs, None, (), kwargs)`` for a generative inferer called by ``SupervisedEvaluator``.

    With an ``image_key`` (editing: PIE progression), ``inputs`` is the image ``(B, C, *spatial)`` and the keyword
    arguments carry ``condition`` (from ``condition_keys``), ``roi_mask`` (from ``mask_key``) and ``seed``. Without one
    (generation), ``inputs`` is the condition itself: what the network's conditioner takes for ``B`` images.

    Args:
        condition_keys: batch keys of the condition, in the conditioner's order (covariates), or one text key; a
            mapping ``{conditioner name: batch key}`` reads a covariate from another field (e.g. the target stage
            of an edit from ``target_stage``, leaving the datalist's own ``stage`` alone).
        image_key: key of the image, or ``None`` for generation.
        mask_key: key of the ROI mask ``(B, 1, *spatial)``, if any.
        seed_key: key of each item's seed; a batch must share one (use batch size 1 for per-item seeds).
        source_keys: ``{conditioner name: batch key}`` of the image's own condition, passed as ``source_condition``
            (a counterfactual edit starts from it) when the batch has every one of those fields.
    """

    def __init__(self, condition_keys: Sequence[str] | Mapping[str, str] = (), image_key: str | None = "image",
                 mask_key: str | None = None, seed_key: str | None = "seed",
                 source_keys: Mapping[str, str] | None = None) -> None:
        keys = condition_keys if isinstance(condition_keys, Mapping) else {k: k for k in condition_keys}
        self.condition_keys = dict(keys)
        self.source_keys = dict(source_keys or {})
        self.image_key, self.mask_key, self.seed_key = image_key, mask_key, seed_key

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False,
                 **kwargs: Any) -> tuple[Any, None, tuple, dict[str, Any]]:
        missing = [k for k in self.condition_keys.values() if k not in batchdata]
        if missing:
            raise KeyError(f"the batch lacks condition fields {missing}; it has {sorted(batchdata)}.")
        fields = {name: batchdata[key] for name, key in self.condition_keys.items()}
        condition = collect_condition(fields, list(fields), torch.device(device or "cpu"))
        if self.image_key is None:
            return condition, None, (), {}
        image = batchdata[self.image_key].to(device, non_blocking=non_blocking)
        out: dict[str, Any] = {"condition": condition}
        if self.mask_key is not None and self.mask_key in batchdata:
            out["roi_mask"] = batchdata[self.mask_key].to(device, non_blocking=non_blocking)
        if self.source_keys and all(k in batchdata for k in self.source_keys.values()):
            source = {name: batchdata[key] for name, key in self.source_keys.items()}
            out["source_condition"] = collect_condition(source, list(source), torch.device(device or "cpu"))
        _batch_seed(batchdata, self.seed_key, out)
        return image, None, (), out


class AnomalyPrepareBatch:
    """Batch -> ``(image, None, (), kwargs)`` for :class:`~monai_pie.inferers.AnomalyInferer`: the two conditions
    (the same structure image with the healthy and the unhealthy label), the brain mask, the region labels and the
    seed.

    Args:
        healthy_label, unhealthy_label: the class numbers the model was trained with.
        image_key, structure_key, mask_key, labels_key, seed_key: batch keys (mask, labels and seed are optional).
    """

    def __init__(self, healthy_label: int = 0, unhealthy_label: int = 1, image_key: str = "image",
                 structure_key: str = "structure", mask_key: str | None = "brain_mask",
                 labels_key: str | None = "rois", seed_key: str | None = "seed") -> None:
        if healthy_label == unhealthy_label:
            raise ValueError(f"the healthy and unhealthy labels must differ, got {healthy_label} twice.")
        self.healthy_label, self.unhealthy_label = int(healthy_label), int(unhealthy_label)
        self.image_key, self.structure_key = image_key, structure_key
        self.mask_key, self.labels_key, self.seed_key = mask_key, labels_key, seed_key

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False,
                 **kwargs: Any) -> tuple[Any, None, tuple, dict[str, Any]]:
        for key in (self.image_key, self.structure_key):
            if key not in batchdata:
                raise KeyError(f"the batch lacks {key!r}; it has {sorted(batchdata)}.")
        image = batchdata[self.image_key].to(device, non_blocking=non_blocking)
        structure = batchdata[self.structure_key].to(device, non_blocking=non_blocking)
        batch = image.shape[0]

        def condition(label: int) -> dict[str, torch.Tensor]:
            return {"label": torch.full((batch,), label, dtype=torch.long, device=image.device), "structure": structure}

        out: dict[str, Any] = {"healthy": condition(self.healthy_label), "unhealthy": condition(self.unhealthy_label)}
        for arg, key in (("mask", self.mask_key), ("labels", self.labels_key)):
            if key is not None and key in batchdata:
                out[arg] = batchdata[key].to(device, non_blocking=non_blocking)
        _batch_seed(batchdata, self.seed_key, out)
        return image, None, (), out


class CheckConditions:
    """Ignite handler: run every condition of the run through the network's conditioner when the engine starts, so
    an unknown finding or modality in a prompt fails before any sampling (the conditioner's message names it).

    Attach it after the weights are loaded.

    Args:
        network: the network with the conditioner.
        conditions: the run's conditions (e.g. the list of prompts).
    """

    def __init__(self, network: torch.nn.Module, conditions: Any) -> None:
        self.network, self.conditions = network, conditions

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine | None = None) -> None:
        items = [self.conditions] if isinstance(self.conditions, str) else list(self.conditions)
        if not items:
            raise ValueError("give at least one condition, e.g. the prompt 'A chest X-ray image, cardiomegaly'.")
        for c in items:
            if isinstance(c, str) and not c.strip():
                raise ValueError(f"prompts must be non-empty strings, got {c!r}; e.g. 'A chest X-ray image, no "
                                 "finding' for a normal film.")
        network = self.network.module if hasattr(self.network, "module") else self.network
        if getattr(network, "conditioner", None) is not None:
            network.make_condition(sorted(set(items)) if all(isinstance(c, str) for c in items) else items)


def _rank() -> int | None:
    """This process's rank under ``torch.distributed``, else ``None``."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def _outputs(engine: Engine) -> list[dict]:
    """Each item of the iteration, its batch fields and its (postprocessed) outputs in one dict."""
    out, batch = engine.state.output, engine.state.batch
    outs = out if isinstance(out, list) else [out]
    batches = batch if isinstance(batch, list) and len(batch) == len(outs) else [{}] * len(outs)
    return [{**b, **o} for b, o in zip(batches, outs) if isinstance(o, dict) and isinstance(b, dict)]


class ProgressionSummary:
    """Ignite handler: collect each image's summary (``summary_key`` of the postprocessed output, written by
    :class:`~monai_pie.engines.SaveProgressionSummaryd`) and, when the run completes, print it: the whole summary for
    one image, ``{"num_images", "outputs": {name: strip}}`` for several. Under torchrun each rank reports the images
    it ran, with its ``rank`` (no collective call, so a rank left without images cannot hang the others).

    Attributes:
        summaries: the summaries of this run (this rank's), in order.
    """

    def __init__(self, summary_key: str = "summary", print_summary: bool = True) -> None:
        self.summary_key, self.print_summary = summary_key, print_summary
        self.summaries: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def reset(self, engine: Engine | None = None) -> None:
        self.summaries = []

    def collect(self, engine: Engine) -> None:
        self.summaries += [o[self.summary_key] for o in _outputs(engine) if self.summary_key in o]

    def report(self, engine: Engine | None = None) -> dict[str, Any] | None:
        if not self.summaries:
            return None
        rank = _rank()
        if len(self.summaries) == 1 and rank is None:
            report = self.summaries[0]
        else:
            report = {"num_images": len(self.summaries),
                      "outputs": {Path(s["output_dir"]).name: s["strip"] for s in self.summaries}}
            if rank is not None:
                report = {"rank": rank, **report}
        if self.print_summary:
            # under torchrun every rank shares one stdout: one line each, flushed at once (a pipe write of under
            # PIPE_BUF bytes is atomic), so the ranks' reports cannot interleave
            print(json.dumps(json_safe(report), indent=None if rank is not None else 2), flush=True)
        return report


class GenerationSummary:
    """Ignite handler: when a generation run completes, write ``generation.json`` (settings, every sample's path,
    seconds) and, with ``grid``, a picture with one row per condition group; print the summary.

    Args:
        output_dir: where the files go.
        header: settings to record first (conditions, sample counts, steps, guidance, seed, ...).
        path_key: output key holding each sample's saved path (written by :class:`SaveSamplesd`).
        group_key: item key grouping samples (e.g. the prompt index); samples are then listed per group.
        grid: also write ``grid.png`` (one row per group, labelled) from ``image_key``.
        unit: how ``seconds_per_<unit>`` names a sample (``"image"``, ``"volume"``).
        device: recorded in the summary.
    """

    def __init__(self, output_dir: str | Path, header: Mapping[str, Any] | None = None, path_key: str = "sample_path",
                 group_key: str | None = None, grid: bool = False, image_key: str = Keys.PRED, unit: str = "image",
                 device: Any = None) -> None:
        self.output_dir, self.header = Path(output_dir), dict(header or {})
        self.path_key, self.group_key, self.grid, self.image_key = path_key, group_key, grid, image_key
        self.unit, self.device = unit, device
        self.samples: list[tuple[Any, str, np.ndarray | None]] = []
        self.started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def start(self, engine: Engine | None = None) -> None:
        self.samples, self.started = [], time.perf_counter()

    def collect(self, engine: Engine) -> None:
        for o in _outputs(engine):
            group = json_safe(o.get(self.group_key)) if self.group_key else None
            picture = np.asarray(torch.as_tensor(o[self.image_key]).detach().cpu()[0]) if self.grid else None
            self.samples.append((group, str(o[self.path_key]), picture))

    def report(self, engine: Engine | None = None) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        summary = dict(json_safe(self.header))
        if self.group_key:
            groups: dict[str, list[str]] = {}
            for group, path, _ in self.samples:
                groups.setdefault(str(group), []).append(path)
            summary["samples"] = groups
        else:
            summary["samples"] = [path for _, path, _ in self.samples]
        if self.grid:
            rows: dict[str, list[np.ndarray]] = {}
            for group, _, picture in self.samples:
                rows.setdefault(str(group), []).append(picture)
            summary["grid"] = str(save_png(labelled_grid(list(rows.values()), list(rows)),
                                           self.output_dir / "grid.png"))
        summary["seconds"] = round(seconds, 2)
        summary[f"seconds_per_{self.unit}"] = round(seconds / max(len(self.samples), 1), 3)
        if self.device is not None:
            summary["device"] = str(self.device)
        atomic_write_text(self.output_dir / "generation.json", json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
        return summary
