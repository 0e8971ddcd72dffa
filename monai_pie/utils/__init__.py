"""Small shared utilities: input checks, atomic file writes, plain-JSON reports."""

from __future__ import annotations

from .checks import check_finite, check_in_range, check_mask, check_positive_int
from .io import atomic_save, atomic_write, atomic_write_bytes, atomic_write_text
from .report import json_safe, round_rows

__all__ = [
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "check_in_range",
    "check_mask",
    "check_positive_int",
    "json_safe",
    "round_rows",
]
