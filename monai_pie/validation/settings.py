"""The PIE settings a validation runs with: one frozen object, the same for every subject and report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["SWEEP_SETTINGS", "ProgressionSettings"]

#: settings the progression bundle applies to its outputs, not the ``ProgressionInferer``
OUTPUT_SETTINGS = ("bounded_change_mm",)


@dataclass(frozen=True)
class ProgressionSettings:
    """PIE settings of a validation run (the bundle keys of the same names). They have no defaults of their own: a
    validation starts from a progression bundle's settings (:meth:`from_config`), so each value is stated once.

    Args:
        strength: noise level of each round (fraction of the schedule).
        blend_in, blend_out: per-round blend weight inside / outside the ROI.
        anchor: ``"original"`` (PIE) or ``"previous"``.
        num_rounds: editing rounds.
        num_inference_steps: steps of a full-strength run.
        guidance_scale: classifier-free guidance weight.
        noise_mode: ``"stochastic"`` or ``"ddim_inversion"``.
        n_restarts: noise draws averaged per round.
        edit_mode: ``"pie"`` or ``"counterfactual"``.
        bounded_change_mm: the frames' change sharpened within the input's local intensity range, undoing a blur
            of this many mm (``ProgressionToInputGridd``); ``None``: the plain residual. Not an inferer argument: the
            bundle applies it when it maps frames back to the input's grid.
        config: another config file of the progression bundle layered last (e.g. ``"longitudinal.json"``: another
            model, with its own weights); ``None`` runs the bundle's ``inference.json`` as it is.
    """

    strength: float
    blend_in: float
    anchor: str
    num_rounds: int
    num_inference_steps: int
    guidance_scale: float
    blend_out: float
    noise_mode: str
    n_restarts: int
    edit_mode: str = "pie"
    bounded_change_mm: float | None = None
    config: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> ProgressionSettings:
        """The settings of a progression bundle's config (a ``ConfigParser`` or its dict), with ``overrides`` that
        are not ``None`` applied."""
        names = [f.name for f in fields(cls)]
        unknown = set(overrides) - set(names)
        if unknown:
            raise ValueError(f"unknown PIE settings {sorted(unknown)}; the settings are {names}.")
        values = {n: config[n] for n in names if n != "config"}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def published(cls) -> ProgressionSettings:
        """PIE's published setting (strength 0.5, blend 0.75 / 0.01, anchor original, guidance 7.5, 10 rounds): the
        ``ProgressionInferer`` defaults, where those values are stated."""
        import inspect

        from ..inferers import ProgressionInferer

        defaults = {k: v.default for k, v in inspect.signature(ProgressionInferer).parameters.items()}
        return cls(**{f.name: defaults[f.name] for f in fields(cls) if f.name in defaults})

    def replace(self, **changes: Any) -> ProgressionSettings:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a dict (for settings files and reports; ``config`` and ``bounded_change_mm`` only when
        set, so settings frozen before they existed read the same)."""
        values = asdict(self)
        for name in ("config", *OUTPUT_SETTINGS):
            if values[name] is None:
                del values[name]
        return values

    def inferer_settings(self) -> dict[str, Any]:
        """The ``ProgressionInferer`` arguments (and progression bundle keys) among the settings."""
        values = asdict(self)
        for name in ("config", *OUTPUT_SETTINGS):
            del values[name]
        return values

    def bundle_overrides(self, bundle: str | Path) -> dict[str, Any]:
        """The settings as config overrides of the progression ``bundle``: with ``config`` set, that file's entries
        (``_comment`` keys left out) and then the settings."""
        if self.config is None:
            return {**self.inferer_settings(), **self._output_settings()}
        from ..bundle_tools import bundle_dir

        path = bundle_dir(bundle) / "configs" / self.config
        if not path.is_file():
            raise FileNotFoundError(f"the settings name the config {self.config!r}, but {path} does not exist.")
        extra = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        return {**extra, **self.inferer_settings(), **self._output_settings()}

    def _output_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OUTPUT_SETTINGS}

    def inferer(self, scheduler: Any, progress: bool = False) -> Any:
        """A ``ProgressionInferer`` with these settings."""
        from ..inferers import ProgressionInferer

        return ProgressionInferer(scheduler, progress=progress, **self.inferer_settings())

    def with_edit(self, strength: float, blend_in: float, anchor: str) -> ProgressionSettings:
        """The same settings with another ``(strength, blend_in, anchor)``."""
        return replace(self, strength=strength, blend_in=blend_in, anchor=anchor)

    @property
    def edit(self) -> tuple[float, float, str]:
        return (self.strength, self.blend_in, self.anchor)


#: ``(strength, blend_in, anchor)`` settings the validation reports compare; the first is PIE's published setting
SWEEP_SETTINGS: tuple[tuple[float, float, str], ...] = (
    (0.5, 0.75, "original"), (0.3, 0.75, "original"), (0.3, 0.3, "original"), (0.4, 0.5, "previous"),
    (0.3, 0.3, "previous"),
)

