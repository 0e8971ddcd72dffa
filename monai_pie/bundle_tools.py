"""Bundle helpers that must work offline."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["load_bundle_model", "metadata_schema_path"]


def metadata_schema_path() -> Path:
    """Path of the JSON schema for ``configs/metadata.json`` that ships with the package.

    Pass it to ``python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath <path>``:
    MONAI skips the download when the file exists, so no schema URL is ever fetched.
    """
    return Path(str(resources.files("monai_pie") / "resources" / "metadata_schema.json"))


def load_bundle_model(bundle_dir: str | Path, model_path: str | Path | None = None, device: str = "cpu",
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a bundle's ``configs/inference.json`` (with optional config ``overrides``) and load its weights.

    Returns:
        ``network`` (``network_def`` with the weights, in eval mode on ``device``), ``scheduler``
        (``noise_scheduler``), ``parser`` (the :class:`monai.bundle.ConfigParser`, for other settings) and
        ``model_path``. Missing or corrupt weights raise an error that names the file.
    """
    from monai.bundle import ConfigParser

    from .engines import load_weights

    bundle_dir = Path(bundle_dir)
    config = bundle_dir / "configs" / "inference.json"
    if not config.is_file():
        raise FileNotFoundError(f"{str(config)!r} not found; is {str(bundle_dir)!r} a bundle folder?")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle_dir)
    for key, value in (overrides or {}).items():
        parser[key] = value
    network = parser.get_parsed_content("network_def")
    path = Path(model_path) if model_path else bundle_dir / "models" / "model.pt"
    network.load_state_dict(load_weights(path, "latent diffusion model"))
    return {"network": network.to(device).eval(), "scheduler": parser.get_parsed_content("noise_scheduler"),
            "parser": parser, "model_path": str(path)}
