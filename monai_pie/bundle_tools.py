"""Driving the bundles from Python, offline: find a bundle, parse its config with overrides, load its model, run
its inference workflow, and the metadata schemas to verify bundles against.

Validations and tests run the bundles exactly as ``python -m monai.bundle run`` does, through these helpers, so what
is measured is what users run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "bundle_dir",
    "find_handler",
    "load_bundle_model",
    "metadata_schema_path",
    "model_zoo_schema_path",
    "parse_bundle",
    "run_bundle",
]


def metadata_schema_path() -> Path:
    """Path of monai-pie's JSON schema for ``configs/metadata.json`` that ships with the package.

    Pass it to ``python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath <path>``:
    MONAI skips the download when the file exists, so no schema URL is ever fetched.
    """
    return Path(str(resources.files("monai_pie") / "resources" / "metadata_schema.json"))


def model_zoo_schema_path() -> Path:
    """Path of MONAI model-zoo's metadata schema (``meta_schema_20240725.json``), vendored in the package; its
    source is recorded in ``resources/README.md``."""
    return Path(str(resources.files("monai_pie") / "resources" / "meta_schema_20240725.json"))


def bundle_dir(name_or_path: str | Path) -> Path:
    """A bundle folder: ``name_or_path`` if it is one, else the bundle of that name beside the package (a source
    checkout's ``bundles/<name>``). Raises ``FileNotFoundError`` saying what to pass otherwise."""
    path = Path(name_or_path)
    candidates = [path, Path(__file__).resolve().parents[1] / "bundles" / path.name]
    for c in candidates:
        if (c / "configs" / "inference.json").is_file():
            return c
    raise FileNotFoundError(f"{str(name_or_path)!r} is not a bundle folder (no configs/inference.json) and no bundle of "
                            "that name ships beside the package; pass the bundle's folder.")


def parse_bundle(bundle: str | Path, overrides: Mapping[str, Any] | None = None,
                 config_files: Sequence[str] = ("inference.json",)) -> Any:
    """A ``monai.bundle.ConfigParser`` of the bundle's ``configs/<config_files>`` (layered in order), with
    ``bundle_root`` set and ``overrides`` applied (``"#"``-separated ids allowed)."""
    from monai.bundle import ConfigParser

    root = bundle_dir(bundle)
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / name) for name in config_files])
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def run_bundle(bundle: str | Path, overrides: Mapping[str, Any] | None = None) -> Any:
    """Run a bundle's inference workflow (its ``evaluator``) with ``overrides``; returns the parser, from which
    the caller reads what it needs (``parser.get_parsed_content("handlers")``, ``"output_dir"``, ...)."""
    parser = parse_bundle(bundle, overrides)
    parser.get_parsed_content("evaluator").run()
    return parser


def find_handler(parser: Any, handler_type: type) -> Any:
    """The first handler of ``handler_type`` in a parsed bundle's ``handlers`` (e.g. its summary handler)."""
    for handler in parser.get_parsed_content("handlers"):
        if isinstance(handler, handler_type):
            return handler
    raise KeyError(f"the bundle's handlers have no {handler_type.__name__}.")


def load_bundle_model(bundle: str | Path, model_path: str | Path | None = None, device: str = "cpu",
                      overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse a bundle's ``configs/inference.json`` (with optional config ``overrides``) and load its weights.

    Returns:
        ``network`` (``network_def`` with the weights, in eval mode on ``device``), ``scheduler``
        (``noise_scheduler``), ``parser`` (the :class:`monai.bundle.ConfigParser`, for other settings) and
        ``model_path``. Missing, corrupt or mismatched weights raise an error that names the file.
    """
    from .engines import load_network_weights

    parser = parse_bundle(bundle, overrides)
    network = parser.get_parsed_content("network_def")
    if not model_path:  # the config's own (an overlay may name other weights), else the bundle's models/model.pt
        model_path = parser.get_parsed_content("model_path") if "model_path" in parser else None
    path = Path(model_path) if model_path else bundle_dir(bundle) / "models" / "model.pt"
    load_network_weights(network, path, "latent diffusion model")
    return {"network": network.to(device).eval(), "scheduler": parser.get_parsed_content("noise_scheduler"),
            "parser": parser, "model_path": str(path)}
