"""monai_pie.inferers."""

from __future__ import annotations

__all__: list[str] = []
