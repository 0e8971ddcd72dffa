"""Bundle-level checks: every bundle's metadata verifies offline; monai_pie components resolve in configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_pie.bundle_tools import metadata_schema_path

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent for p in (ROOT / "bundles").glob("*/configs/metadata.json"))


def verify(meta: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta),
           "--filepath", str(metadata_schema_path())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_bundle_metadata_verifies_offline(bundle):
    proc = verify(bundle / "configs" / "metadata.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def minimal_metadata() -> dict:
    tensor = {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1, "spatial_shape": [64, 64],
              "dtype": "float32", "value_range": [0, 1], "is_patch_data": False, "channel_def": {"0": "image"}}
    return {
        "schema": "https://example.invalid/never-fetched.json", "version": "0.1.0", "changelog": {"0.1.0": "first"},
        "monai_version": "1.6.1", "pytorch_version": "2.13.0", "numpy_version": "2.4.6",
        "optional_packages_version": {}, "task": "t", "description": "d", "authors": "a", "copyright": "c",
        "intended_use": "research", "data_source": "synthetic",
        "network_data_format": {"inputs": {"image": tensor}, "outputs": {"pred": tensor}},
    }


def test_schema_accepts_valid_and_rejects_incomplete_metadata(tmp_path):
    from monai.bundle import verify_metadata

    good = tmp_path / "good.json"
    good.write_text(json.dumps(minimal_metadata()))
    verify_metadata(meta_file=str(good), filepath=str(metadata_schema_path()))  # no download: the file exists
    meta = minimal_metadata()
    del meta["network_data_format"]["inputs"]["image"]["channel_def"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="channel_def"):
        verify_metadata(meta_file=str(bad), filepath=str(metadata_schema_path()))


def test_progression_inferer_is_a_registered_monai_component():
    config = {
        "imports": ["$import monai_pie"],
        "scheduler": {"_target_": "DDIMScheduler", "num_train_timesteps": 1000, "clip_sample": False},
        "inferer": {"_target_": "ProgressionInferer", "scheduler": "@scheduler", "num_rounds": 3, "strength": 0.4,
                    "progress": False},
        "model": {"_target_": "LatentDiffusionModel", "unet": {"_target_": "torch.nn.Identity"}},
    }
    parser = ConfigParser(config)
    inferer = parser.get_parsed_content("inferer")
    from monai_pie import ProgressionInferer

    assert isinstance(inferer, ProgressionInferer)
    assert inferer.num_rounds == 3 and inferer.levels[0] == 399
    assert isinstance(parser.get_parsed_content("model"), torch.nn.Module)
