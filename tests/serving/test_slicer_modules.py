"""3D Slicer CLI modules: the XML parses as Slicer Execution Model (ctk-cli), its defaults and ranges are the
bundle's, and the script runs with the command line Slicer builds from it, loading back what Slicer would load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.bundle_helpers import BRAIN_PROG, CXR_PROG

from monai_pie.data import load_2d_image
from monai_pie.serving import TASKS, describe_parameters
from monai_pie.serving.slicer import module_name, write_modules

ctk_cli = pytest.importorskip("ctk_cli")


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slicer_modules")
    write_modules(out)
    return out


def slicer_command_line(xml: Path, values: dict[str, str], index_values: list[str]) -> list[str]:
    """What Slicer's CLI logic builds: ``--longflag value`` for every flagged parameter with a value (in XML order),
    then the index parameters in index order."""
    module = ctk_cli.CLIModule(str(xml))
    args = []
    for p in module.parameters():
        if p.index is None and p.name in values:
            args += [p.longflag if p.longflag.startswith("--") else f"--{p.longflag}", str(values[p.name])]
    indexed = sorted((p for p in module.parameters() if p.index is not None), key=lambda p: int(p.index))
    assert [p.name for p in indexed] == [p.name for p in indexed][:len(index_values)] and len(indexed) == len(index_values)
    return args + index_values


def slicer_defaults(xml: Path) -> dict[str, str]:
    return {p.name: p.default for p in ctk_cli.CLIModule(str(xml)).parameters()
            if p.index is None and p.default is not None}


def run_module(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run a module's script as Slicer does, with Slicer's ``PYTHONPATH`` set: here a folder whose ``monai_pie``
    fails to import, so a script that leaked it to the Python doing the work would fail."""
    slicer_site = script.parent.parent / "slicer_site"
    (slicer_site / "monai_pie").mkdir(parents=True, exist_ok=True)
    (slicer_site / "monai_pie" / "__init__.py").write_text("raise ImportError('Slicer has no monai-pie')\n")
    env = {**os.environ, "PYTHONPATH": str(slicer_site)}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_xml_parses_with_the_bundle_defaults_and_ranges(modules, name):
    spec = TASKS[name]
    xml = modules / f"{module_name(spec)}.xml"
    module = ctk_cli.CLIModule(str(xml))
    described = describe_parameters(spec)
    params = {p.name: p for p in module.parameters()}
    assert module.category == "MONAI PIE" and "outputVolume" in params
    for p in spec.parameters:
        if p.name == "frames":
            assert ("framesFile" in params) == (spec.kind == "progression")
            continue
        got = params[p.name]
        default = described[p.name]["default"]
        if p.nullable and default is None:
            assert float(got.default) < 0  # "not set"
        else:
            assert got.default == default, p.name
        if got.constraints is not None and got.default is not None:
            assert float(got.constraints.minimum) <= float(got.default) <= float(got.constraints.maximum)
            if "range" in described[p.name] and not p.nullable:
                assert [float(got.constraints.minimum), float(got.constraints.maximum)] == described[p.name]["range"]
        if p.choices is not None and p.kind is str:
            assert list(got.elements) == list(p.choices)
    script = modules / f"{module_name(spec)}.py"
    assert os.access(script, os.X_OK)
    assert run_module(script, ["--xml"]).stdout == xml.read_text()


def test_brain_progression_module_runs_as_slicer_runs_it(modules, tmp_path):
    name = module_name(TASKS["brain_progression"])
    image = tmp_path / "input.nii.gz"
    shutil.copy(BRAIN_PROG / "docs" / "example_t1.nii.gz", image)
    values = {**slicer_defaults(modules / f"{name}.xml"), "num_inference_steps": 4, "num_rounds": 2,
              "framesFile": str(tmp_path / "frames.nii.gz")}
    args = slicer_command_line(modules / f"{name}.xml", values, [str(image), str(tmp_path / "out.nii.gz")])
    assert "--target_stage" in args and args[args.index("--target_stage") + 1] == "-1.0"
    done = run_module(modules / f"{name}.py", args)
    assert done.returncode == 0, done.stderr[-2000:]
    x, out, frames = (nib.load(tmp_path / f) for f in ("input.nii.gz", "out.nii.gz", "frames.nii.gz"))
    assert out.shape == x.shape and np.allclose(out.affine, x.affine) and frames.shape == (*x.shape, 3)
    assert np.allclose(frames.get_fdata()[..., -1], out.get_fdata(), atol=1e-4)
    assert np.abs(out.get_fdata() - x.get_fdata()).max() > 0


def test_cxr_modules_on_a_one_slice_volume_and_from_a_prompt(modules, tmp_path):
    x = load_2d_image(CXR_PROG / "docs" / "example_cxr.png")
    nib.save(nib.Nifti1Image((x.T * 4095)[:, :, None].astype(np.float32), np.diag([0.5, 0.5, 1, 1])),
             tmp_path / "cxr.nii.gz")
    name = module_name(TASKS["cxr_progression"])
    values = {**slicer_defaults(modules / f"{name}.xml"), "num_inference_steps": 4, "num_rounds": 1}
    done = run_module(modules / f"{name}.py", slicer_command_line(
        modules / f"{name}.xml", values, [str(tmp_path / "cxr.nii.gz"), str(tmp_path / "edited.nii.gz")]))
    assert done.returncode == 0, done.stderr[-2000:]
    edited = nib.load(tmp_path / "edited.nii.gz")
    assert edited.shape == (128, 128, 1) and np.allclose(edited.affine, np.diag([0.5, 0.5, 1, 1]))
    name = module_name(TASKS["cxr_text_to_image"])
    values = {**slicer_defaults(modules / f"{name}.xml"), "num_inference_steps": 3}
    done = run_module(modules / f"{name}.py", slicer_command_line(modules / f"{name}.xml", values,
                                                                  [str(tmp_path / "generated.nii.gz")]))
    assert done.returncode == 0, done.stderr[-2000:]
    generated = nib.load(tmp_path / "generated.nii.gz").get_fdata()
    assert generated.shape == (64, 64, 1) and np.isfinite(generated).all() and generated.std() > 0.01


def test_a_bad_value_is_one_clear_line_and_exit_code_2(modules, tmp_path):
    name = module_name(TASKS["brain_generation"])
    done = run_module(modules / f"{name}.py", ["--age", "20", str(tmp_path / "out.nii.gz")])
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == \
        "monai-pie: error: `age` must be in [40, 100], got '20'."
    assert not (tmp_path / "out.nii.gz").exists()
