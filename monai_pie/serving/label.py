"""The MONAI Label side of serving: an ``InferTask`` per task and the app that serves them.

Generative results are images, not labels, so the tasks are ``InferType.OTHERS`` and return float NIfTI (or the PNG
a 2D bundle writes). Each task is a :class:`~monai_pie.serving.TaskService`: the model loads once, when the server
starts. A request that cannot be run gets HTTP 400 (422 for a bad parameter, 404 for an unknown task or image) with
the reason as ``detail``; the server keeps serving. This module imports ``monailabel`` (``pip install -e .[label]``,
see docs/slicer_and_monailabel.md); it deliberately avoids monailabel's ``BundleInferTask``, whose post-processing
imports torchvision.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from .. import __version__
from .service import TaskService
from .tasks import TASKS, RequestError

__all__ = ["GenerativeInferTask", "MonaiPieApp"]

logger = logging.getLogger(__name__)

#: keys MONAI Label itself puts in an infer request (server, client and Slicer plugin), never task parameters
MONAI_LABEL_KEYS = frozenset({
    "model", "image", "description", "device", "save_label", "label_tag", "label", "label_info", "session",
    "session_id", "client_id", "timeout", "output", "result_extension", "result_dtype", "result_compress",
    "largest_cc", "cache_transforms", "logging", "pipeline_mode", "foreground", "background",
})


class GenerativeInferTask(InferTask):
    """A MONAI Label infer task that runs one :class:`TaskService` (loaded once) per request.

    Args:
        service: the loaded task.
    """

    def __init__(self, service: TaskService) -> None:
        spec = service.spec
        super().__init__(type=InferType.OTHERS, labels=None, dimension=spec.dimension,
                         description=f"{spec.title}: {spec.description}",
                         config={name: entry["default"] for name, entry in service.describe().items()})
        self.service = service

    def info(self) -> dict[str, Any]:
        """MONAI Label's task info plus each parameter's range, choices and help."""
        return {**super().info(), "bundle": self.service.spec.bundle, "parameters": self.service.describe()}

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run the request (``image`` is a path the app resolved; the task's parameters sit beside MONAI Label's own
        keys, which are ignored). Returns the result file and the JSON summary."""
        try:
            params = {k: v for k, v in request.items() if k not in MONAI_LABEL_KEYS}
            result = self.service.run(request.get("image"), params, strict=False)
        except RequestError as err:
            status = 404 if "not found" in str(err) else 422 if str(err).startswith(("`", "task ")) else 400
            raise HTTPException(status_code=status, detail=str(err)) from err
        for extra in result.files():
            if extra != result.path:
                extra.unlink(missing_ok=True)  # MONAI Label removes the file it sends, not the others
        return str(result.path), result.info


def _flag(value: str | bool, name: str) -> bool:
    """A ``--conf`` yes/no option as a bool; anything else is an error that names the option."""
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"--conf {name} must be true or false, got {value!r}.")
    return text in ("true", "1", "yes")


class MonaiPieApp(MONAILabelApp):
    """The monai-pie MONAI Label app: every task of :data:`~monai_pie.serving.tasks.TASKS` as an infer task.

    Server ``--conf`` options: ``tasks`` (comma-separated names, default all), ``device`` (default: CUDA when
    available), ``<task>_model_path`` and ``<task>_bundle_root`` (weights and bundle folder of one task),
    ``compile_denoiser`` (``true``: denoisers through ``torch.compile`` where the bundle has the switch, as every
    shipped bundle does; the first request of each task compiles, later ones are faster).
    """

    def __init__(self, app_dir: str, studies: str, conf: Mapping[str, str]) -> None:
        names = [n.strip() for n in str(conf.get("tasks", ",".join(TASKS))).split(",") if n.strip()]
        unknown = sorted(set(names) - set(TASKS))
        if unknown:
            raise ValueError(f"--conf tasks names unknown tasks {unknown}; tasks: {sorted(TASKS)}.")
        self.task_names: Sequence[str] = names
        super().__init__(app_dir=app_dir, studies=studies, conf=dict(conf), name="monai-pie",
                         description="Generative medical imaging: disease progression and image synthesis "
                                     "(monai-pie bundles)", version=__version__)

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name in self.task_names:
            service = TaskService(name, bundle_root=self.conf.get(f"{name}_bundle_root"),
                                  model_path=self.conf.get(f"{name}_model_path"), device=self.conf.get("device"),
                                  compile_denoiser=_flag(self.conf.get("compile_denoiser", "false"),
                                                         "compile_denoiser"))
            logger.info(f"monai-pie: loaded {name} ({service.spec.bundle}, weights {service.model_path})")
            infers[name] = GenerativeInferTask(service)
        return infers

    def infer(self, request: Mapping[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's ``infer`` with its errors as HTTP answers: an unknown task or image is a 404 that names
        what exists, not a 500."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"no task {model!r}; tasks: {sorted(self._infers)}.")
        image = request.get("image")
        if isinstance(image, str) and not Path(image).exists() and not self.datastore().get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"image {image!r} is neither a studies image id nor a file "
                                                        "the server can read; upload it as `file` or add it to "
                                                        "the studies folder.")
        try:
            return super().infer(request, datastore)
        except MONAILabelException as err:
            raise HTTPException(status_code=400, detail=err.msg) from err
