"""Probability and quantile metrics, with block-bootstrap intervals by date.

Every metric takes optional per-row weights so that a bootstrap resample is just a weight vector
(how many times each row was drawn): no copies, and AUC/ECE reuse one sort and one binning.

The bootstrap is a moving-block bootstrap over days (declared in the config): it draws blocks of
``block_days`` consecutive evaluation days with replacement until it has as many days as the
sample, and keeps every row (every coin) of a drawn day. Rows of one day share the market's move
and overlapping H-day labels are correlated across days, so resampling rows independently would
give intervals that are far too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from training.config import EvaluationConfig

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
EPS = 1e-6

PROBABILITY_METRICS = ("brier", "log_loss", "auc", "accuracy", "ece")


def _weights(n: int, weights: FloatArray | None) -> FloatArray:
    return np.ones(n, dtype=np.float64) if weights is None else weights


def brier(y: FloatArray, p: FloatArray, weights: FloatArray | None = None) -> float:
    """Mean squared error of the probability (lower is better; 0.25 for a constant 0.5)."""
    w = _weights(len(y), weights)
    return float(np.sum(w * (p - y) ** 2) / np.sum(w))


def log_loss(y: FloatArray, p: FloatArray, weights: FloatArray | None = None) -> float:
    """Mean negative log-likelihood (probabilities clipped to [1e-6, 1 - 1e-6])."""
    w = _weights(len(y), weights)
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.sum(w * (y * np.log(q) + (1 - y) * np.log(1 - q))) / np.sum(w))


def accuracy(y: FloatArray, p: FloatArray, weights: FloatArray | None = None) -> float:
    """Share of rows where p > 0.5 agrees with the label."""
    w = _weights(len(y), weights)
    return float(np.sum(w * ((p > 0.5) == (y > 0.5))) / np.sum(w))


class _AucIndex:
    """One sort of the scores, reused for every weighted AUC (ties count half)."""

    def __init__(self, p: FloatArray) -> None:
        self.order = np.argsort(p, kind="stable")
        _, self.group = np.unique(p[self.order], return_inverse=True)
        self.n_groups = int(self.group.max()) + 1 if len(p) else 0

    def auc(self, y: FloatArray, w: FloatArray) -> float:
        ys, ws = y[self.order], w[self.order]
        positive = np.bincount(self.group, weights=ws * ys, minlength=self.n_groups)
        negative = np.bincount(self.group, weights=ws * (1 - ys), minlength=self.n_groups)
        total_pos, total_neg = positive.sum(), negative.sum()
        if total_pos <= 0 or total_neg <= 0:
            return math.nan
        negatives_below = np.cumsum(negative) - negative
        return float(np.sum(positive * (negatives_below + 0.5 * negative)) / (total_pos * total_neg))


def roc_auc(y: FloatArray, p: FloatArray, weights: FloatArray | None = None) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    return _AucIndex(p).auc(y, _weights(len(y), weights))


def _bins(p: FloatArray, n_bins: int) -> IntArray:
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def expected_calibration_error(
    y: FloatArray, p: FloatArray, weights: FloatArray | None = None, *, n_bins: int = 10
) -> float:
    """ECE over equal-width probability bins: sum of |mean p - mean y| weighted by bin share."""
    return _ece_from_bins(y, p, _weights(len(y), weights), _bins(p, n_bins), n_bins)


def _ece_from_bins(y: FloatArray, p: FloatArray, w: FloatArray, bins: IntArray, n_bins: int) -> float:
    count = np.bincount(bins, weights=w, minlength=n_bins)
    sum_p = np.bincount(bins, weights=w * p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=w * y, minlength=n_bins)
    total = count.sum()
    filled = count > 0
    return float(np.sum(np.abs(sum_p[filled] - sum_y[filled])) / total)


def reliability_curve(y: FloatArray, p: FloatArray, *, n_bins: int = 10) -> dict[str, list[float]]:
    """Per equal-width bin: mean predicted probability, observed frequency and row count."""
    bins = _bins(p, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    filled = count > 0
    return {
        "mean_predicted": (sum_p[filled] / count[filled]).tolist(),
        "observed": (sum_y[filled] / count[filled]).tolist(),
        "count": count[filled].tolist(),
    }


@dataclass(frozen=True)
class Estimate:
    """A metric on the full sample and its bootstrap interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


