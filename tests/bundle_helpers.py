"""Helpers for driving bundles from tests: config paths, CLI overrides, torchrun on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def cfg(bundle: Path, *names: str) -> list[str]:
    """Paths of ``bundle/configs/<name>`` for each name."""
    return [str(bundle / "configs" / n) for n in names]


def cli_overrides(d: dict) -> list[str]:
    """``--key value`` pairs for ``python -m monai.bundle run`` (lists and dicts as JSON)."""
    out = []
    for k, v in d.items():
        out += [f"--{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
    return out


def torchrun_bundle(configs: list[str], overrides: dict, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``monai.bundle run`` under ``torch.distributed.run --standalone`` (gloo on CPU), one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "monai.bundle", "run", "--config_file", json.dumps(configs)] + cli_overrides(overrides)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
