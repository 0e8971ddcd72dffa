"""Schedules of the sparse back-propagation keep fraction (ssProp) and an ignite handler that applies them.

:class:`SparseKeepSchedule` is a pure function of the step index (epoch or iteration), so a resumed run gets the
same values as an uninterrupted one. :class:`SparseBackpropHandler` converts a network if needed and sets its keep
fraction at ``EPOCH_STARTED`` or ``ITERATION_STARTED`` of a ``monai.engines.SupervisedTrainer`` (or any ignite
engine); it takes plain keyword arguments so a MONAI bundle config can build it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from ignite.engine import Engine, Events

from monai_pie.networks.sparse_backprop import (
    _check_keep,
    convert_to_sparse_backprop,
    set_sparse_keep,
    sparse_backprop_modules,
)

__all__ = ["SPARSE_KEEP_MODES", "SparseBackpropHandler", "SparseKeepSchedule"]

SPARSE_KEEP_MODES = ("constant", "linear", "cosine", "bar", "interleave")


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


class SparseKeepSchedule:
    """Keep fraction of the sparse backward as a function of a 0-based step (epoch or iteration).

    The first ``warmup`` steps are dense (keep 1). After them, with ``s = step - warmup`` and
    ``span = total - warmup``:

    - ``constant``: ``keep``.
    - ``linear``: from ``start_keep`` at ``s = 0`` to ``keep`` at ``s = span - 1``, then ``keep``.
    - ``cosine``: cosine decay from ``start_keep`` to ``keep`` over the same range.
    - ``bar``: ``start_keep`` for the first ``span // 2`` steps, then ``keep`` (dense then sparse by default).
    - ``interleave``: dense and sparse alternate: in each cycle of ``period`` steps the first ``period // 2`` are
      dense (keep 1), the rest use ``keep``. ``keep=0.2, period=2`` is the paper's headline setting, mean keep 0.6.

    Args:
        mode: One of ``constant``, ``linear``, ``cosine``, ``bar``, ``interleave``.
        keep: Keep fraction of the sparse steps (the final value for ``linear``/``cosine``/``bar``), in (0, 1].
        warmup: Number of dense steps at the start.
        period: Cycle length of ``interleave`` in steps, >= 2.
        total: Number of steps of the run, needed by ``linear``, ``cosine`` and ``bar``.
        start_keep: First value of ``linear``/``cosine``/``bar`` after warm-up, in (0, 1].
    """

    def __init__(
        self,
        mode: str = "interleave",
        keep: float = 0.2,
        warmup: int = 0,
        period: int = 2,
        total: int | None = None,
        start_keep: float = 1.0,
    ) -> None:
        if mode not in SPARSE_KEEP_MODES:
            raise ValueError(f"`mode` must be one of {SPARSE_KEEP_MODES}, got {mode!r}.")
        self.mode = mode
        self.keep = _check_keep(keep, "keep")
        self.start_keep = _check_keep(start_keep, "start_keep")
        self.warmup = _check_int(warmup, "warmup", 0)
        self.period = _check_int(period, "period", 2)
        if total is not None:
            total = _check_int(total, "total", 1)
        elif mode in ("linear", "cosine", "bar"):
            raise ValueError(f"`total` (number of epochs or iterations) is required by mode {mode!r}.")
        self.total = total

    def value(self, step: int) -> float:
        """Keep fraction at 0-based ``step``; a pure function of ``step``."""
        step = _check_int(step, "step", 0)
        if step < self.warmup:
            return 1.0
        s = step - self.warmup
        if self.mode == "constant":
            return self.keep
        if self.mode == "interleave":
            return 1.0 if s % self.period < self.period // 2 else self.keep
        span = max(1, self.total - self.warmup)  # type: ignore[operator]
        if self.mode == "bar":
            return self.start_keep if s < span // 2 else self.keep
        p = min(1.0, s / max(1, span - 1))
        if self.mode == "linear":
            return self.start_keep + (self.keep - self.start_keep) * p
        return self.keep + 0.5 * (self.start_keep - self.keep) * (1.0 + math.cos(math.pi * p))

    __call__ = value

    def mean_keep(self, total: int | None = None) -> float:
        """Mean keep over steps ``0 .. total - 1`` (default ``self.total``).

        This is the fraction of the dense backward-convolution FLOPs spent, up to channel rounding, for keeps of at
        most 0.5; layers keeping more than half their channels run the dense backward
        (``monai_pie.networks.sparse_backprop.SPARSE_MAX_SHARE``).
        """
        total = self.total if total is None else total
        total = _check_int(total, "total", 1)
        return sum(self.value(i) for i in range(total)) / total

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, keep={self.keep:g}, warmup={self.warmup}, "
            f"period={self.period}, total={self.total}, start_keep={self.start_keep:g})"
        )


class SparseBackpropHandler:
    """Ignite/MONAI handler that sets the sparse-backward keep fraction of ``network`` on a schedule.

    At construction the network's ``nn.Conv1d/2d/3d`` modules are converted (in place, parameters untouched) unless it
    already holds converted ones. At ``Events.STARTED`` the schedule is built (``max_epochs`` defaults to the engine's;
    per-iteration schedules count ``warmup_epochs`` and ``max_epochs`` in iterations of ``epoch_length``). At
    ``EPOCH_STARTED`` (or ``ITERATION_STARTED`` with ``per_iteration=True``) the keep value is set on the network,
    stored in ``engine.state.sparse_keep`` (log it with ``TensorBoardStatsHandler(state_attributes=["sparse_keep"])``)
    and logged. At ``COMPLETED`` the network is set back to dense (keep 1) so later fine-tuning is not sparse by
    surprise.

    Example bundle config (``train#handlers``)::

        {"_target_": "monai_pie.engines.SparseBackpropHandler", "network": "@network", "mode": "interleave",
         "keep": 0.2, "warmup_epochs": 0, "period": 2, "exclude": ["out"]}

    Args:
        network: The trained model (a ``DataParallel``/DDP wrapper is fine).
        mode: Schedule mode, see :class:`SparseKeepSchedule`.
        keep: Keep fraction of the sparse epochs/iterations, in (0, 1].
        warmup_epochs: Dense epochs at the start.
        period: ``interleave`` cycle length, in epochs (iterations if ``per_iteration``).
        per_iteration: Update at every iteration instead of every epoch.
        max_epochs: Run length for ``linear``/``cosine``/``bar``; default: the engine's ``max_epochs``.
        start_keep: First value of ``linear``/``cosine``/``bar``.
        exclude: Module names or glob patterns kept dense when converting (e.g. the output convolution).
        channel_multiple: Kept channels rounded up to a multiple of this when converting; None: ``CHANNEL_BLOCK``
            (16, the block oneDNN and cuDNN compute in, so sparse steps are never slower than dense ones).
        name: Logger name.
    """

    def __init__(
        self,
        network: nn.Module,
        mode: str = "interleave",
        keep: float = 0.2,
        warmup_epochs: int = 0,
        period: int = 2,
        per_iteration: bool = False,
        max_epochs: int | None = None,
        start_keep: float = 1.0,
        exclude: str | Sequence[str] | None = None,
        channel_multiple: int | None = None,
        name: str | None = "monai_pie.SparseBackpropHandler",
    ) -> None:
        if not isinstance(network, nn.Module):
            raise ValueError(f"`network` must be a torch.nn.Module, got {type(network).__name__}.")
        # validate every argument now (bundle configs fail at parse time, not after the first epoch)
        total = None if max_epochs is None else _check_int(max_epochs, "max_epochs", 1)
        SparseKeepSchedule(mode, keep, _check_int(warmup_epochs, "warmup_epochs", 0), period, total or 1, start_keep)
        if not isinstance(per_iteration, bool):
            raise ValueError(f"`per_iteration` must be a bool, got {per_iteration!r}.")
        self.network = network
        self.mode, self.keep, self.start_keep = mode, float(keep), float(start_keep)
        self.warmup_epochs, self.period, self.per_iteration, self.max_epochs = warmup_epochs, period, per_iteration, total
        if not sparse_backprop_modules(network):
            convert_to_sparse_backprop(network, keep=1.0, exclude=exclude, channel_multiple=channel_multiple)
            if not sparse_backprop_modules(network):
                raise ValueError("`network` has no nn.Conv1d/2d/3d to convert to sparse back-propagation.")
        self.schedule: SparseKeepSchedule | None = None
        self.history: list[tuple[int, float]] = []
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        """Register the handler's callbacks on ``engine``."""
        engine.add_event_handler(Events.STARTED, self._build_schedule)
        event = Events.ITERATION_STARTED if self.per_iteration else Events.EPOCH_STARTED
        engine.add_event_handler(event, self)
        engine.add_event_handler(Events.COMPLETED, self._set_dense)

    def _build_schedule(self, engine: Engine) -> None:
        max_epochs = self.max_epochs or engine.state.max_epochs
        scale = 1
        if self.per_iteration:
            if not engine.state.epoch_length:
                raise ValueError("per-iteration sparse keep schedules need a known `epoch_length` on the engine.")
            scale = int(engine.state.epoch_length)
        self.schedule = SparseKeepSchedule(
            mode=self.mode,
            keep=self.keep,
            warmup=self.warmup_epochs * scale,
            period=self.period,
            total=int(max_epochs) * scale if max_epochs else None,
            start_keep=self.start_keep,
        )

    def _set_dense(self, engine: Engine) -> None:
        set_sparse_keep(self.network, 1.0)

    def __call__(self, engine: Engine) -> None:
        """Set the keep fraction for the epoch or iteration that is starting (ignite counters are 1-based)."""
        if self.schedule is None:
            self._build_schedule(engine)
        step = (engine.state.iteration if self.per_iteration else engine.state.epoch) - 1
        keep = self.schedule.value(step)  # type: ignore[union-attr]
        set_sparse_keep(self.network, keep)
        engine.state.sparse_keep = keep  # type: ignore[attr-defined]
        self.history.append((step, keep))
        unit = "iteration" if self.per_iteration else "epoch"
        log = self.logger.debug if self.per_iteration else self.logger.info
        log(f"sparse back-propagation: {unit} {step + 1} keep={keep:.4g}")
