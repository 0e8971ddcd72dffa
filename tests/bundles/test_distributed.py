"""The image bundles' inference (progressions, tau anomaly maps) scales out: torchrun with multi_gpu_inference.json splits the datalist across
ranks (gloo on CPU here, NCCL on GPUs), each image written once, the same as one process writes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.bundle_helpers import (
    BRAIN_NET,
    BRAIN_PROG,
    CXR_NET,
    CXR_PROG,
    TAU,
    TAU_NET,
    cfg,
    run_cli,
    torchrun_bundle,
)
from PIL import Image


def _cxr_items(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(3):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names


def _scaled_copies(folder: Path, example: Path, prefix: str, step: float) -> list[str]:
    """Three copies of an example volume at intensity scales 1, 1 + step, 1 + 2 step."""
    img = nib.load(example)
    names = []
    for i in range(3):
        nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32) * (1 + step * i), img.affine),
                 folder / f"{prefix}_{i}.nii.gz")
        names.append(f"{prefix}_{i}.nii.gz")
    return names


def _brain_items(folder: Path) -> list[str]:
    return _scaled_copies(folder, BRAIN_PROG / "docs" / "example_t1.nii.gz", "t1", 0.1)


def _tau_items(folder: Path) -> list[str]:
    return _scaled_copies(folder, TAU / "docs" / "example_tau_suvr.nii.gz", "suvr", 0.05)


@pytest.mark.parametrize(("bundle", "net", "trained", "items", "frame"), [
    (CXR_PROG, CXR_NET, "cxr_trained", _cxr_items, "frame_01.png"),
    (BRAIN_PROG, BRAIN_NET, "brain_trained", _brain_items, "frame_01.nii.gz"),
    (TAU, TAU_NET, "tau_trained", _tau_items, "anomaly.nii.gz"),
])
def test_torchrun_splits_the_datalist_and_writes_each_image_once(bundle, net, trained, items, frame, tmp_path,
                                                                   request):
    data = tmp_path / "data"
    data.mkdir()
    names = items(data)
    (data / "list.json").write_text(json.dumps({"test": [{"image": n} for n in names]}))
    model = request.getfixturevalue(trained) / "model.pt"
    overrides = dict(net, bundle_root=str(bundle), model_path=str(model), datalist_file=str(data / "list.json"),
                     dataset_dir=str(data), num_rounds=1, num_inference_steps=4, progress=False)
    proc = torchrun_bundle(cfg(bundle, "inference.json", "multi_gpu_inference.json"),
                           dict(overrides, output_dir=str(tmp_path / "two")))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ranks = [json.loads(m) for m in re.findall(r"^\{\"rank\": .*\}$", proc.stdout, re.M)]  # one line per rank
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    per_rank = sorted(r["num_images"] for r in ranks)
    assert per_rank == [1, 2]  # 3 images over 2 ranks, none twice
    assert sorted(n for r in ranks for n in r["outputs"]) == sorted(n.split(".")[0] for n in names)
    single = run_cli(cfg(bundle, "inference.json"), dict(overrides, output_dir=str(tmp_path / "one")))
    assert single.returncode == 0, single.stderr[-2000:]
    for n in names:
        stem = n.split(".")[0]
        a, b = tmp_path / "two" / stem / frame, tmp_path / "one" / stem / frame
        if frame.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
        else:
            assert np.array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata())  # per-item seeds: same result
