"""monai-pie (scaffold; full exports arrive with the sampler core)."""

from __future__ import annotations

__version__ = "0.1.0"
