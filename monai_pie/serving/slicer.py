"""3D Slicer CLI modules for the served tasks (Slicer Execution Model XML + a Python script), built from the task
table, and the command line they run.

``monai-pie slicer modules DIR`` writes, per task, ``MONAIPIE<Task>.xml`` and ``MONAIPIE<Task>.py``. Add ``DIR`` to
Slicer's *Additional module paths*; the modules appear under *MONAI PIE*. Slicer runs a module's script with its own
Python, which has no monai-pie, so the script (standard library only) hands its command line to the Python that wrote
it: ``<python> -m monai_pie.serving.slicer <task> [--name value ...] [input] output``. Slicer writes the input volume
as NIfTI (``fileExtensions``) and loads the outputs: the final frame or generated image as a volume and, when asked
for, every frame as a 4D NIfTI file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .. import __version__
from .tasks import TASKS, Parameter, TaskSpec, get_task

__all__ = ["main", "module_name", "module_xml", "write_modules"]

_NIFTI = ".nii.gz"
_SERVING_ONLY = ("frames",)  # request options a Slicer module expresses as outputs instead


def module_name(task: TaskSpec) -> str:
    """``brain_progression`` -> ``MONAIPIEBrainProgression``."""
    return "MONAIPIE" + "".join(part.title() for part in task.name.split("_"))


def _module_parameters(task: TaskSpec) -> list[Parameter]:
    return [p for p in task.parameters if p.name not in _SERVING_ONLY]


def _element(tag: str, body: dict[str, Any], attrs: str = "", extra: str = "") -> str:
    inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in body.items() if v is not None)
    return f"    <{tag}{attrs}>{inner}{extra}</{tag}>\n"


def _parameter_xml(p: Parameter, describe: dict[str, Any]) -> str:
    entry = describe[p.name]
    default = entry["default"]
    body = {"name": p.name, "longflag": f"--{p.name}", "label": p.name.replace("_", " ").capitalize(),
            "description": p.help}
    if p.choices is not None and p.kind is str:
        elements = "".join(f"<element>{escape(str(c))}</element>" for c in p.choices)
        return _element("string-enumeration", {**body, "default": default}, extra=elements)
    if p.kind is str:
        return _element("string", {**body, "default": default})
    if p.choices is not None:  # categorical numbers (sex): the choices as the range
        low, high = min(p.choices), max(p.choices)
    else:
        low, high = entry["range"]
    if p.nullable:  # Slicer always sends a number: a negative one means "not set"
        low, default = -1, -1 if default is None else default
    step = 1 if p.kind is int else 0.05
    low, high = (int(low), int(high)) if p.kind is int else (float(low), float(high))
    constraints = f"<constraints><minimum>{low}</minimum><maximum>{high}</maximum><step>{step}</step></constraints>"
    return _element("integer" if p.kind is int else "float", {**body, "default": default}, extra=constraints)


def module_xml(task: str | TaskSpec, describe: dict[str, Any]) -> str:
    """The Slicer Execution Model XML of a task's module.

    Args:
        task: the task (name or spec).
        describe: :meth:`TaskService.describe` of that task (defaults and ranges from its bundle).
    """
    spec = get_task(task) if isinstance(task, str) else task
    io = []
    index = 0
    if spec.kind in ("progression", "anomaly"):
        io.append(_element("image", {"name": "inputVolume", "label": "Input volume", "channel": "input", "index": 0,
                                     "description": "the image to edit" if spec.kind == "progression" else
                                     "the image to map"}, f' fileExtensions="{_NIFTI}"'))
        index = 1
    elif spec.dimension == 3:
        io.append(_element("image", {"name": "reference", "longflag": "--reference", "label": "Reference volume",
                                     "channel": "input", "description": "optional: the generated brain is placed on "
                                     "the model grid centred like this volume"}, f' fileExtensions="{_NIFTI}"'))
    result_label = {"progression": "Final frame", "anomaly": "Anomaly map"}.get(spec.kind, "Generated image")
    io.append(_element("image", {"name": "outputVolume", "label": result_label, "channel": "output", "index": index,
                                 "description": f"{result_label.lower()}, as a volume"}, f' fileExtensions="{_NIFTI}"'))
    if spec.kind == "progression":
        io.append(_element("file", {"name": "framesFile", "longflag": "--frames_file", "label": "All frames (4D)",
                                    "channel": "output", "description": "optional: every frame as one 4D NIfTI "
                                    "(File > Add Data loads it as a volume sequence)"}, f' fileExtensions="{_NIFTI}"'))
    settings = "".join(_parameter_xml(p, describe) for p in _module_parameters(spec))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<executable>\n'
        f"  <category>MONAI PIE</category>\n  <title>{escape(spec.title)}</title>\n"
        f"  <description>{escape(spec.description)} (bundle {spec.bundle}; monai-pie)</description>\n"
        f"  <version>{__version__}</version>\n  <license>Apache-2.0</license>\n  <contributor>monai-pie</contributor>\n"
        "  <parameters>\n    <label>Input and output</label>\n    <description>volumes</description>\n"
        f"{''.join(io)}  </parameters>\n"
        "  <parameters>\n    <label>Settings</label>\n    <description>defaults are the bundle's</description>\n"
        f"{settings}  </parameters>\n</executable>\n"
    )


_SCRIPT = '''#!/usr/bin/env python
"""3D Slicer CLI module {name}: monai-pie task {task!r} (written by `monai-pie slicer modules`).

