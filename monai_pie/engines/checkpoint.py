"""Atomic checkpoints for ignite/MONAI engines, and resuming from them.

MONAI's ``CheckpointSaver`` writes with ``atomic=False``: a run killed mid-write leaves a truncated file where the last
good checkpoint was. ``AtomicCheckpointSaver`` writes to a temporary file in the same folder and renames it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from ..utils import atomic_save

__all__ = ["AtomicCheckpointSaver", "ResumeFromCheckpoint", "load_checkpoint"]

logger = logging.getLogger(__name__)


def _state(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def _unwrap(module: Any) -> Any:
    return module.module if hasattr(module, "module") and isinstance(module, torch.nn.Module) else module


class AtomicCheckpointSaver:
    """Save training state atomically: the last state for resuming, the final weights, the best weights.

    Args:
        save_dir: output folder.
        save_dict: ``{name: object with state_dict()}`` saved in the resume checkpoint (networks, optimisers,
            the trainer itself for epoch/iteration).
        network: the network whose plain ``state_dict`` is the model file (DDP wrappers are unwrapped).
        last_filename: resume checkpoint written every ``save_interval`` epochs.
        final_filename: plain network weights written when training completes (and with the last checkpoint).
        best_filename: plain network weights written when the key metric improves (attach to the evaluator).
        key_metric_name: metric in ``engine.state.metrics`` of the engine this is attached to for ``best``;
            ``None`` uses the engine's key metric.
        key_metric_mode: ``"min"`` (losses) or ``"max"``.
        save_interval: epochs between resume checkpoints.
        rank_zero_only: only rank 0 writes under DDP.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        network: torch.nn.Module | None = None,
        last_filename: str = "checkpoint_last.pt",
        final_filename: str | None = "model.pt",
        best_filename: str | None = None,
        key_metric_name: str | None = None,
        key_metric_mode: str = "min",
        save_interval: int = 1,
        rank_zero_only: bool = True,
    ) -> None:
        if key_metric_mode not in ("min", "max"):
            raise ValueError(f"`key_metric_mode` must be 'min' or 'max', got {key_metric_mode!r}.")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.network = network
        self.last_filename = last_filename
        self.final_filename = final_filename
        self.best_filename = best_filename
        self.key_metric_name = key_metric_name
        self.key_metric_mode = key_metric_mode
        self.save_interval = int(save_interval)
        self.rank_zero_only = rank_zero_only
        self.best_value = math.inf if key_metric_mode == "min" else -math.inf

    def _is_writer(self) -> bool:
        if not self.rank_zero_only or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return True
        return torch.distributed.get_rank() == 0

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer (last/final checkpoints), or to an evaluator when only ``best_filename`` is set."""
        if self.last_filename:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save_last)
        if self.final_filename:
            engine.add_event_handler(Events.COMPLETED, self.save_final)
        if self.best_filename:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)

    def save_last(self, engine: Engine) -> None:
        if self._is_writer():
            atomic_save({k: _state(_unwrap(v)) for k, v in self.save_dict.items()}, self.save_dir / self.last_filename)
            if self.final_filename and self.network is not None:
                self._save_network(self.final_filename)

    def save_final(self, engine: Engine) -> None:
        if self._is_writer() and self.network is not None and self.final_filename:
            self._save_network(self.final_filename)

    def save_best(self, engine: Engine) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        value = engine.state.metrics.get(name) if name else None
        if value is None:
            return
        better = value < self.best_value if self.key_metric_mode == "min" else value > self.best_value
        if better:
            self.best_value = float(value)
            if self._is_writer() and self.network is not None:
                self._save_network(self.best_filename)
                engine.logger.info(f"new best {name} = {value:.6g}: saved {self.best_filename}")

    def _save_network(self, filename: str) -> None:
        atomic_save(_unwrap(self.network).state_dict(), self.save_dir / filename)


def load_checkpoint(path: str | Path, load_dict: Mapping[str, Any], map_location: str | torch.device = "cpu") -> None:
    """Load a resume checkpoint written by ``AtomicCheckpointSaver`` into the objects of ``load_dict``.

    Raises ``FileNotFoundError`` / ``RuntimeError`` naming the file if it is missing or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise RuntimeError(f"cannot read checkpoint {path}: {err}") from err
    missing = [k for k in load_dict if k not in ckpt]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {missing}; it has {sorted(ckpt)}.")
    Checkpoint.load_objects(to_load={k: _unwrap(v) for k, v in load_dict.items()}, checkpoint=ckpt)


class ResumeFromCheckpoint:
    """At ``Events.STARTED``, resume the trainer and its objects from ``path`` if ``enabled`` and the file exists.

    Keeps the configured ``max_epochs`` (so a resumed run can also be extended). Logs what it did.
    """

    def __init__(self, path: str, load_dict: Mapping[str, Any], enabled: bool = True,
                 map_location: str | torch.device = "cpu", on_missing: str = "warn",
                 callback: Callable[[Engine], None] | None = None) -> None:
        if on_missing not in ("warn", "raise"):
            raise ValueError(f"`on_missing` must be 'warn' or 'raise', got {on_missing!r}.")
        self.path, self.load_dict, self.enabled = Path(path), dict(load_dict), enabled
        self.map_location, self.on_missing, self.callback = map_location, on_missing, callback

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if not self.path.is_file():
            if self.on_missing == "raise":
                raise FileNotFoundError(f"--resume given but no checkpoint at {self.path}")
            engine.logger.warning(f"resume requested but {self.path} does not exist: training from scratch")
            return
        max_epochs = engine.state.max_epochs
        load_checkpoint(self.path, self.load_dict, self.map_location)
        engine.state.max_epochs = max_epochs
        if engine.state.epoch >= max_epochs:
            engine.logger.warning(f"checkpoint {self.path} is at epoch {engine.state.epoch} >= max_epochs {max_epochs}.")
        engine.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
        if self.callback is not None:
            self.callback(engine)
