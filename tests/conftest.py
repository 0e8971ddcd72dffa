"""Test-suite setup: the shared helpers (``tests/helpers``) are importable as ``helpers.*`` from every test module,
and the session fixtures shared by the bundle and validation tests (tiny cohorts, tiny models trained through the
bundles' own configs)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.bundle_helpers import BRAIN_LDM, BRAIN_TINY, CXR_LDM, CXR_TINY, TAU, TAU_TINY, cfg  # noqa: E402
from monai.bundle import run as bundle_run  # noqa: E402

from monai_pie.data.synthetic import (  # noqa: E402
    synthesize_brain_cohort,
    synthesize_generalist_cohort,
    synthesize_tau_cohort,
)


@pytest.fixture(scope="session")
def brain_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brain_cohort") / "brain"
    synthesize_brain_cohort(out, num_subjects=8, num_longitudinal=0, split=(0.5, 0.25, 0.25), seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def brain_trained(brain_cohort, tmp_path_factory) -> Path:
    """Both brain stages trained for one epoch with tiny networks; returns the checkpoint folder."""
    ckpt = tmp_path_factory.mktemp("brain_run") / "models"
    common = dict(BRAIN_TINY, dataset_dir=str(brain_cohort), ckpt_dir=str(ckpt), tf_dir=str(ckpt.parent / "runs"),
                  bundle_root=str(BRAIN_LDM), max_epochs=1, val_interval=1)
    bundle_run(config_file=cfg(BRAIN_LDM, "inference.json", "train_autoencoder.json"), **common)
    bundle_run(config_file=cfg(BRAIN_LDM, "inference.json", "train_diffusion.json"), **common)
    return ckpt


@pytest.fixture(scope="session")
def longitudinal_trained(brain_trained, tmp_path_factory):
    """One epoch of pair training on a tiny all-longitudinal cohort, warm-started from the tiny cross-sectional run."""
    cohort = tmp_path_factory.mktemp("long_cohort") / "brain"
    synthesize_brain_cohort(cohort, num_subjects=4, num_longitudinal=4, visits=2, split=(0.5, 0.25, 0.25), seed=5,
                            progress=False)
    ckpt = tmp_path_factory.mktemp("long_run") / "models"
    shutil.copytree(brain_trained, ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    bundle_run(config_file=cfg(BRAIN_LDM, "inference.json", "train_diffusion.json", "longitudinal.json"),
               **dict(BRAIN_TINY, dataset_dir=str(cohort), ckpt_dir=str(ckpt), tf_dir=str(ckpt.parent / "runs"),
                      bundle_root=str(BRAIN_LDM), max_epochs=1, val_interval=1, train_batch_size=4,
                      init_weights=str(ckpt / "model.pt")))
    return ckpt, before


@pytest.fixture(scope="session")
def generalist(tmp_path_factory) -> Path:
    """CXR phantoms + brain slices merged into one datalist (the MediSyn generalist setting)."""
    root = tmp_path_factory.mktemp("generalist") / "all"
    info = synthesize_generalist_cohort(root, num_cxr=10, num_brain_subjects=3, size=40, seed=1, progress=False)
    assert info["cxr_images"] == 10 and info["brain_slices"] == 3 * info["brain_images"]
    return root


@pytest.fixture(scope="session")
def cxr_trained(generalist, tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("cxr_run") / "models"
    common = dict(CXR_TINY, dataset_dir=str(generalist), ckpt_dir=str(ckpt), tf_dir=str(ckpt.parent / "runs"),
                  bundle_root=str(CXR_LDM), max_epochs=1, val_interval=1, train_batch_size=4)
    bundle_run(config_file=cfg(CXR_LDM, "inference.json", "train_autoencoder.json"), **common)
    bundle_run(config_file=cfg(CXR_LDM, "inference.json", "train_diffusion.json"), **common)
    return ckpt


@pytest.fixture(scope="session")
def tau_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tau_cohort") / "tau"
    synthesize_tau_cohort(out, num_subjects=12, num_preclinical=6, seed=5, split=(0.5, 0.25, 0.25), progress=False)
    return out


@pytest.fixture(scope="session")
def tau_trained(tau_cohort, tmp_path_factory) -> Path:
    """The tau bundle's two stages trained for one epoch with tiny networks; returns the checkpoint folder."""
    ckpt = tmp_path_factory.mktemp("tau_run") / "models"
    common = dict(TAU_TINY, dataset_dir=str(tau_cohort), ckpt_dir=str(ckpt), tf_dir=str(ckpt.parent / "runs"),
                  bundle_root=str(TAU), max_epochs=1, val_interval=1)
    bundle_run(config_file=cfg(TAU, "inference.json", "train_autoencoder.json"), **common)
    bundle_run(config_file=cfg(TAU, "inference.json", "train_diffusion.json"), **{**common, "train_batch_size": 4})
    return ckpt