class ProbabilityScorer:
    """All probability metrics of one prediction vector, fast under any row weights."""

    def __init__(self, y: FloatArray, p: FloatArray, *, n_bins: int) -> None:
        self.y, self.p, self.n_bins = y, p, n_bins
        self._auc = _AucIndex(p)
        self._bins = _bins(p, n_bins)
        self._clipped = np.clip(p, EPS, 1 - EPS)

    def scores(self, w: FloatArray) -> dict[str, float]:
        y, p, total = self.y, self.p, float(np.sum(w))
        q = self._clipped
        return {
            "brier": float(np.sum(w * (p - y) ** 2) / total),
            "log_loss": float(-np.sum(w * (y * np.log(q) + (1 - y) * np.log(1 - q))) / total),
            "auc": self._auc.auc(y, w),
            "accuracy": float(np.sum(w * ((p > 0.5) == (y > 0.5))) / total),
            "ece": _ece_from_bins(y, p, w, self._bins, self.n_bins),
        }


def block_bootstrap_weights(day_index: IntArray, *, block_days: int, n_resamples: int, seed: int) -> list[FloatArray]:
    """Row weights of ``n_resamples`` moving-block bootstrap draws over the days in ``day_index``.

    ``day_index`` gives each row's position among the sorted distinct evaluation days (0..D-1).
    """
    n_days = int(day_index.max()) + 1 if len(day_index) else 0
    if n_days == 0:
        return []
    block = min(block_days, n_days)
    n_blocks = math.ceil(n_days / block)
    rng = np.random.default_rng(seed)
    draws: list[FloatArray] = []
    for _ in range(n_resamples):
        starts = rng.integers(0, n_days - block + 1, size=n_blocks)
        days = (starts[:, None] + np.arange(block)[None, :]).ravel()[:n_days]
        day_weight = np.bincount(days, minlength=n_days).astype(np.float64)
        draws.append(day_weight[day_index])
    return draws


def _interval(values: list[float], confidence: float) -> tuple[float, float]:
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    return float(np.quantile(finite, tail)), float(np.quantile(finite, 1 - tail))


def score_with_intervals(
    y: FloatArray,
    predictions: Mapping[str, FloatArray],
    day_index: IntArray,
    *,
    reference: str,
    n_bins: int,
    block_days: int,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, dict[str, Estimate]]:
    """Every metric of every prediction vector, plus the Brier skill score vs ``reference``.

    All vectors are scored on the same bootstrap draws, so differences between them (and the
    skill score, a ratio of two Brier scores on one draw) have paired intervals.
    """
    scorers = {name: ProbabilityScorer(y, p, n_bins=n_bins) for name, p in predictions.items()}
    full = np.ones(len(y), dtype=np.float64)
    point = {name: scorer.scores(full) for name, scorer in scorers.items()}
    for name in point:
        point[name]["brier_skill"] = 1 - point[name]["brier"] / point[reference]["brier"]
    samples: dict[str, dict[str, list[float]]] = {name: {metric: [] for metric in point[name]} for name in point}
    for w in block_bootstrap_weights(day_index, block_days=block_days, n_resamples=n_resamples, seed=seed):
        drawn = {name: scorer.scores(w) for name, scorer in scorers.items()}
        for name, scores in drawn.items():
            scores["brier_skill"] = 1 - scores["brier"] / drawn[reference]["brier"]
            for metric, value in scores.items():
                samples[name][metric].append(value)
    return {
        name: {
            metric: Estimate(value, *_interval(samples[name][metric], confidence))
            for metric, value in point[name].items()
        }
        for name in point
    }


def pinball_loss(y: FloatArray, q: FloatArray, alpha: float) -> float:
    """Mean quantile (pinball) loss of predicted quantile ``q`` at level ``alpha``."""
    diff = y - q
    return float(np.mean(np.maximum(alpha * diff, (alpha - 1) * diff)))


def quantile_report(y: FloatArray, quantiles: FloatArray, alphas: list[float]) -> dict[str, float]:
    """Pinball loss per level, the outer interval's coverage and width, and the median's MAE."""
    report = {
        f"pinball_{quantile_name(alpha)}": pinball_loss(y, quantiles[:, i], alpha) for i, alpha in enumerate(alphas)
    }
    low, high = quantiles[:, 0], quantiles[:, -1]
    report["interval_coverage"] = float(np.mean((y >= low) & (y <= high)))
    report["interval_nominal"] = float(alphas[-1] - alphas[0])
    report["interval_mean_width"] = float(np.mean(high - low))
    if 0.5 in alphas:
        report["median_abs_error"] = float(np.mean(np.abs(y - quantiles[:, alphas.index(0.5)])))
    return report


