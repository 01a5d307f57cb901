"""Prefect flow ``train``: features -> walk-forward -> calibrate -> log -> register -> promote or not.

Thin on purpose: every step is a plain function of :mod:`training.experiment`; the tasks add
visibility. The flow returns the MLflow run id (the promotion decision is tagged on the run and the
model version). It reads the lake cut at ``train_end`` before anything else; ``validation`` is the
summary (or id) of the data validation the run depends on, logged with the run.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from khalsi.settings import Settings, get_settings
from training.config import ExperimentConfig, default_config, load_config
from training.data import TrainingInputs
from training.experiment import (
    PreparedData,
    evaluate_walk_forward,
    fit_final_model,
    log_and_register,
    prepare_data,
    promote,
    read_inputs,
)
from training.metrics import EvaluationSummary
from training.registry import LoggedRun, PromotionDecision
from training.walk_forward import FitResult, WalkForwardResult

FLOW_NAME = "train"


@task(cache_policy=NO_CACHE)
def read_training_inputs(settings: Settings, config: ExperimentConfig) -> TrainingInputs:
    """Read the lake, cut at train_end."""
    return read_inputs(settings, config)


@task(cache_policy=NO_CACHE)
def build_features(config: ExperimentConfig, inputs: TrainingInputs) -> PreparedData:
    """Features and labels of every labelled row."""
    return prepare_data(config, inputs)


@task(cache_policy=NO_CACHE)
def walk_forward_evaluation(
    data: PreparedData, config: ExperimentConfig
) -> tuple[WalkForwardResult, EvaluationSummary]:
    """Fit, calibrate and score each walk-forward fold."""
    logger = get_run_logger()
    return evaluate_walk_forward(data, config, progress=logger.info)


@task(cache_policy=NO_CACHE)
def fit_final(data: PreparedData, config: ExperimentConfig) -> FitResult:
    """Fit and calibrate the model to serve on every labelled row."""
    return fit_final_model(data, config)


@task(cache_policy=NO_CACHE)
def log_and_register_model(
    settings: Settings,
    config: ExperimentConfig,
    data: PreparedData,
    walk: WalkForwardResult,
    summary: EvaluationSummary,
    final: FitResult,
    validation: dict[str, Any] | str | None,
    elapsed_seconds: float,
) -> tuple[LoggedRun, str]:
    """Log the MLflow run and register the model version."""
    return log_and_register(
        settings,
        config,
        data=data,
        walk=walk,
        summary=summary,
        final=final,
        validation=validation,
        elapsed_seconds=elapsed_seconds,
    )


@task(cache_policy=NO_CACHE)
def promote_or_not(
    settings: Settings, config: ExperimentConfig, run_id: str, version: str, walk: WalkForwardResult
) -> PromotionDecision:
    """Move the champion alias only if the declared rule says so; record why either way."""
    return promote(settings, config, run_id=run_id, version=version, predictions=walk.predictions)


def resolve_config(horizon: int | None, config_path: str | None, train_end: date | None) -> ExperimentConfig:
    """The experiment to run: a YAML file or the horizon's default (1d if neither), with a cut-off."""
    config = load_config(Path(config_path)) if config_path else default_config(horizon or 1)
    if horizon is not None and config.horizon_days != horizon:
        raise ValueError(f"horizon {horizon}d contradicts the config's horizon_days {config.horizon_days}")
    return config.with_train_end(train_end)


@flow(name=FLOW_NAME)
def train(
    horizon: int | None = None,
    config_path: str | None = None,
    train_end: date | None = None,
    validation: dict[str, Any] | str | None = None,
) -> str:
    """Train one experiment end to end; returns the MLflow run id."""
    logger = get_run_logger()
    settings = get_settings()
    started = time.perf_counter()
    config = resolve_config(horizon, config_path, train_end)
    inputs = read_training_inputs(settings, config)
    data = build_features(config, inputs)
    walk, summary = walk_forward_evaluation(data, config)
    final = fit_final(data, config)
    logged, version = log_and_register_model(
        settings, config, data, walk, summary, final, validation, time.perf_counter() - started
    )
    decision = promote_or_not(settings, config, logged.run_id, version, walk)
    model = summary.overall["model"]
    logger.info(
        "%s v%s: out-of-sample brier %.4f [%.4f, %.4f] vs base rate %.4f; %s",
        config.model_name,
        version,
        model["brier"].value,
        model["brier"].low,
        model["brier"].high,
        summary.overall["base_rate"]["brier"].value,
        decision.reason,
    )
    return logged.run_id
