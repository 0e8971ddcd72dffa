"""3D Slicer's MONAI bundle runner (SlicerMONAIAuto3DSeg ``Scripts/monaibundle_inference.py``), step by step.

It reads ``configs/inference.json`` with ``ConfigParser``, sets ``bundle_root``, ``dataset_dir`` (the input's folder),
``output_dir``, ``datalist = [<input path>]`` (twice, as Slicer does), ``window_device = "cpu"``, ``device``,
``inferer["device"]`` and ``dataloader["num_workers"] = 0``, parses ``dataloader`` (which must be non-empty), runs
``evaluator``, and moves the most recently written ``*.nii.gz`` under ``output_dir`` to the result path.
``python tests/helpers/slicer.py BUNDLE IMAGE RESULT`` runs it as Slicer would.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch


def slicer_infer(bundle_root: str | Path, image_file: str | Path, result_file: str | Path,
                 device: torch.device | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Run a bundle the way 3D Slicer does; ``extra`` config overrides (a test's speed settings) are applied after
    Slicer's own. Returns the result file."""
    from monai.bundle import ConfigParser

    device = device if device is not None else torch.device("cpu" if torch.cuda.device_count() == 0 else 0)
    with torch.no_grad():
        image_path, result_path, root = Path(image_file), Path(result_file), Path(bundle_root)
        dataset_dir, output_dir = image_path.parent, result_path.parent
        output_dir.mkdir(parents=True, exist_ok=True)
        parser = ConfigParser()
        parser.read_config(root.joinpath("configs", "inference.json").as_posix())
        parser["bundle_root"] = root.as_posix()
        parser["dataset_dir"] = dataset_dir.as_posix()
        parser["output_dir"] = output_dir.as_posix()
        parser["datalist"] = [image_path.as_posix()]
        parser["datalist"] = [image_path.as_posix()]
        parser["window_device"] = "cpu"
        parser["device"] = device
        parser["inferer"]["device"] = device
        parser["dataloader"]["num_workers"] = 0
        for key, value in (extra or {}).items():
            parser[key] = value
        assert len(parser["datalist"]) > 0, "Empty data list as input"
        dataloader = parser.get_parsed_content("dataloader")
        assert len(dataloader) > 0
        evaluator = parser.get_parsed_content("evaluator")
        evaluator.run()
        files = list(output_dir.rglob("*.nii.gz"))
        if not files:
            raise FileNotFoundError(f"No output file found in {output_dir}")
        bundle_output = max(files, key=lambda p: p.stat().st_mtime)
        shutil.move(str(bundle_output), str(result_path))
        return result_path


if __name__ == "__main__":
    print(slicer_infer(*sys.argv[1:4]))
