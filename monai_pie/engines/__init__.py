"""monai_pie.engines."""

from __future__ import annotations

__all__: list[str] = []
