"""Loading shipped or trained weights with errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_weights"]


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
