"""Validations on cohorts with known ground truth, one module per task; each writes a report under docs/validation."""

from __future__ import annotations

from .settings import SWEEP_SETTINGS, ProgressionSettings

__all__ = ["SWEEP_SETTINGS", "ProgressionSettings"]
