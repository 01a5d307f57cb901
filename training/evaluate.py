"""Score an already trained model on any stored date range, beside the baselines. Nothing is retrained.

The model is the horizon's champion unless a version is named. The baselines are fitted on the
model's own training rows (labels known by the last day its final fit used), never on the
evaluation range. Rows of the range that the model was trained on are counted and reported as
``in_sample_rows``: a score on them is not an out-of-sample score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import numpy as np
import polars as pl
from rich.table import Table

from khalsi.settings import Settings
from training.baselines import fit_baselines
from training.config import registered_model_name
from training.data import TrainingInputs, labelled_frame, read_lake_inputs
from training.labels import FWD_RETURN, LABEL, TRAILING_RETURN
from training.metrics import BASELINE_NAMES, EvaluationSummary, quantile_name, summarize_predictions
from training.registry import configure_mlflow, load_registered_model, run_config

REPORTED_METRICS = ("brier", "log_loss", "auc", "accuracy", "ece", "brier_skill")


class EmptyEvaluationError(ValueError):
    """No labelled rows in the requested range."""


@dataclass
class EvaluationReport:
    """A model's and the baselines' scores on one date range."""

    model_name: str
    model_version: str
    run_id: str
    horizon_days: int
    start: date
    end: date
    trained_until: str
    in_sample_rows: int
    summary: EvaluationSummary

    def _entry(self, name: str) -> dict[str, Any]:
        metrics = self.summary.overall[name]
        entry: dict[str, Any] = {"n_predictions": self.summary.n_predictions}
        for metric in REPORTED_METRICS:
            estimate = metrics[metric]
            entry[metric] = _finite(estimate.value)
            entry[f"{metric}_interval"] = [_finite(estimate.low), _finite(estimate.high)]
        return entry

    def as_dict(self) -> dict[str, Any]:
        """The JSON written by ``khalsi evaluate --json``."""
        return {
            "model": {"name": self.model_name, "version": self.model_version, "run_id": self.run_id}
            | self._entry("model"),
            "model_uncalibrated": self._entry("raw"),
            "baselines": {name: self._entry(name) for name in BASELINE_NAMES},
            "window": {"start": str(self.start), "end": str(self.end), "horizon_days": self.horizon_days},
            "trained_until": self.trained_until,
            "in_sample_rows": self.in_sample_rows,
            "quantiles": self.summary.quantiles,
            "bootstrap": self.summary.bootstrap,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _instant(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def evaluate_model(
    settings: Settings,
    *,
    horizon_days: int,
    start: date,
    end: date,
    model_version: str | None = None,
    inputs: TrainingInputs | None = None,
) -> EvaluationReport:
    """Score the champion (or ``model_version``) on ``start..end`` beside the baselines."""
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    model_name = registered_model_name(horizon_days)
    model, version = load_registered_model(settings, model_name=model_name, version=model_version)
    client = configure_mlflow(settings)
    run_id = str(version.run_id or dict(version.tags).get("khalsi.run_id", ""))
    config = run_config(client, run_id)
    trained_until = str(model.metadata.get("train_last_day", config.data.train_end or ""))
    widened = config.model_copy(
        update={"data": config.data.model_copy(update={"start": min(start, config.data.start), "train_end": None})}
    )
    frame = labelled_frame(
        inputs if inputs is not None else read_lake_inputs(settings.lake_dir, train_end=None), widened
    )
    stamp = pl.col("timestamp")
    evaluation = frame.filter((stamp >= _instant(start)) & (stamp <= _instant(end)))
    if evaluation.height == 0:
        raise EmptyEvaluationError(f"no labelled {horizon_days}d rows between {start} and {end} in the lake")
    last_trained = date.fromisoformat(trained_until[:10]) if trained_until else end
    training = frame.filter((stamp >= _instant(config.data.start)) & (stamp <= _instant(last_trained)))
    baselines = fit_baselines(
        training.get_column(LABEL).cast(pl.Float64).to_numpy(),
        training.get_column(TRAILING_RETURN).cast(pl.Float64).fill_null(np.nan).to_numpy(),
    )
    features = evaluation.select(pl.col(model.feature_names).cast(pl.Float64)).to_numpy()
    raw = model.raw_probability(features)
    quantiles = model.return_quantiles(features)
    trailing = evaluation.get_column(TRAILING_RETURN).cast(pl.Float64).fill_null(np.nan).to_numpy()
    predictions = evaluation.select(
        "coin_id", "timestamp", pl.col(LABEL).cast(pl.Float64).alias("y"), pl.col(FWD_RETURN).alias("fwd_return")
    ).with_columns(
        pl.Series("p_model", model.calibrator.apply(raw)),
        pl.Series("p_raw", raw),
        *(pl.Series(f"p_{name}", values) for name, values in baselines.predict(trailing).items()),
        *(pl.Series(quantile_name(alpha), quantiles[:, i]) for i, alpha in enumerate(model.alphas)),
    )
    in_sample = evaluation.filter(stamp <= _instant(last_trained)).height
    return EvaluationReport(
        model_name=model_name,
        model_version=str(version.version),
        run_id=run_id,
        horizon_days=horizon_days,
        start=start,
        end=end,
        trained_until=trained_until,
        in_sample_rows=in_sample,
        summary=summarize_predictions(predictions, evaluation=config.evaluation, alphas=model.alphas),
    )


def metrics_table(summary: EvaluationSummary, *, title: str) -> Table:
    """A rich table: one row per predictor, each metric with its bootstrap interval."""
    table = Table(title=title)
    table.add_column("predictor", no_wrap=True)
    for metric in REPORTED_METRICS:
        table.add_column(metric, justify="right")
    names = {
        "model": "model",
        "raw": "model (uncalibrated)",
        "base_rate": "base rate",
        "momentum": "momentum",
        "coin_flip": "p = 0.5",
    }
    for key, label in names.items():
        if key not in summary.overall:
            continue
        cells = []
        for metric in REPORTED_METRICS:
            e = summary.overall[key][metric]
            cells.append(f"{e.value:.4f} [{e.low:.4f}, {e.high:.4f}]" if math.isfinite(e.value) else "n/a")
        table.add_row(label, *cells)
    return table
