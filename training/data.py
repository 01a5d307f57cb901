"""What training reads: lake inputs cut at ``train_end`` before anything else, fingerprinted.

The cut is applied to the raw inputs (market rows by ``timestamp``, Fear & Greed and social rows by
``available_at``) before features or labels are computed, so no later price can reach a feature,
a label, the early-stopping tail or the calibration data. The fingerprint is a SHA-256 of the cut
inputs (sorted, written as CSV), so two runs that read the same data log the same hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from features import FEATURE_COLUMNS, build_feature_frame
from khalsi.lake import scan_fear_greed, scan_market, scan_social_daily
from training.config import ExperimentConfig
from training.labels import LABEL, add_labels, add_trailing_return


class NoTrainingDataError(RuntimeError):
    """The lake (or the configured window) holds no labelled rows to train on."""


@dataclass(frozen=True)
class TrainingInputs:
    """The raw lake frames a run read, already cut at ``train_end``."""

    market: pl.DataFrame
    fear_greed: pl.DataFrame
    social_daily: pl.DataFrame
    train_end: date | None

    def fingerprint(self) -> str:
        """SHA-256 of the inputs (each sorted and written as CSV, in a fixed order)."""
        digest = hashlib.sha256()
        for name, frame, keys in (
            ("market", self.market, ["coin_id", "timestamp"]),
            ("fear_greed", self.fear_greed, ["day"]),
            ("social_daily", self.social_daily, ["day", "coin_id"]),
        ):
            digest.update(name.encode())
            digest.update(frame.sort(keys).write_csv().encode())
        return digest.hexdigest()

    def window(self) -> dict[str, Any]:
        """The exact span of market data read."""
        stamps = self.market.get_column("timestamp")
        return {
            "data_first": str(stamps.min()) if self.market.height else None,
            "data_last": str(stamps.max()) if self.market.height else None,
            "market_rows": self.market.height,
            "coins": sorted(self.market.get_column("coin_id").unique().to_list()),
            "train_end": str(self.train_end) if self.train_end else None,
        }


def cutoff_instant(train_end: date) -> datetime:
    """The first instant after ``train_end`` (exclusive bound: the whole day is included)."""
    return datetime.combine(train_end + timedelta(days=1), time(0), tzinfo=UTC)


def cut_inputs(
    market: pl.LazyFrame, fear_greed: pl.LazyFrame, social_daily: pl.LazyFrame, *, train_end: date | None
) -> TrainingInputs:
    """Collect the inputs, dropping everything after ``train_end`` first."""
    if train_end is not None:
        bound = pl.lit(cutoff_instant(train_end)).cast(pl.Datetime("us", "UTC"))
        market = market.filter(pl.col("timestamp") < bound)
        fear_greed = fear_greed.filter(pl.col("available_at") < bound)
        social_daily = social_daily.filter(pl.col("available_at") < bound)
    return TrainingInputs(
        market=market.collect(),
        fear_greed=fear_greed.collect(),
        social_daily=social_daily.collect(),
        train_end=train_end,
    )


def read_lake_inputs(lake_dir: Path, *, train_end: date | None) -> TrainingInputs:
    """The lake's market, Fear & Greed and social frames, cut at ``train_end``."""
    return cut_inputs(
        scan_market(lake_dir), scan_fear_greed(lake_dir), scan_social_daily(lake_dir), train_end=train_end
    )


def feature_columns(config: ExperimentConfig) -> list[str]:
    """The features a config uses (all of ``FEATURE_COLUMNS`` unless it names a subset)."""
    if config.features is None:
        return list(FEATURE_COLUMNS)
    unknown = sorted(set(config.features) - set(FEATURE_COLUMNS))
    if unknown:
        raise ValueError(f"unknown feature columns in config: {', '.join(unknown)}")
    return list(config.features)


def labelled_frame(inputs: TrainingInputs, config: ExperimentConfig) -> pl.DataFrame:
    """Features, labels and trailing returns of every labelled row in the config's window.

    Sorted by time then coin. Rows before ``data.start`` are dropped after the features are built
    (so their windows still see the earlier history), rows without a label are dropped.
    """
    frame = build_feature_frame(inputs.market.lazy(), inputs.fear_greed.lazy(), inputs.social_daily.lazy())
    if inputs.train_end is not None:
        # Redundant with the input cut, on purpose: the frame itself must end at train_end.
        frame = frame.filter(pl.col("timestamp") < pl.lit(cutoff_instant(inputs.train_end)))
    frame = add_trailing_return(add_labels(frame, config.horizon_days), config.horizon_days)
    start = datetime.combine(config.data.start, time(0), tzinfo=UTC)
    frame = frame.filter(pl.col("timestamp") >= pl.lit(start).cast(pl.Datetime("us", "UTC")))
    if config.data.coins is not None:
        frame = frame.filter(pl.col("coin_id").is_in(config.data.coins))
    out = frame.filter(pl.col(LABEL).is_not_null()).sort("timestamp", "coin_id").collect()
    if out.height == 0:
        raise NoTrainingDataError(
            "no labelled rows to train on: ingest market data first (khalsi ingest) or widen the config's data window"
        )
    return out
