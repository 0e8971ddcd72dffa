"""Serving the bundles: one table of tasks and their request parameters (:mod:`.tasks`), a task loaded once and run
per request (:mod:`.service`), the MONAI Label app built on them (``label_app/``, :mod:`.label`) and 3D Slicer
CLI modules (:mod:`.slicer`)."""

from pathlib import Path

from .service import TaskResult, TaskService, describe_parameters
from .tasks import FRAMES, TASKS, Parameter, RequestError, TaskSpec, get_task

__all__ = ["FRAMES", "TASKS", "Parameter", "RequestError", "TaskResult", "TaskService", "TaskSpec", "app_source",
           "describe_parameters", "get_task"]


def app_source() -> Path:
    """The MONAI Label app's ``main.py`` in the package (``monai-pie label app`` copies it to a writable folder,
    since MONAI Label creates folders inside the app)."""
    return Path(__file__).resolve().parent / "label_app" / "main.py"
