"""monai_pie.engines."""

from __future__ import annotations

from .sparse_schedule import SPARSE_KEEP_MODES, SparseBackpropHandler, SparseKeepSchedule

__all__: list[str] = ["SPARSE_KEEP_MODES", "SparseBackpropHandler", "SparseKeepSchedule"]
