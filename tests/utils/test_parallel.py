"""process_map: ordered results, errors raised here, a clear error for bad workers. The spawned-process path is
exercised by the brain cohort's ``workers`` test (tests/data/synthetic/test_brain.py), which pays the start-up of
processes that import the package once."""

from __future__ import annotations

import operator

import pytest

from monai_pie.utils.parallel import process_map


def test_results_come_back_in_order_and_a_failing_job_raises_its_own_error():
    args = [(i, 10 * i) for i in range(7)]
    assert process_map(operator.add, args, workers=1) == [11 * i for i in range(7)]
    assert process_map(operator.add, args[:1], workers=4) == [0]  # one job: no pool
    with pytest.raises(ZeroDivisionError):
        process_map(operator.truediv, [(1, 1), (1, 0)], workers=1, progress=False)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        process_map(operator.add, [(1, 2)], workers=0)
