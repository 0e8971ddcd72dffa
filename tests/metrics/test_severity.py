"""The severity SVM: fitted with scikit-learn, saved as JSON numbers, applied with numpy to the same decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_pie.metrics.severity import SeverityModel, fit_severity_model


def cohort(n=40, shift=1.5, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, (n, 3)), rng.normal(shift, 1, (n, 3))])
    return x, np.r_[np.zeros(n), np.ones(n)]


def test_fit_save_load_apply_round_trip(tmp_path):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = cohort()
    model = fit_severity_model(x, y, ["entorhinal", "temporal", "parietal"])
    pipe = Pipeline([("s", StandardScaler()), ("svm", SVC(kernel="linear"))]).fit(x, y)
    assert np.allclose(model.decision(x), pipe.decision_function(x))  # the exported hyperplane is sklearn's
    p = model.probability(x)
    assert ((p > 0.5) == (model.decision(x) > 0)).mean() > 0.95  # the sigmoid rises with the decision
    assert p[y == 1].mean() > 0.7 > 0.3 > p[y == 0].mean()
    path = model.save(tmp_path / "severity.json")
    assert json.loads(path.read_text())["format"].startswith("monai-pie")
    again = SeverityModel.load(path)
    assert again == model and again.predict(x[-1])["class"] in ("CN", "MCI/AD")


def test_an_uninformative_cohort_gives_probabilities_near_the_base_rate():
    x, y = cohort(shift=0.0, seed=1)
    p = fit_severity_model(x, y, ["a", "b", "c"]).probability(x)
    assert abs(p.mean() - 0.5) < 0.15 and p.std() < 0.2


def test_errors_name_the_problem(tmp_path):
    x, y = cohort()
    with pytest.raises(ValueError, match="at least 2 subjects of each class"):
        fit_severity_model(x, np.zeros(len(y)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="do not agree"):
        fit_severity_model(x, y, ["a", "b"])
    model = fit_severity_model(x, y, ["a", "b", "c"])
    with pytest.raises(ValueError, match="takes 3 features"):
        model.decision([1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        model.decision([1.0, np.nan, 2.0])
    with pytest.raises(FileNotFoundError, match="not found"):
        SeverityModel.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": "pickle"}')
    with pytest.raises(ValueError, match="malformed"):
        SeverityModel.load(tmp_path / "bad.json")
