"""Atomic checkpoints for ignite/MONAI engines, and resuming from them exactly where a run stopped.

MONAI's ``CheckpointSaver`` writes with ``atomic=False``: a run killed mid-write leaves a truncated file where the last
good checkpoint was. ``AtomicCheckpointSaver`` writes to a temporary file in the same folder, fsyncs it and renames
it, and removes the temporary files a killed write left behind. A resume checkpoint holds plain state dicts only
(networks, optimisers, the trainer's counters, the best metric so far, the random-number states), so it loads with
``weights_only=True``: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from ..utils import atomic_save

__all__ = ["AtomicCheckpointSaver", "RandomStates", "ResumeFromCheckpoint", "load_checkpoint"]

logger = logging.getLogger(__name__)


def _state(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def _unwrap(module: Any) -> Any:
    return module.module if hasattr(module, "module") and isinstance(module, torch.nn.Module) else module


class RandomStates:
    """The random-number states a training run draws from, as a checkpointable object.

    ``state_dict()`` holds the global torch (and CUDA), numpy and Python generators, plus the generator of every
    random MONAI transform in ``transforms`` (e.g. random crops), as tensors and plain values, so a resumed run
    continues the same shuffles, noise, timesteps and crops instead of replaying those of its first epochs.

    Args:
        transforms: transforms (a ``Compose`` or a list) whose ``Randomizable`` members are included.
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def _randomizable(self) -> list[Any]:
        from monai.transforms import Compose, Randomizable

        if self.transforms is None:
            return []
        items = self.transforms.flatten().transforms if isinstance(self.transforms, Compose) else list(self.transforms)
        return [t for t in items if isinstance(t, Randomizable)]

    @staticmethod
    def _numpy_state(state: tuple) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = state
        return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                "has_gauss": int(has_gauss), "gauss": float(gauss)}

    @staticmethod
    def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
        return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                state["gauss"])

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": self._numpy_state(np.random.get_state()),
                               "python": random.getstate(),
                               "transforms": [self._numpy_state(t.R.get_state()) for t in self._randomizable()]}
        if torch.cuda.is_available():
            out["cuda"] = torch.cuda.get_rng_state_all()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(self._numpy_tuple(state["numpy"]))
        random.setstate(_as_tuple(state["python"]))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        transforms = self._randomizable()
        for t, s in zip(transforms, state.get("transforms", [])):
            t.R.set_state(self._numpy_tuple(s))


def _as_tuple(x: Any) -> Any:
    """``random.setstate`` needs tuples where a round trip through a checkpoint may give lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class AtomicCheckpointSaver:
    """Save training state atomically: the last state for resuming, the final weights, the best weights.

    Args:
        save_dir: output folder.
        save_dict: ``{name: object with state_dict()}`` saved in the resume checkpoint (networks, optimisers,
            the trainer itself for epoch/iteration, the best-weights saver for the best metric so far,
            :class:`RandomStates`).
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
        last_filename: str | None = "checkpoint_last.pt",
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

    # the best metric so far travels in the resume checkpoint, so a resumed run does not overwrite a better model
    def state_dict(self) -> dict[str, float]:
        return {"best_value": float(self.best_value)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value = float(state["best_value"])

    def _is_writer(self) -> bool:
        if not self.rank_zero_only or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return True
        return torch.distributed.get_rank() == 0

    def _filenames(self) -> list[str]:
        return [n for n in (self.last_filename, self.final_filename, self.best_filename) if n]

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files (``.<name>.<random>.tmp``) that a killed write of this saver's files left."""
        removed = []
        if not self.save_dir.is_dir() or not self._is_writer():
            return removed
        for name in self._filenames():
            pattern = re.compile(rf"^\.{re.escape(name)}\..+\.tmp$")
            for p in self.save_dir.iterdir():
                if pattern.match(p.name) and p.is_file():
                    p.unlink()
                    removed.append(p)
        if removed:
            logger.info(f"removed {len(removed)} temporary file(s) of interrupted writes in {self.save_dir}")
        return removed

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer (last/final checkpoints), or to an evaluator when only ``best_filename`` is set."""
        self.remove_stale_temporaries()
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

    Loads with ``weights_only=True``. Raises ``FileNotFoundError`` / ``RuntimeError`` naming the file if it is
    missing, corrupt, holds objects other than plain state, or lacks an entry of ``load_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled code
        raise RuntimeError(f"cannot read checkpoint {path} (truncated, not a checkpoint, or holding objects "
                           f"that are not plain state, which is never loaded): {err}") from err
    if not isinstance(ckpt, dict):
        raise RuntimeError(f"checkpoint {path} is not a dict of states (got {type(ckpt).__name__}).")
    missing = [k for k in load_dict if k not in ckpt]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {missing}; it has {sorted(ckpt)}.")
    Checkpoint.load_objects(to_load={k: _unwrap(v) for k, v in load_dict.items()}, checkpoint=ckpt)


class ResumeFromCheckpoint:
    """Resume a trainer and its objects from the checkpoint at ``path`` when ``enabled``.

    The state is loaded when the handler is attached, before ``trainer.run()``, so the engine's first log line
    already says where the run resumes. The configured ``max_epochs`` is kept (a resumed run can be extended);
    a checkpoint already at or past it is an error, since resuming it would restart training from scratch.

    Args:
        path: the resume checkpoint.
        load_dict: ``{name: object}`` as saved (networks, optimisers, trainer, best saver, random states).
        enabled: resume at all (the bundles' ``--resume True``).
        map_location: where tensors are loaded.
        on_missing: ``"raise"`` (default) when ``enabled`` but there is no checkpoint, or ``"warn"`` and train from
            scratch.
        callback: called with the engine after loading.
    """

    def __init__(self, path: str, load_dict: Mapping[str, Any], enabled: bool = True,
                 map_location: str | torch.device = "cpu", on_missing: str = "raise",
                 callback: Callable[[Engine], None] | None = None) -> None:
        if on_missing not in ("warn", "raise"):
            raise ValueError(f"`on_missing` must be 'warn' or 'raise', got {on_missing!r}.")
        self.path, self.load_dict, self.enabled = Path(path), dict(load_dict), enabled
        self.map_location, self.on_missing, self.callback = map_location, on_missing, callback

    def attach(self, engine: Engine) -> None:
        self(engine)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if not self.path.is_file():
            if self.on_missing == "raise":
                raise FileNotFoundError(f"--resume is on but there is no checkpoint at {self.path}: check --ckpt_dir, "
                                        "or start without --resume.")
            engine.logger.warning(f"resume requested but {self.path} does not exist: training from scratch")
            return
        max_epochs = engine.state.max_epochs
        load_checkpoint(self.path, self.load_dict, self.map_location)
        if max_epochs is not None and engine.state.epoch >= max_epochs:
            raise ValueError(f"checkpoint {self.path} is at epoch {engine.state.epoch}, the run's max_epochs is "
                             f"{max_epochs}: nothing to resume. Raise --max_epochs to train longer.")
        engine.state.max_epochs = max_epochs
        engine.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
        if self.callback is not None:
            self.callback(engine)

