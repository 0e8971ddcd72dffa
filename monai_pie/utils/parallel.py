"""One way to spread independent CPU-heavy jobs (cohort synthesis, validation subjects, bundle runs) over processes."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from .checks import check_positive_int

__all__ = ["process_map"]

T = TypeVar("T")


def _limit_threads(threads: int) -> None:
    """Worker initialiser: ``threads`` intra-op threads each, so ``workers`` processes do not oversubscribe the CPUs
    (set before torch / numpy start their thread pools in the fresh process)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def process_map(fn: Callable[..., T], args: Iterable[Sequence[Any]], workers: int = 1, desc: str | None = None,
                progress: bool = True) -> list[T]:
    """``[fn(*a) for a in args]``, in order, over ``workers`` processes (``1``: in this process).

    Workers are started with ``spawn`` (never ``fork``: forking a process that holds OpenMP or CUDA state can hang), so
    ``fn`` must be importable at module level and its arguments picklable. Each worker runs with
    ``cpu_count // workers`` torch threads (at least one). An exception in a job is raised here, after the pool stops.

    Args:
        fn: The job.
        args: One argument tuple per job.
        workers: Processes (>= 1).
        desc: Progress bar label; ``None`` shows none.
        progress: Show the progress bar (with ``desc``).
    """
    from tqdm.auto import tqdm

    check_positive_int(workers, "workers")
    args = [tuple(a) for a in args]
    bar = tqdm(total=len(args), desc=desc, leave=False, disable=not (progress and desc))
    try:
        if workers == 1 or len(args) <= 1:
            out = []
            for a in args:
                out.append(fn(*a))
                bar.update(1)
            return out
        workers = min(workers, len(args))
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_limit_threads, initargs=(threads,)) as pool:
            futures = [pool.submit(fn, *a) for a in args]
            for f in futures:
                f.result()
                bar.update(1)
            return [f.result() for f in futures]
    finally:
        bar.close()
