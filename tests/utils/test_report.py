"""Plain-JSON reports: ``json_safe`` on tensors, numpy values, paths and non-finite numbers; per-round rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from monai_pie.utils.report import json_safe, round_rows


def test_json_safe_nested_structure_becomes_plain_json():
    x = {
        "loss": torch.tensor(0.5),
        "per_item": torch.tensor([1.0, float("nan"), 3.0]),
        "count": np.int64(7),
        "flag": np.bool_(True),
        "mean": np.float32(0.25),
        "table": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "bad": [float("nan"), float("inf"), -float("inf"), np.float64("nan")],
        "where": Path("/data/out"),
        "nested": {"t": (torch.tensor([2]), Path("rel/x.png")), 3: None},
        "text": "ok",
    }
    out = json_safe(x)
    assert out == {
        "loss": 0.5,
        "per_item": [1.0, None, 3.0],
        "count": 7,
        "flag": True,
        "mean": 0.25,
        "table": [[1, 2], [3, 4]],
        "bad": [None, None, None, None],
        "where": "/data/out",
        "nested": {"t": [[2], "rel/x.png"], "3": None},
        "text": "ok",
    }
    assert type(out["count"]) is int and type(out["mean"]) is float and type(out["flag"]) is bool
    assert type(out["table"][0][0]) is int
    json.dumps(out, allow_nan=False)  # raises on NaN / inf / numpy / tensor values


def test_json_safe_zero_dim_tensors_and_arrays_give_scalars():
    assert json_safe(torch.tensor(3)) == 3 and type(json_safe(torch.tensor(3))) is int
    assert json_safe(torch.tensor(float("inf"))) is None
    assert json_safe(np.array(2.5)) == 2.5
    assert json_safe(np.array(float("nan"))) is None


def test_json_safe_tensor_with_grad_and_float_nan_array():
    t = torch.tensor([0.5, 1.5], requires_grad=True) * 2
    assert json_safe(t) == [1.0, 3.0]
    assert json_safe(np.array([np.nan, 1.0])) == [None, 1.0]


def test_json_safe_leaves_plain_values_alone():
    assert json_safe(None) is None
    assert json_safe("nan") == "nan"
    assert json_safe(5) == 5 and json_safe(True) is True
    assert json_safe(1.5) == 1.5


def test_round_rows_from_n_by_b_tensors():
    stats = {
        "stage": torch.tensor([[0.1, 0.2], [0.3, float("nan")], [0.5, 0.6]]),
        "ssim": torch.tensor([[1.0, 0.9], [0.8, 0.7], [float("inf"), 0.5]], dtype=torch.float64),
    }
    rows = round_rows(stats)
    assert len(rows) == 3
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["round", "stage", "ssim"]
    assert rows[0]["stage"] == [torch.tensor(0.1).item(), torch.tensor(0.2).item()]
    assert rows[1]["stage"][1] is None
    assert rows[2]["ssim"] == [None, 0.5]
    assert all(isinstance(v, list) and len(v) == 2 for r in rows for k, v in r.items() if k != "round")
    json.dumps(rows, allow_nan=False)


def test_round_rows_empty_stats():
    assert round_rows({}) == []


def test_round_rows_single_item_batch():
    rows = round_rows({"volume": torch.tensor([[10.0], [11.0]])})
    assert rows == [{"round": 1, "volume": [10.0]}, {"round": 2, "volume": [11.0]}]
