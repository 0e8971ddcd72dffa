"""Disease severity from regional anomaly scores: a linear SVM, saved as plain JSON numbers.

Training uses scikit-learn (``Pipeline(StandardScaler, SVC(kernel="linear"))``, TauAD's SVM on ROI-averaged
anomaly maps, with a Platt sigmoid fitted on out-of-fold decision values); what is saved is the scaler's mean and
scale, the hyperplane and the sigmoid, in JSON. Applying it needs only numpy, and loading never unpickles anything, so a model file from an untrusted source
cannot run code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_write_text

__all__ = ["SeverityModel", "fit_severity_model"]

FORMAT = "monai-pie linear severity model v1"


@dataclass(frozen=True)
class SeverityModel:
    """``P(unhealthy) = 1 / (1 + exp(A f + B))`` with ``f = w . (x - mean) / scale + b`` (Platt-scaled linear SVM).

    Attributes:
        features: the name of each input feature (e.g. the Braak regions), in order.
        mean, scale: the scaler's per-feature mean and scale.
        coef, intercept: the SVM hyperplane in scaled units.
        platt_a, platt_b: the sigmoid fitted on the decision values.
        classes: the class names for label 0 and label 1 (e.g. ``("CN", "MCI/AD")``).
        threshold: the probability above which the class is ``classes[1]``.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    platt_a: float
    platt_b: float
    classes: tuple[str, str] = ("CN", "MCI/AD")
    threshold: float = 0.5

    def __post_init__(self) -> None:
        n = len(self.features)
        for name in ("mean", "scale", "coef"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"severity model: `{name}` has {len(getattr(self, name))} values for {n} features.")
        values = [*self.mean, *self.scale, *self.coef, self.intercept, self.platt_a, self.platt_b]
        if not all(math.isfinite(v) for v in values) or any(s <= 0 for s in self.scale):
            raise ValueError("severity model: non-finite numbers or a non-positive scale.")

    def decision(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """SVM decision values of ``x`` ``(N, F)`` or ``(F,)``."""
        arr = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if arr.shape[1] != len(self.features):
            raise ValueError(f"severity model takes {len(self.features)} features {list(self.features)}, got "
                             f"{arr.shape[1]}.")
        if not np.isfinite(arr).all():
            raise ValueError("severity features contain NaN or inf (an empty region?).")
        z = (arr - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.coef) + self.intercept

    def probability(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """``P(classes[1])`` for each row of ``x``."""
        return 1.0 / (1.0 + np.exp(self.platt_a * self.decision(x) + self.platt_b))

    def predict(self, x: Sequence[float]) -> dict[str, Any]:
        """One subject: ``{"class", "probability", "decision"}``."""
        p = float(self.probability(x)[0])
        return {"class": self.classes[int(p > self.threshold)], "probability": p,
                "decision": float(self.decision(x)[0])}

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (atomically)."""
        return atomic_write_text(path, json.dumps({"format": FORMAT, **asdict(self)}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> SeverityModel:
        """Read a model written by :meth:`save`; a missing or malformed file gets an error naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"severity model {path} not found; train it with `monai-pie validate tau` or "
                                    "set the bundle's `severity_path` to null to skip severity.")
        try:
            raw = json.loads(path.read_text())
            if raw.pop("format", None) != FORMAT:
                raise ValueError(f"not a {FORMAT!r} file")
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        except (ValueError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"severity model {path} is malformed: {err}") from err


def fit_severity_model(features: np.ndarray, labels: np.ndarray, names: Sequence[str],
                       classes: tuple[str, str] = ("CN", "MCI/AD"), c: float = 1.0, seed: int = 0) -> SeverityModel:
    """Fit TauAD's SVM on ``features`` ``(N, F)`` with binary ``labels`` ``(N,)`` (1 = unhealthy) and export it.

    Raises:
        ValueError: fewer than 2 subjects per class, or features that are not finite.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels).astype(int)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[1] != len(names):
        raise ValueError(f"features {x.shape}, labels {y.shape} and {len(names)} names do not agree.")
    if not np.isfinite(x).all():
        raise ValueError("severity features contain NaN or inf.")
    if set(np.unique(y)) != {0, 1} or min(np.bincount(y)) < 2:
        raise ValueError(f"need at least 2 subjects of each class (0 and 1), got counts {np.bincount(y).tolist()}.")

    def pipeline() -> Pipeline:
        return Pipeline([("scale", StandardScaler()), ("svm", SVC(kernel="linear", C=c))])

    pipe = pipeline().fit(x, y)
    # Platt scaling on out-of-fold decision values (as CalibratedClassifierCV does), so the probabilities are not
    # fitted to the very decisions they calibrate
    folds = StratifiedKFold(n_splits=min(5, int(min(np.bincount(y)))), shuffle=True, random_state=seed)
    decisions = cross_val_predict(pipeline(), x, y, cv=folds, method="decision_function")
    platt = LogisticRegression().fit(decisions[:, None], y)
    scaler, svm = pipe.named_steps["scale"], pipe.named_steps["svm"]
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return SeverityModel(features=tuple(names), mean=tuple(map(float, scaler.mean_)), scale=tuple(map(float, scale)),
                         coef=tuple(map(float, svm.coef_[0])), intercept=float(svm.intercept_[0]),
                         platt_a=-float(platt.coef_[0, 0]), platt_b=-float(platt.intercept_[0]), classes=classes)
