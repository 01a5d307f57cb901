"""Helpers for the training tests: real bundled inputs, small configs, a per-test MLflow store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date
from functools import lru_cache
from typing import Any

import mlflow
import numpy as np
import polars as pl

from features.bundled import bundled_fear_greed_frame, bundled_market_frame, bundled_social_daily_frame
from khalsi.lake import write_fear_greed, write_market_partition, write_social_daily
from khalsi.settings import Settings
from training.config import ExperimentConfig
from training.walk_forward import Dataset

SMALL_COINS = ["bitcoin", "ethereum", "ripple", "litecoin", "dogecoin"]


@lru_cache(maxsize=1)
def _bundled() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return bundled_market_frame(), bundled_fear_greed_frame(), bundled_social_daily_frame()


def bundled_inputs(coins: list[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The bundled real market (optionally a few coins), Fear & Greed and social frames."""
    market, fear_greed, social = _bundled()
    if coins is not None:
        market = market.filter(pl.col("coin_id").is_in(coins))
    return market, fear_greed, social


def write_bundled_lake(settings: Settings, coins: list[str] | None = None) -> None:
    """Write the bundled inputs into the settings' lake, as ingestion would."""
    market, fear_greed, social = bundled_inputs(coins)
    settings.ensure_home()
    for (coin_id,), part in market.group_by("coin_id"):
        write_market_partition(settings.lake_dir, str(coin_id), part)
    write_fear_greed(settings.lake_dir, fear_greed)
    write_social_daily(settings.lake_dir, social)


def small_config(horizon_days: int = 1, **overrides: Any) -> ExperimentConfig:
    """A quick experiment: five coins, 2017-2019, few trees, few bootstrap draws."""
    raw: dict[str, Any] = {
        "name": f"small-{horizon_days}d",
        "horizon_days": horizon_days,
        "data": {"start": date(2017, 1, 1), "train_end": date(2019, 6, 30), "coins": SMALL_COINS},
        "walk_forward": {
            "first_test_start": date(2018, 9, 1),
            "refit_every_days": 150,
            "min_train_rows": 300,
            "calibration": "sigmoid",
        },
        "classifier": {"n_estimators": 40, "learning_rate": 0.1, "early_stopping_rounds": 10, "max_bin": 32},
        "quantile": {"n_estimators": 20, "learning_rate": 0.1, "max_bin": 32},
        "evaluation": {"bootstrap": {"n_resamples": 50, "block_days": 20}},
        "promotion": {"margin": 0.0, "min_common_rows": 50},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return ExperimentConfig.model_validate(raw)


@contextmanager
def no_leaked_run() -> Iterator[None]:
    """Fail the test if it leaves an MLflow run active (and end it so others are not affected)."""
    yield
    leaked = mlflow.active_run()
    if leaked is not None:
        mlflow.end_run()
        raise AssertionError(f"test leaked an active MLflow run: {leaked.info.run_id}")


def with_planted_leak(dataset: Dataset) -> Dataset:
    """The dataset plus a feature that *is* the future return: a leak any honest pipeline must find."""
    return replace(
        dataset,
        features=np.column_stack([dataset.features, dataset.fwd_return]),
        feature_names=[*dataset.feature_names, "planted_future_return"],
    )
