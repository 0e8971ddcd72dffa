"""The tasks a server or a 3D Slicer module offers: which bundle each runs and which of its settings a request may set.

This table is the one place that names a task's request parameters, their types and their ranges; the MONAI Label
app (:mod:`monai_pie.serving.label`) and the Slicer CLI modules (:mod:`monai_pie.serving.slicer`) are both built
from it. Defaults are not written here: they are read from each bundle's ``configs/inference.json``, so a task
behaves as ``python -m monai.bundle run`` does unless the request says otherwise.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..data.transforms import CXR_ROI_REGIONS
from ..inferers.anomaly import ANOMALY_MAPS, START_MODES
from ..inferers.progression import EDIT_MODES
from ..vocabulary import DIAGNOSES

__all__ = ["FRAMES", "TASKS", "Parameter", "RequestError", "TaskSpec", "get_task"]

#: what a progression request returns: the final frame, or every frame as one 4D NIfTI (a Slicer sequence); a frame
#: number is allowed too
FRAMES: tuple[str, ...] = ("final", "all")
_MAX_SEED = 2**31 - 1


class RequestError(ValueError):
    """A request that cannot be run as given (unknown task or parameter, wrong type, out of range, bad image).

    The message names the problem and what is allowed; servers answer it with HTTP 400 (422 for parameters)."""


@dataclass(frozen=True)
class Parameter:
    """One request parameter of a task.

    Args:
        name: the name in a request (MONAI Label ``params``) and on a Slicer command line (``--name``).
        kind: ``float``, ``int`` or ``str``.
        help: one line for the server's ``/info/`` and the Slicer module's tooltip.
        key: the bundle config id it sets (``"#"``-separated); ``None`` for an option of the serving layer.
        bounds: inclusive ``(low, high)`` for numbers; a string is a config id holding the pair (e.g. the
            conditioner's ``condition_ranges#age``), so the range is the one the model was trained on.
        choices: the allowed values, for strings and categorical numbers.
        default: used when the bundle config has no value at ``key`` (serving options).
        nullable: the bundle accepts ``null`` (e.g. ``target_stage``: the diagnosis decides); a request may send
            ``null`` or ``""``, a Slicer module a negative number.
        as_list: the config holds a list of such values (``prompts``); a request sets a one-element list.
        numbered: besides ``choices``, a whole number >= 0 is allowed (``frames``: one frame by its number).
    """

    name: str
    kind: type
    help: str
    key: str | None = None
    bounds: tuple[float, float] | str | None = None
    choices: tuple[Any, ...] | None = None
    default: Any = None
    nullable: bool = False
    as_list: bool = False
    numbered: bool = False

    def parse(self, value: Any, bounds: tuple[float, float] | None = None) -> Any:
        """``value`` converted to ``kind`` and checked, or a :class:`RequestError` naming the parameter.

        Args:
            value: what the request sent (numbers may arrive as text).
            bounds: the resolved ``(low, high)`` when :attr:`bounds` is a config id.
        """
        if self.nullable and (value is None or value == ""):
            return None
        low_high = bounds if bounds is not None else (self.bounds if isinstance(self.bounds, tuple) else None)
        if self.numbered and not isinstance(value, bool) and str(value).strip().isdigit():
            return int(str(value).strip())
        if self.kind is str:
            if not isinstance(value, str) or not value.strip():
                raise RequestError(f"`{self.name}` must be non-empty text, got {value!r}.")
            parsed: Any = value.strip()
        else:
            if isinstance(value, bool):
                raise RequestError(f"`{self.name}` must be a number, got {value!r}.")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise RequestError(f"`{self.name}` must be a number, got {value!r}.") from None
            if not math.isfinite(number):
                raise RequestError(f"`{self.name}` must be a finite number, got {value!r}.")
            if self.kind is int:
                if number != int(number):
                    raise RequestError(f"`{self.name}` must be a whole number, got {value!r}.")
                parsed = int(number)
            else:
                parsed = number
            if low_high is not None and not low_high[0] <= parsed <= low_high[1]:
                raise RequestError(f"`{self.name}` must be in [{low_high[0]:g}, {low_high[1]:g}], got {value!r}.")
        if self.choices is not None and parsed not in self.choices:
            number = " or a whole number >= 0" if self.numbered else ""
            raise RequestError(f"`{self.name}` must be one of {list(self.choices)}{number}, got {value!r}.")
        return parsed


def _sampling(rounds: bool) -> tuple[Parameter, ...]:
    """The sampler settings every task shares (and the PIE round settings when ``rounds``)."""
    shared = (
        Parameter("seed", int, "random seed: the same seed gives the same result", "seed", (0, _MAX_SEED)),
        Parameter("num_inference_steps", int, "sampler steps over the whole noise range", "num_inference_steps",
                  (1, 1000)),
        Parameter("guidance_scale", float, "classifier-free guidance (1 = none)", "guidance_scale", (0.0, 30.0)),
    )
    if not rounds:
        return shared
    return shared + (
        Parameter("num_rounds", int, "PIE rounds: frames after the input", "num_rounds", (1, 50)),
        Parameter("strength", float, "share of the noise range each round re-noises", "strength", (0.01, 1.0)),
        Parameter("edit_mode", str, "'pie' (progressive rounds) or 'counterfactual' (a null target is the "
                  "identity; see docs/pie.md)", "edit_mode", choices=EDIT_MODES),
        Parameter("frames", str, "'final': the last frame; 'all': every frame as one 4D NIfTI (a Slicer sequence); "
                  "a number: that frame (0 = the input)", default="final", choices=FRAMES, numbered=True),
    )


_BRAIN_SUBJECT = (
    Parameter("age", float, "age in years", "age", "condition_ranges#age"),
    Parameter("sex", int, "sex: 0 female, 1 male", "sex", choices=(0, 1)),
)


@dataclass(frozen=True)
class TaskSpec:
    """A served task: the bundle it runs and what a request may set.

    Args:
        name: the task's name (``/infer/<name>``, the Slicer module ``MONAIPIE<Name>``).
        bundle: the bundle folder's name under ``bundles/``.
        title: a short human title.
        description: what the task does with the image it is given.
        kind: ``"progression"`` (edits the image), ``"anomaly"`` (maps what is abnormal in it) or ``"generation"``
            (the image only places the result).
        dimension: 2 or 3 (MONAI Label's ``dimension``).
        parameters: what a request may set.
        fixed: config overrides every request gets (one sample per request, no progress bars).
    """

    name: str
    bundle: str
    title: str
    description: str
    kind: str
    dimension: int
    parameters: tuple[Parameter, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def parameter(self, name: str) -> Parameter:
        """The parameter called ``name``, or a :class:`RequestError` that suggests the nearest name."""
        for p in self.parameters:
            if p.name == name:
                return p
        names = [p.name for p in self.parameters]
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RequestError(f"task {self.name!r} has no parameter {name!r}{hint} Its parameters: {names}.")


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec(
        "brain_progression", "brain_mri_progression", "Brain MRI disease progression",
        "PIE progression of a T1 brain MRI toward a target disease stage; returns the final frame (or every frame) "
        "on the input's grid.", "progression", 3,
        (Parameter("target_diagnosis", str, "target diagnosis (used when target_stage is empty)", "target_diagnosis",
                   choices=DIAGNOSES),
         Parameter("target_stage", float, "target disease stage in [0, 1] (empty or negative: from the diagnosis)",
                   "target_stage", (0.0, 1.0), nullable=True),
         *_BRAIN_SUBJECT, *_sampling(rounds=True)),
        {"progress": False, "datalist_file": None, "roi": None}),
    TaskSpec(
        "brain_generation", "brain_mri_ldm", "Brain MRI generation",
        "A synthetic T1 brain MRI for the given age, sex and disease stage, on the model's grid placed over the "
        "image it is given.", "generation", 3,
        (Parameter("age", float, "age in years", "covariates#age", "condition_ranges#age"),
         Parameter("sex", int, "sex: 0 female, 1 male", "covariates#sex", choices=(0, 1)),
         Parameter("stage", float, "disease stage in [0, 1]", "covariates#stage", (0.0, 1.0)),
         *_sampling(rounds=False)),
        {"progress": False, "num_samples": 1, "batch_size": 1}),
    TaskSpec(
        "cxr_text_to_image", "cxr_text_ldm", "Chest X-ray from a report",
        "A synthetic chest X-ray from a report prompt; the image it is given is not used.", "generation", 2,
        (Parameter("prompt", str, "report prompt, e.g. 'A chest X-ray image, cardiomegaly'", "prompts",
                   as_list=True),
         *_sampling(rounds=False)),
        {"progress": False, "num_samples_per_prompt": 1, "batch_size": 1}),
    TaskSpec(
        "cxr_progression", "cxr_progression", "Chest X-ray progression",
        "PIE progression of a chest X-ray toward a report prompt inside a lung-field region; returns the final frame "
        "(or every frame) on the input's grid.", "progression", 2,
        (Parameter("prompt", str, "target report, e.g. 'A chest X-ray image, pleural effusion'", "prompt"),
         Parameter("roi_region", str, "where the edit may act when no mask is given", "roi_region",
                   choices=tuple(CXR_ROI_REGIONS)),
         *_sampling(rounds=True)),
        {"progress": False, "datalist_file": None, "roi": None}),
    TaskSpec(
        "tau_anomaly", "tau_pet_anomaly", "Tau PET anomaly map",
        "TauAD: where a tau PET SUVR image (in MNI space) departs from its pseudo-healthy reconstruction in a way "
        "the unhealthy model explains; returns the anomaly map on the input's grid (SUVR units) and, in the JSON, "
        "Braak-regional scores and severity.", "anomaly", 3,
        (Parameter("t0", float, "start level as a share of the noise range", "t0", (0.05, 1.0)),
         Parameter("start", str, "how the scan reaches t0: deterministic DDIM inversion or seeded partial noise",
                   "start", choices=START_MODES),
         Parameter("anomaly_map", str, "the map (see docs/validation/tau_pet.md): supported_difference, complementary "
                   "relu(L_H - L_U), healthy_excess, difference (a location prior) or healthy_residual L_H (a "
                   "baseline)", "anomaly_map", choices=ANOMALY_MAPS),
         *_sampling(rounds=False)),
        {"progress": False, "datalist_file": None}),
)}


def get_task(name: str) -> TaskSpec:
    """The task called ``name``, or a :class:`RequestError` listing the tasks."""
    if name not in TASKS:
        near = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RequestError(f"no task {name!r}{hint} Tasks: {sorted(TASKS)}.")
    return TASKS[name]
