"""One training experiment end to end, as plain functions the CLI and the Prefect flow share.

read (cut at train_end) -> features + labels -> walk-forward -> metrics -> final model on all
labelled data -> figures -> MLflow run -> registry version -> promote or not.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

from khalsi.settings import Settings
from training import plots
from training.config import ExperimentConfig
from training.data import TrainingInputs, feature_columns, labelled_frame, read_lake_inputs
from training.metrics import EvaluationSummary, summarize_predictions
from training.registry import (
    LoggedRun,
    PromotionDecision,
    apply_decision,
    configure_mlflow,
    decide_promotion,
    log_training_run,
    register_version,
)
from training.walk_forward import (
    Dataset,
    FitResult,
    WalkForwardResult,
    dataset_from_frame,
    fit_direction_model,
    walk_forward,
)

logger = logging.getLogger(__name__)
SHAP_SAMPLE_ROWS = 2000
INPUT_EXAMPLE_ROWS = 5


@dataclass
class PreparedData:
    """The cut inputs and the labelled rows built from them."""

    inputs: TrainingInputs
    frame: pl.DataFrame
    dataset: Dataset
    fingerprint: str

    def window(self) -> dict[str, Any]:
        """The exact data window read, and what was labelled."""
        stamps = self.frame.get_column("timestamp")
        return self.inputs.window() | {
            "labelled_rows": self.frame.height,
            "labelled_first": str(stamps.min()),
            "labelled_last": str(stamps.max()),
        }


@dataclass
class TrainingOutcome:
    """What one experiment produced."""

    run_id: str
    model_name: str
    model_version: str
    decision: PromotionDecision
    summary: EvaluationSummary
    elapsed_seconds: float


def prepare_data(config: ExperimentConfig, inputs: TrainingInputs) -> PreparedData:
    """Features and labels from inputs already cut at the config's train_end."""
    if inputs.train_end != config.data.train_end:
        raise ValueError(f"inputs were cut at {inputs.train_end}, the config trains until {config.data.train_end}")
    frame = labelled_frame(inputs, config)
    return PreparedData(
        inputs=inputs,
        frame=frame,
        dataset=dataset_from_frame(frame, feature_columns(config)),
        fingerprint=inputs.fingerprint(),
    )


def read_inputs(settings: Settings, config: ExperimentConfig) -> TrainingInputs:
    """The lake inputs, cut at the config's train_end before anything else reads them."""
    return read_lake_inputs(settings.lake_dir, train_end=config.data.train_end)


def make_figures(
    folder: Path, *, predictions: pl.DataFrame, final: FitResult, data: Dataset, config: ExperimentConfig
) -> dict[str, Path]:
    """Reliability diagram, feature importance and SHAP summary as PNG files in ``folder``."""
    sample = data.features[-SHAP_SAMPLE_ROWS:]
    return {
        "reliability": plots.reliability_diagram(
            predictions,
            folder / "reliability.png",
            n_bins=config.evaluation.ece_bins,
            title=f"Reliability, {config.horizon_days}d, out of sample",
        ),
        "feature_importance": plots.feature_importance(final.model, folder / "feature_importance.png"),
        "shap_summary": plots.shap_summary(final.model, sample, folder / "shap_summary.png"),
    }


def input_example(frame: pl.DataFrame, feature_names: list[str]) -> pd.DataFrame:
    """A few recent rows in the model's input format (features and price)."""
    return frame.tail(INPUT_EXAMPLE_ROWS).select(*feature_names, "price").to_pandas()


def evaluate_walk_forward(
    data: PreparedData, config: ExperimentConfig, *, progress: Callable[[str], None] | None = None
) -> tuple[WalkForwardResult, EvaluationSummary]:
    """Walk-forward predictions and their scores with intervals."""
    walk = walk_forward(data.dataset, config, progress=progress)
    summary = summarize_predictions(walk.predictions, evaluation=config.evaluation, alphas=list(config.quantile.alphas))
    return walk, summary


def fit_final_model(data: PreparedData, config: ExperimentConfig) -> FitResult:
    """The model to serve: fitted on every labelled row up to train_end."""
    return fit_direction_model(data.dataset, config)


def log_and_register(
    settings: Settings,
    config: ExperimentConfig,
    *,
    data: PreparedData,
    walk: WalkForwardResult,
    summary: EvaluationSummary,
    final: FitResult,
    validation: Mapping[str, Any] | str | None,
    elapsed_seconds: float,
) -> tuple[LoggedRun, str]:
    """Log the run with its figures and model, register the model; returns the run and the version."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = make_figures(Path(tmp), predictions=walk.predictions, final=final, data=data.dataset, config=config)
        logged = log_training_run(
            settings=settings,
            config=config,
            data_window=data.window(),
            fingerprint=data.fingerprint,
            validation=validation,
            walk=walk,
            summary=summary,
            final=final,
            figures=figures,
            input_example=input_example(data.frame, data.dataset.feature_names),
            elapsed_seconds=elapsed_seconds,
        )
    version = register_version(settings, logged=logged, model_name=config.model_name)
    return logged, str(version.version)


def promote(
    settings: Settings, config: ExperimentConfig, *, run_id: str, version: str, predictions: pl.DataFrame
) -> PromotionDecision:
    """Decide on the champion alias by the config's rule and record the decision."""
    client = configure_mlflow(settings)
    decision = decide_promotion(client, config=config, challenger_predictions=predictions)
    apply_decision(client, model_name=config.model_name, version=version, run_id=run_id, decision=decision)
    return decision


def run_experiment(
    settings: Settings,
    config: ExperimentConfig,
    *,
    validation: Mapping[str, Any] | str | None = None,
    inputs: TrainingInputs | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingOutcome:
    """Train, evaluate, log, register and (maybe) promote one experiment."""
    started = time.perf_counter()
    data = prepare_data(config, inputs if inputs is not None else read_inputs(settings, config))
    walk, summary = evaluate_walk_forward(data, config, progress=progress)
    final = fit_final_model(data, config)
    logged, version = log_and_register(
        settings,
        config,
        data=data,
        walk=walk,
        summary=summary,
        final=final,
        validation=validation,
        elapsed_seconds=time.perf_counter() - started,
    )
    decision = promote(settings, config, run_id=logged.run_id, version=version, predictions=walk.predictions)
    return TrainingOutcome(
        run_id=logged.run_id,
        model_name=config.model_name,
        model_version=version,
        decision=decision,
        summary=summary,
        elapsed_seconds=time.perf_counter() - started,
    )