Slicer runs this file with its own Python; the work runs in the Python that has monai-pie ({python}), or in
$MONAI_PIE_PYTHON when set.
"""
import os
import subprocess
import sys

PYTHON = os.environ.get("MONAI_PIE_PYTHON", {python!r})

if __name__ == "__main__":
    if sys.argv[1:2] == ["--xml"]:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "{name}.xml")) as f:
            sys.stdout.write(f.read())
        sys.exit(0)
    env = {{k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}}  # Slicer's, not ours
    sys.exit(subprocess.call([PYTHON, "-m", "monai_pie.serving.slicer", {task!r}] + sys.argv[1:], env=env))
'''


def write_modules(output_dir: str | Path, tasks: Sequence[str] | None = None, python: str | None = None) -> list[Path]:
    """Write ``MONAIPIE<Task>.xml`` and ``.py`` for each task into ``output_dir``; returns the scripts.

    Args:
        output_dir: the folder to add to Slicer's *Additional module paths* (created if missing).
        tasks: task names (default: all).
        python: the interpreter with monai-pie (default: this one).
    """
    from .service import describe_parameters

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scripts = []
    for name in tasks or list(TASKS):
        spec = get_task(name)
        mod = module_name(spec)
        describe = describe_parameters(spec)
        (out / f"{mod}.xml").write_text(module_xml(spec, describe))
        script = out / f"{mod}.py"
        script.write_text(_SCRIPT.format(name=mod, task=spec.name, python=python or sys.executable))
        script.chmod(0o755)
        scripts.append(script)
    return scripts


def _parser(spec: TaskSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{module_name(spec)}", description=spec.description)
    for p in _module_parameters(spec):
        parser.add_argument(f"--{p.name}", help=p.help)
    if spec.kind == "progression":
        parser.add_argument("--frames_file", help="write every frame as one 4D NIfTI here")
    if spec.kind in ("progression", "anomaly"):
        parser.add_argument("inputVolume")
    elif spec.dimension == 3:
        parser.add_argument("--reference", help="volume whose position the generated brain takes")
    parser.add_argument("outputVolume")
    return parser


def _write_as(result: Path, target: Path) -> None:
    """Move ``result`` to ``target``; a 2D PNG result becomes a one-slice NIfTI when Slicer asked for NIfTI."""
    if target.name.endswith((".nii", ".nii.gz")) and result.suffix == ".png":
        import numpy as np

        from ..data.io import load_2d_image, save_nifti_like

        save_nifti_like(load_2d_image(result).T[..., None], np.eye(4), target)
        result.unlink()
        return
    if _suffix(result) != _suffix(target):
        raise ValueError(f"cannot write a {_suffix(result)} result as {target}; give a {_suffix(result)} path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(result), str(target))


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_pie.serving.slicer TASK [--name value ...] [input] output``: run a task as Slicer asks.

    Errors are one line on stderr (Slicer shows it in the module's status) and exit code 2."""
    from .service import TaskService
    from .tasks import RequestError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args:
            raise RequestError(f"give a task: {sorted(TASKS)}.")
        spec = get_task(args[0])
        ns = vars(_parser(spec).parse_args(args[1:]))
        params = {}
        for p in _module_parameters(spec):
            value = ns.get(p.name)
            if value is None:
                continue
            if p.nullable and float(value) < 0:
                value = None
            params[p.name] = value
        if ns.get("frames_file"):
            params["frames"] = "all"
        image = ns.get("inputVolume") or ns.get("reference")
        result = TaskService(spec).run(image, params, strict=True)
        _write_as(result.final, Path(ns["outputVolume"]))
        if result.frames is not None:
            _write_as(result.frames, Path(ns["frames_file"]))
    except (RequestError, ValueError, FileNotFoundError) as err:
        print(f"monai-pie: error: {err}", file=sys.stderr)
        return 2
    print(f"monai-pie: wrote {ns['outputVolume']}" + (f" and {ns['frames_file']}" if ns.get("frames_file") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
