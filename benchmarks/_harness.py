"""What every benchmark table shares: cases interleaved round-robin with repeats (so machine load falls on all of
them alike), medians and minima, a flag where repeats disagree, and a header naming the command, machine, torch
version, date and load average."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: repeats of one case that spread by more than this share of their median are flagged in the table
SPREAD = 0.25


def load_average() -> str:
    """The 1-minute load average, or ``"n/a"`` where the platform has none."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "n/a"


def interleaved(cases: Mapping[str, Callable[[], Any]], repeats: int,
                log: Callable[[str], None] | None = None) -> dict[str, list[Any]]:
    """Run every case once per repeat, round-robin, ``repeats`` times; warm-ups are the cases' own business.

    Returns:
        ``{case: [result of each repeat]}``.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
    out: dict[str, list[Any]] = {name: [] for name in cases}
    for r in range(repeats):
        for name, run in cases.items():
            out[name].append(run())
            if log is not None:
                log(f"repeat {r + 1}/{repeats} {name}: {out[name][-1]}")
    return out


def median_min_flag(times: Sequence[float]) -> tuple[float, float, str]:
    """Median, minimum and the spread flag (empty when the repeats agree) of one case's times."""
    med = statistics.median(times)
    flag = f"spread > {SPREAD:.0%}" if len(times) > 1 and (max(times) - min(times)) > SPREAD * med else ""
    return med, min(times), flag


def header(title: str, repeats: int, load_before: str, device: str = "cpu") -> list[str]:
    """The lines above a table: what was measured, the command, machine, torch, date and load average."""
    import torch

    command = shlex.join(["python", *[os.path.relpath(sys.argv[0]) if i == 0 else a for i, a in enumerate(sys.argv)]])
    return [
        title, "",
        f"- command: `{command}`",
        f"- machine: {platform.machine()} {platform.processor() or ''}".rstrip() + f", {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, device {device}; torch {torch.__version__}",
        f"- date: {datetime.date.today().isoformat()}; load average before {load_before}, after {load_average()}",
        f"- cases interleaved round-robin, {repeats} repeats each (warm-up excluded); median and min; rows whose "
        f"repeats spread by more than {SPREAD:.0%} of the median are flagged", "",
    ]
