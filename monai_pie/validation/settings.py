"""The PIE settings a validation runs with: one frozen object, the same for every subject and report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["SWEEP_SETTINGS", "ProgressionSettings"]


@dataclass(frozen=True)
class ProgressionSettings:
    """PIE settings of a validation run (the bundle keys of the same names).

    Args:
        strength: noise level of each round (fraction of the schedule).
        blend_in, blend_out: per-round blend weight inside / outside the ROI.
        anchor: ``"original"`` (PIE) or ``"previous"``.
        num_rounds: editing rounds.
        num_inference_steps: steps of a full-strength run.
        guidance_scale: classifier-free guidance weight.
        noise_mode: ``"stochastic"`` or ``"ddim_inversion"``.
        n_restarts: noise draws averaged per round.
    """

    strength: float = 0.3
    blend_in: float = 0.3
    anchor: str = "previous"
    num_rounds: int = 8
    num_inference_steps: int = 50
    guidance_scale: float = 3.0
    blend_out: float = 0.01
    noise_mode: str = "stochastic"
    n_restarts: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The settings as bundle config overrides."""
        return asdict(self)

    def inferer(self, scheduler: Any, progress: bool = False) -> Any:
        """A ``ProgressionInferer`` with these settings."""
        from ..inferers import ProgressionInferer

        return ProgressionInferer(scheduler, progress=progress, **self.as_dict())

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
