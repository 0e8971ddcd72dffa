"""Small shared utilities: input checks and atomic file writes."""

from __future__ import annotations

from .checks import check_finite, check_in_range, check_mask, check_positive_int
from .io import atomic_save, atomic_write, atomic_write_bytes, atomic_write_text

__all__ = [
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "check_in_range",
    "check_mask",
    "check_positive_int",
]
