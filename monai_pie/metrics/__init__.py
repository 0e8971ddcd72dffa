"""monai_pie.metrics."""

from __future__ import annotations

__all__: list[str] = []