PREDICTORS = ("model", "raw", "coin_flip", "base_rate", "momentum")
BASELINE_NAMES = ("coin_flip", "base_rate", "momentum")


@dataclass
class EvaluationSummary:
    """Out-of-sample scores of the model and the baselines, overall (with intervals) and per fold."""

    overall: dict[str, dict[str, Estimate]]
    per_fold: list[dict[str, Any]]
    quantiles: dict[str, float]
    n_predictions: int
    first_day: str
    last_day: str
    bootstrap: dict[str, Any]

    def mlflow_metrics(self) -> dict[str, float]:
        """Flat metrics: ``brier``/``brier_low``/``brier_high`` for the model, ``<baseline>_<metric>``..."""
        flat: dict[str, float] = {"n_predictions": float(self.n_predictions)}
        for name, metrics in self.overall.items():
            prefix = "" if name == "model" else f"{name}_"
            for metric, estimate in metrics.items():
                flat[f"{prefix}{metric}"] = estimate.value
                flat[f"{prefix}{metric}_low"] = estimate.low
                flat[f"{prefix}{metric}_high"] = estimate.high
        flat.update({f"quantile_{key}": value for key, value in self.quantiles.items()})
        return {key: value for key, value in flat.items() if math.isfinite(value)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_predictions": self.n_predictions,
            "first_day": self.first_day,
            "last_day": self.last_day,
            "bootstrap": self.bootstrap,
            "overall": {
                name: {metric: estimate.as_dict() for metric, estimate in metrics.items()}
                for name, metrics in self.overall.items()
            },
            "quantiles": self.quantiles,
            "per_fold": self.per_fold,
        }


def day_positions(timestamps: pl.Series) -> IntArray:
    """Each row's position among the sorted distinct days (the bootstrap's resampling unit)."""
    return timestamps.rank("dense").cast(pl.Int64).to_numpy().astype(np.int64) - 1


def summarize_predictions(
    predictions: pl.DataFrame, *, evaluation: EvaluationConfig, alphas: list[float] | None = None
) -> EvaluationSummary:
    """Score a predictions frame (``y``, ``p_<predictor>``, optional ``fold`` and quantiles)."""
    if predictions.height == 0:
        raise ValueError("no predictions to score")
    names = [name for name in PREDICTORS if f"p_{name}" in predictions.columns]
    y = predictions.get_column("y").cast(pl.Float64).to_numpy()
    boot = evaluation.bootstrap
    overall = score_with_intervals(
        y,
        {name: predictions.get_column(f"p_{name}").to_numpy() for name in names},
        day_positions(predictions.get_column("timestamp")),
        reference="base_rate",
        n_bins=evaluation.ece_bins,
        block_days=boot.block_days,
        n_resamples=boot.n_resamples,
        confidence=boot.confidence,
        seed=boot.seed,
    )
    per_fold: list[dict[str, Any]] = []
    if "fold" in predictions.columns:
        for (fold,), part in predictions.group_by("fold", maintain_order=True):
            part_y = part.get_column("y").cast(pl.Float64).to_numpy()
            row: dict[str, Any] = {"fold": int(fold), "n_predictions": part.height}
            for name in names:
                scorer = ProbabilityScorer(part_y, part.get_column(f"p_{name}").to_numpy(), n_bins=evaluation.ece_bins)
                row[name] = scorer.scores(np.ones(part.height))
            per_fold.append(row)
    quantiles: dict[str, float] = {}
    if alphas and all(quantile_name(a) in predictions.columns for a in alphas):
        matrix = predictions.select([quantile_name(a) for a in alphas]).to_numpy()
        quantiles = quantile_report(predictions.get_column("fwd_return").to_numpy(), matrix, alphas)
    stamps = predictions.get_column("timestamp")
    return EvaluationSummary(
        overall=overall,
        per_fold=per_fold,
        quantiles=quantiles,
        n_predictions=predictions.height,
        first_day=str(stamps.min())[:10],
        last_day=str(stamps.max())[:10],
        bootstrap=boot.model_dump(mode="json"),
    )


def quantile_name(alpha: float) -> str:
    """Column name of a return quantile (``q10`` for 0.1)."""
    return f"q{round(alpha * 100):02d}"
