"""Loading shipped or trained weights with errors that say which file, what is wrong, and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["LoadWeights", "load_network_weights", "load_weights", "load_widened_weights"]

_MAX_LISTED = 3  # keys named per kind of mismatch


def load_weights(path: str | Path, what: str = "model", hint: str = "") -> dict[str, torch.Tensor]:
    """Load a plain state_dict with ``weights_only=True``; clear errors for a missing or corrupt file.

    Args:
        path: the ``.pt`` file.
        what: what the weights are, for the message (e.g. ``"autoencoder"``).
        hint: how to obtain them, appended to the "not found" message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}." + (f" {hint}" if hint else ""))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{what} weights at {path} are unreadable (corrupt or not a torch file): {err}") from err
    if not isinstance(state, dict):
        raise RuntimeError(f"{what} weights at {path} are not a state_dict (got {type(state).__name__}).")
    return state


def _unwrap(module: Any) -> Any:
    return module.module if isinstance(module, torch.nn.Module) and hasattr(module, "module") else module


def load_network_weights(network: torch.nn.Module, path: str | Path, what: str = "model", hint: str = "") -> None:
    """Load the weights at ``path`` into ``network`` (DDP wrappers unwrapped), or explain why they do not fit.

    Weights of another architecture (other channel counts, image size, context width, a different bundle) give one
    message naming the file and the first missing, unexpected and mis-shaped entries, instead of PyTorch's key list.
    """
    state = load_weights(path, what, hint)
    target = _unwrap(network)
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing from the file", missing), ("not in the network", unexpected),
                            ("of another shape", shapes)):
            if keys:
                more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
                parts.append(f"{len(keys)} {label} ({'; '.join(keys[:_MAX_LISTED])}{more})")
        raise ValueError(f"{what} weights at {path} do not fit this network: {', '.join(parts)}. They were trained "
                         "with other settings (channels, image size, context width) or for another bundle; use the "
                         "weights trained with this config, or the config they were trained with.")
    target.load_state_dict(state)


def load_widened_weights(network: torch.nn.Module, path: str | Path, what: str = "model") -> list[str]:
    """Warm-start ``network`` from weights trained for fewer inputs: a tensor the network holds with a wider
    dimension 1 (a first convolution taking concatenated condition channels, an MLP taking more covariates) gets the
    file's values in its leading slice and zeros in the rest, so the widened network starts out computing exactly
    what the file's network did, ignoring the new inputs. A buffer of another shape (set by the config, such as a
    conditioner's covariate ranges) keeps the network's own value; every other tensor must match.

    Returns:
        The names of the widened tensors and of the buffers kept.

    Raises:
        ValueError: keys missing on either side, or a parameter shape that differs otherwise than by a wider
            dimension 1.
    """
    state = load_weights(path, what)
    target = _unwrap(network)
    own = target.state_dict()
    parameters = {name for name, _ in target.named_parameters()}
    widened, bad = [], []
    for key, value in own.items():
        if key not in state:
            bad.append(f"{key}: missing from the file")
            continue
        old = state[key]
        if old.shape == value.shape:
            continue
        if key not in parameters:
            state[key] = value
            widened.append(key)
        elif old.ndim == value.ndim >= 2 and old.shape[0] == value.shape[0] and old.shape[2:] == value.shape[2:] \
                and old.shape[1] < value.shape[1]:
            new = torch.zeros_like(value)
            new[:, : old.shape[1]] = old.to(value.dtype)
            state[key] = new
            widened.append(key)
        else:
            bad.append(f"{key}: file {tuple(old.shape)} vs network {tuple(value.shape)}")
    bad += [f"{key}: not in the network" for key in state if key not in own]
    if bad:
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise ValueError(f"{what} weights at {path} cannot warm-start this network (only a wider input dimension is "
                         f"filled in): {'; '.join(bad[:_MAX_LISTED])}{more}.")
    target.load_state_dict(state)
    return widened


class LoadWeights:
    """Ignite handler: load a network's weights when the engine starts (before the first item is read).

    Attach it to an inference evaluator (the bundles' ``handlers``), so that any tool that only runs ``evaluator``
    (3D Slicer's bundle runner) gets the weights too.

    Args:
        network: the network (``@network``).
        path: the weights file.
        what: what the weights are, for messages.
        hint: how to obtain them, for the "not found" message.
        bundle_root: the bundle folder the config was given; when the file is missing and this is not a bundle
            folder, the message says to pass ``--bundle_root``.
    """

    def __init__(self, network: torch.nn.Module, path: str | Path, what: str = "model", hint: str = "",
                 bundle_root: str | Path | None = None) -> None:
        self.network, self.path, self.what, self.hint = network, Path(path), what, hint
        self.bundle_root = None if bundle_root is None else Path(bundle_root)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not self.path.is_file() and self.bundle_root is not None and \
                not (self.bundle_root / "configs" / "metadata.json").is_file():
            raise FileNotFoundError(
                f"{self.what} weights not found at {self.path}: `bundle_root` is {str(self.bundle_root)!r}, which is "
                "not a bundle folder (it has no configs/metadata.json). Pass the bundle's folder with --bundle_root, "
                "e.g. --bundle_root bundles/<bundle name>.")
        load_network_weights(self.network, self.path, self.what, self.hint)
