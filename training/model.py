"""The trained direction model: XGBoost classifier + calibrator + XGBoost quantile model.

One object serves all three answers for a batch of feature rows: the calibrated probability that
the price is higher in H days, the quantiles of the H-day log return (and the price targets
``price * exp(q)`` when a ``price`` column is given), and XGBoost's own per-feature contributions
(exact TreeSHAP values, in log-odds of the uncalibrated classifier).

In MLflow it is logged as a pyfunc (:class:`DirectionPyfunc`) whose artifacts are the two boosters
(XGBoost JSON) and a small JSON with the calibrator and metadata. Serving loads it with::

    model = mlflow.pyfunc.load_model("models:/khalsi-direction-1d@champion")
    out = model.predict(features_df)                    # p_up, p_up_raw, q10/q50/q90, price targets
    out = model.predict(features_df, params={"contributions": True})   # + contrib_<feature> columns
    direction = model.unwrap_python_model().model      # the DirectionModel itself (no pandas detour)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb
from mlflow.pyfunc.model import PythonModel

from training.config import CalibrationMethod

FloatArray = npt.NDArray[np.float64]
# Calibrated probabilities never reach exactly 0 or 1: an isotonic step at the edge of the
# calibration data would otherwise make one wrong call cost an infinite log loss.
PROBABILITY_FLOOR = 1e-3


@dataclass(frozen=True)
class Calibrator:
    """A monotone map from raw classifier probability to calibrated probability."""

    method: CalibrationMethod
    # Isotonic: the fitted step points (interpolated linearly, as scikit-learn does).
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    # Sigmoid (Platt): p = 1 / (1 + exp(-(a * logit(raw) + b))).
    a: float = 1.0
    b: float = 0.0

    def apply(self, raw: FloatArray) -> FloatArray:
        """Calibrated probabilities for raw classifier probabilities."""
        if self.method is CalibrationMethod.ISOTONIC:
            calibrated = np.interp(raw, np.asarray(self.x), np.asarray(self.y))
        else:
            logit = np.log(np.clip(raw, 1e-9, 1 - 1e-9) / np.clip(1 - raw, 1e-9, 1))
            calibrated = 1.0 / (1.0 + np.exp(-(self.a * logit + self.b)))
        clipped: FloatArray = np.clip(calibrated, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR).astype(np.float64)
        return clipped

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method.value, "x": self.x, "y": self.y, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Calibrator:
        return cls(
            method=CalibrationMethod(raw["method"]),
            x=[float(v) for v in raw["x"]],
            y=[float(v) for v in raw["y"]],
            a=float(raw["a"]),
            b=float(raw["b"]),
        )


def fit_calibrator(method: CalibrationMethod, raw: FloatArray, y: FloatArray) -> Calibrator:
    """Fit a calibrator on out-of-fold raw probabilities and their labels."""
    if len(raw) < 20 or len(np.unique(y)) < 2:
        raise ValueError(f"too few out-of-fold predictions to calibrate ({len(raw)} rows)")
    if method is CalibrationMethod.ISOTONIC:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        return Calibrator(
            method=method,
            x=[float(v) for v in iso.X_thresholds_],
            y=[float(v) for v in iso.y_thresholds_],
        )
    from sklearn.linear_model import LogisticRegression

    logit = np.log(np.clip(raw, 1e-9, 1 - 1e-9) / np.clip(1 - raw, 1e-9, 1)).reshape(-1, 1)
    platt = LogisticRegression(C=1e6).fit(logit, y.astype(np.int64))
    return Calibrator(method=method, a=float(platt.coef_[0, 0]), b=float(platt.intercept_[0]))


def quantile_column(alpha: float) -> str:
    """The output column of a return quantile, e.g. ``q10`` for 0.1."""
    return f"q{round(alpha * 100):02d}"


@dataclass
class DirectionModel:
    """Everything needed to answer for one horizon."""

    horizon_days: int
    feature_names: list[str]
    classifier: xgb.Booster
    calibrator: Calibrator
    quantile_model: xgb.Booster
    alphas: list[float]
    metadata: dict[str, Any] = field(default_factory=dict)

    def _matrix(self, features: FloatArray) -> xgb.DMatrix:
        return xgb.DMatrix(features, feature_names=self.feature_names, nthread=1)

    def raw_probability(self, features: FloatArray) -> FloatArray:
        """The classifier's uncalibrated probability of "up"."""
        return np.asarray(self.classifier.predict(self._matrix(features)), dtype=np.float64)

    def probability(self, features: FloatArray) -> FloatArray:
        """The calibrated probability of "up"."""
        return self.calibrator.apply(self.raw_probability(features))

    def return_quantiles(self, features: FloatArray) -> FloatArray:
        """H-day log-return quantiles, one column per alpha (sorted per row, so they never cross)."""
        out = np.asarray(self.quantile_model.predict(self._matrix(features)), dtype=np.float64)
        return np.sort(out.reshape(len(features), len(self.alphas)), axis=1)

    def contributions(self, features: FloatArray) -> FloatArray:
        """Per-feature TreeSHAP contributions in log-odds; the last column is the bias."""
        return np.asarray(self.classifier.predict(self._matrix(features), pred_contribs=True), dtype=np.float64)

    def feature_array(self, frame: pd.DataFrame) -> FloatArray:
        """The model's feature columns of ``frame`` as floats (missing values as NaN)."""
        missing = [name for name in self.feature_names if name not in frame.columns]
        if missing:
            raise ValueError(f"input lacks feature columns: {', '.join(missing)}")
        return frame[self.feature_names].astype("float64").to_numpy()

    def predict_frame(self, frame: pd.DataFrame, *, contributions: bool = False) -> pd.DataFrame:
        """Probabilities, quantiles and (with a ``price`` column) price targets for each row."""
        features = self.feature_array(frame)
        raw = self.raw_probability(features)
        out = pd.DataFrame({"p_up": self.calibrator.apply(raw), "p_up_raw": raw}, index=frame.index)
        quantiles = self.return_quantiles(features)
        for i, alpha in enumerate(self.alphas):
            out[quantile_column(alpha)] = quantiles[:, i]
        if "price" in frame.columns:
            price = frame["price"].astype("float64").to_numpy()
            for i, alpha in enumerate(self.alphas):
                out[f"price_{quantile_column(alpha)}"] = price * np.exp(quantiles[:, i])
        if contributions:
            contribs = self.contributions(features)
            for j, name in enumerate(self.feature_names):
                out[f"contrib_{name}"] = contribs[:, j]
            out["contrib_bias"] = contribs[:, -1]
        return out

    def save(self, folder: Path) -> dict[str, str]:
        """Write the boosters and metadata into ``folder``; returns the MLflow artifacts mapping."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "classifier": folder / "classifier.json",
            "quantile_model": folder / "quantile_model.json",
            "metadata": folder / "metadata.json",
        }
        self.classifier.save_model(str(paths["classifier"]))
        self.quantile_model.save_model(str(paths["quantile_model"]))
        meta = {
            "horizon_days": self.horizon_days,
            "feature_names": self.feature_names,
            "alphas": self.alphas,
            "calibrator": self.calibrator.as_dict(),
            "metadata": self.metadata,
        }
        paths["metadata"].write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        return {key: str(path) for key, path in paths.items()}

    @classmethod
    def load(cls, artifacts: dict[str, str]) -> DirectionModel:
        """Read a model written by :meth:`save` (paths keyed like its return value)."""
        meta = json.loads(Path(artifacts["metadata"]).read_text(encoding="utf-8"))
        classifier = xgb.Booster()
        classifier.load_model(artifacts["classifier"])
        quantile_model = xgb.Booster()
        quantile_model.load_model(artifacts["quantile_model"])
        for booster in (classifier, quantile_model):
            booster.set_param({"nthread": 1})
        return cls(
            horizon_days=int(meta["horizon_days"]),
            feature_names=list(meta["feature_names"]),
            classifier=classifier,
            calibrator=Calibrator.from_dict(meta["calibrator"]),
            quantile_model=quantile_model,
            alphas=[float(a) for a in meta["alphas"]],
            metadata=dict(meta.get("metadata", {})),
        )


class DirectionPyfunc(PythonModel):
    """MLflow pyfunc wrapper: loads the boosters once, answers ``predict`` with a DataFrame."""

    model: DirectionModel

    def load_context(self, context: Any) -> None:
        """Load the boosters and calibrator from the logged artifacts."""
        self.model = DirectionModel.load(dict(context.artifacts))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Calibrated probabilities, return quantiles, price targets (and contributions if asked)."""
        contributions = bool((params or {}).get("contributions", False))
        return self.model.predict_frame(pd.DataFrame(model_input), contributions=contributions)
