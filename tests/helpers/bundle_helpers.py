"""Helpers for driving bundles from tests: bundle paths, tiny settings, config paths, CLI runs, torchrun on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"
BRAIN_LDM = BUNDLES / "brain_mri_ldm"
BRAIN_PROG = BUNDLES / "brain_mri_progression"
CXR_LDM = BUNDLES / "cxr_text_ldm"
CXR_PROG = BUNDLES / "cxr_progression"
TAU = BUNDLES / "tau_pet_anomaly"
ALL_BUNDLES = (BRAIN_LDM, BRAIN_PROG, CXR_LDM, CXR_PROG, TAU)

#: tiny networks (and training patches) for the brain bundles
BRAIN_TINY = {"image_size": [32, 32, 32], "ae_channels": [16, 16, 16], "unet_channels": [16, 16, 32],
              "ae_patch_size": [32, 32, 32], "num_workers": 0}
BRAIN_NET = {k: BRAIN_TINY[k] for k in ("image_size", "ae_channels", "unet_channels")}
#: tiny networks for the chest X-ray bundles
CXR_TINY = {"image_size": [32, 32], "ae_channels": [16, 16, 16], "unet_channels": [32, 32, 32], "context_dim": 16,
            "num_workers": 0}
CXR_NET = {k: CXR_TINY[k] for k in ("image_size", "ae_channels", "unet_channels", "context_dim")}
#: tiny networks for the tau bundle (full 64x80x64 grid: its brain mask and Braak regions live there)
TAU_TINY = {"ae_channels": [16, 16, 16], "unet_channels": [16, 16, 32], "ae_patch_size": [32, 40, 32],
            "num_workers": 0, "train_batch_size": 2}
TAU_NET = {k: TAU_TINY[k] for k in ("ae_channels", "unet_channels")}


def cfg(bundle: Path, *names: str) -> list[str]:
    """Paths of ``bundle/configs/<name>`` for each name."""
    return [str(bundle / "configs" / n) for n in names]


def cli_overrides(d: dict) -> list[str]:
    """``--key value`` pairs for ``python -m monai.bundle run`` (lists and dicts as JSON)."""
    out = []
    for k, v in d.items():
        out += [f"--{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
    return out


def run_cli(configs: list[str], overrides: dict, timeout: int = 300, cwd: str | None = None) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` in a subprocess, as a user runs it; one thread."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs)] + cli_overrides(overrides)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def last_line(proc: subprocess.CompletedProcess) -> str:
    """The last non-empty line the user sees (stderr, else stdout)."""
    for text in (proc.stderr, proc.stdout):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return ""


def torchrun_training(bundle: Path, stage: str, tiny: dict, dataset_dir: Path, trained: Path, tmp_path: Path,
                      **overrides) -> Path:
    """One epoch of ``train_<stage>.json`` + ``multi_gpu_train_<stage>.json`` under torchrun (2 CPU processes), from
    the autoencoder in ``trained``; returns the checkpoint folder. Fails with the run's output."""
    import shutil

    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(trained / "autoencoder.pt", ckpt / "autoencoder.pt")
    configs = cfg(bundle, "inference.json", f"train_{stage}.json", f"multi_gpu_train_{stage}.json")
    proc = torchrun_bundle(configs, dict(tiny, dataset_dir=str(dataset_dir), ckpt_dir=str(ckpt),
                                         tf_dir=str(tmp_path / "runs"), bundle_root=str(bundle), max_epochs=1,
                                         val_interval=1, **overrides))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return ckpt


def torchrun_bundle(configs: list[str], overrides: dict, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``monai.bundle run`` under ``torch.distributed.run --standalone`` (gloo on CPU), one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "monai.bundle", "run", "--config_file", json.dumps(configs)] + cli_overrides(overrides)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
