"""MONAI Label entry point of the monai-pie app: ``monailabel start_server --app <folder> --studies <dir>``.

``monai-pie label app`` prints this folder. The app itself is :class:`monai_pie.serving.label.MonaiPieApp`.
"""

from monai_pie.serving.label import MonaiPieApp

__all__ = ["MonaiPieApp"]
