"""Bundle helpers that must work offline."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["metadata_schema_path"]


def metadata_schema_path() -> Path:
    """Path of the JSON schema for ``configs/metadata.json`` that ships with the package.

    Pass it to ``python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath <path>``:
    MONAI skips the download when the file exists, so no schema URL is ever fetched.
    """
    return Path(str(resources.files("monai_pie") / "resources" / "metadata_schema.json"))
