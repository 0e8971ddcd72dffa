"""Turning results into plain JSON for summaries and reports."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["json_safe", "round_rows"]


def json_safe(x: Any) -> Any:
    """Tensors, numpy values and paths -> plain JSON values (NaN and inf -> ``None``), recursively."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if torch.is_tensor(x):
        x = x.detach().cpu()
        return json_safe(x.item() if x.ndim == 0 else x.tolist())
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def round_rows(stats: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Per-round rows ``{"round": n, <statistic>: [value per batch item]}`` from ``(N, B)`` tensors (NaN -> ``None``),
    in the order of ``stats``; what ``progression.json`` stores."""
    if not stats:
        return []
    rounds = int(next(iter(stats.values())).shape[0])
    return [{"round": n + 1, **{k: json_safe([float(x) for x in v[n]]) for k, v in stats.items()}}
            for n in range(rounds)]
