"""Runs side by side: the data behind ``khalsi experiments compare`` and the comparison notebook."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
from rich.table import Table

from khalsi.settings import Settings
from training.config import HORIZONS
from training.metrics import reliability_curve
from training.registry import TAG_PREFIX, configure_mlflow, experiment_name, run_predictions

RUN_COLUMNS = [
    "run_id",
    "run_name",
    "horizon_days",
    "started",
    "train_end",
    "data_fingerprint",
    "n_predictions",
    "oos_first_day",
    "oos_last_day",
    "brier",
    "brier_low",
    "brier_high",
    "base_rate_brier",
    "momentum_brier",
    "brier_skill",
    "brier_skill_low",
    "brier_skill_high",
    "log_loss",
    "auc",
    "ece",
    "quantile_interval_coverage",
    "elapsed_seconds",
    "promotion",
]


def runs_frame(settings: Settings, *, horizons: list[int] | None = None, max_runs: int = 100) -> pl.DataFrame:
    """One row per training run of the given horizons (newest first) with its headline metrics."""
    client = configure_mlflow(settings)
    experiment_ids = []
    for horizon in horizons or list(HORIZONS):
        experiment = client.get_experiment_by_name(experiment_name(settings, horizon))
        if experiment is not None:
            experiment_ids.append(experiment.experiment_id)
    rows: list[dict[str, Any]] = []
    if experiment_ids:
        for run in client.search_runs(experiment_ids, max_results=max_runs, order_by=["attributes.start_time DESC"]):
            metrics, tags = run.data.metrics, run.data.tags
            row: dict[str, Any] = {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "horizon_days": int(tags.get(f"{TAG_PREFIX}horizon_days", "0")),
                "started": pl.from_epoch(pl.Series([run.info.start_time]), time_unit="ms")[0],
                "train_end": tags.get(f"{TAG_PREFIX}train_end"),
                "data_fingerprint": tags.get(f"{TAG_PREFIX}data_fingerprint", "")[:12],
                "oos_first_day": tags.get(f"{TAG_PREFIX}oos_first_day"),
                "oos_last_day": tags.get(f"{TAG_PREFIX}oos_last_day"),
                "promotion": tags.get(f"{TAG_PREFIX}promotion.decision", "pending"),
            }
            for column in RUN_COLUMNS:
                if column not in row:
                    row[column] = metrics.get(column, math.nan)
            rows.append(row)
    schema: dict[str, Any] = {column: pl.Float64 for column in RUN_COLUMNS}
    schema |= {
        "run_id": pl.String,
        "run_name": pl.String,
        "horizon_days": pl.Int64,
        "started": pl.Datetime("ms"),
        "train_end": pl.String,
        "data_fingerprint": pl.String,
        "oos_first_day": pl.String,
        "oos_last_day": pl.String,
        "promotion": pl.String,
    }
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def predictions_of(settings: Settings, run_id: str) -> pl.DataFrame:
    """A run's out-of-sample predictions (for reliability curves and custom analysis)."""
    return run_predictions(configure_mlflow(settings), run_id)


def fold_metrics(settings: Settings, run_id: str) -> pl.DataFrame:
    """A run's per-fold out-of-sample Brier score, model beside the baselines (one row per fold)."""
    client = configure_mlflow(settings)
    columns: dict[str, list[float]] = {}
    for name in ("fold_brier", "fold_base_rate_brier", "fold_momentum_brier", "fold_auc"):
        history = sorted(client.get_metric_history(run_id, name), key=lambda metric: metric.step)
        columns[name.removeprefix("fold_")] = [metric.value for metric in history]
    n = min((len(values) for values in columns.values()), default=0)
    return pl.DataFrame({"fold": list(range(n)), **{name: values[:n] for name, values in columns.items()}})


def reliability_frame(predictions: pl.DataFrame, *, n_bins: int = 10) -> pl.DataFrame:
    """Reliability curves of the model and the baselines: one row per predictor and filled bin."""
    y = predictions.get_column("y").cast(pl.Float64).to_numpy()
    parts = []
    for name in ("model", "raw", "base_rate", "momentum"):
        column = f"p_{name}"
        if column in predictions.columns:
            curve = reliability_curve(y, predictions.get_column(column).to_numpy(), n_bins=n_bins)
            parts.append(pl.DataFrame(curve).with_columns(pl.lit(name).alias("predictor")))
    return pl.concat(parts) if parts else pl.DataFrame()


def _interval(row: dict[str, Any], metric: str) -> str:
    value, low, high = row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if value is None or not math.isfinite(value):
        return "-"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else "-"


def runs_table(frame: pl.DataFrame) -> Table:
    """A rich table of runs side by side (what ``experiments compare`` prints)."""
    table = Table(title="Khalsi experiments (out-of-sample walk-forward metrics, 90% block-bootstrap intervals)")
    for column in (
        "run",
        "H",
        "started",
        "train end",
        "data",
        "n",
        "brier",
        "base rate",
        "momentum",
        "skill vs base rate",
        "auc",
        "ece",
        "promotion",
    ):
        table.add_column(column, justify="left" if column in {"run", "promotion", "data"} else "right", no_wrap=True)
    for row in frame.iter_rows(named=True):
        table.add_row(
            f"{row['run_name']} ({row['run_id'][:8]})",
            f"{row['horizon_days']}d",
            str(row["started"])[:16],
            str(row["train_end"] or "-"),
            row["data_fingerprint"] or "-",
            str(int(row["n_predictions"])) if math.isfinite(row["n_predictions"]) else "-",
            _interval(row, "brier"),
            _number(row["base_rate_brier"]),
            _number(row["momentum_brier"]),
            _interval(row, "brier_skill"),
            _number(row["auc"]),
            _number(row["ece"]),
            row["promotion"],
        )
    return table
