"""monai_pie.apps."""

from __future__ import annotations

__all__: list[str] = []
