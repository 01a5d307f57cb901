"""The feature pipeline: one function builds training frames and online vectors alike."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from features.cross_section import CROSS_SECTION_COLUMNS, with_cross_section
from features.market import MARKET_COLUMNS, MARKET_LOOKBACK_DAYS, coin_calendar, market_features
from features.market_factor import FACTOR_COLUMNS, FACTOR_LOOKBACK_DAYS, with_market_factor
from features.social import (
    FEAR_GREED_COLUMNS,
    SOCIAL_COLUMNS,
    SOCIAL_LOOKBACK_DAYS,
    with_fear_greed,
    with_social,
)
from khalsi.lake import (
    FEAR_GREED_SCHEMA,
    MARKET_SCHEMA,
    SOCIAL_DAILY_SCHEMA,
    scan_fear_greed,
    scan_market,
    scan_social_daily,
)

# New groups are appended, so every existing column keeps its position.
FEATURE_COLUMNS: list[str] = [
    *MARKET_COLUMNS,
    *FACTOR_COLUMNS,
    *FEAR_GREED_COLUMNS,
    *SOCIAL_COLUMNS,
    *CROSS_SECTION_COLUMNS,
]
KEY_COLUMNS: list[str] = ["coin_id", "symbol", "timestamp", "price"]

# History the online path recomputes before the requested day: more than the longest chain of
# windows (all finite, see features.windows), so the last row is bit-identical to training.
ONLINE_HISTORY_DAYS = 2 * max(MARKET_LOOKBACK_DAYS, FACTOR_LOOKBACK_DAYS, SOCIAL_LOOKBACK_DAYS)


class FeatureInputError(ValueError):
    """Market rows the pipeline cannot turn into point-in-time features."""


def check_market(market: pl.LazyFrame) -> None:
    """Raise FeatureInputError unless rows are unique per coin and 00:00 UTC day with a positive price.

    The calendar grid assumes this (ingestion guarantees it); a row at another time of day would
    otherwise silently shift a coin's grid and drop its rows.
    """
    timestamp = pl.col("timestamp")
    counts = (
        _conform(market, MARKET_SCHEMA)
        .select(
            (timestamp != timestamp.dt.truncate("1d")).sum().alias("not at 00:00 UTC"),
            pl.struct("coin_id", "timestamp").is_duplicated().sum().alias("duplicated (coin_id, timestamp)"),
            (pl.col("price").is_null() | ~(pl.col("price") > 0) | pl.col("price").is_infinite())
            .sum()
            .alias("price missing, non-positive or infinite"),
            (pl.col("coin_id").is_null() | timestamp.is_null()).sum().alias("coin_id or timestamp missing"),
        )
        .collect()
        .row(0, named=True)
    )
    problems = [f"{count} rows {what}" for what, count in counts.items() if count]
    if problems:
        raise FeatureInputError("market rows unusable for features: " + "; ".join(problems))


def _conform(frame: pl.LazyFrame, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    """The lake columns in their lake types (so joins on timestamps line up)."""
    return frame.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])


def build_feature_frame(market: pl.LazyFrame, fear_greed: pl.LazyFrame, social_daily: pl.LazyFrame) -> pl.LazyFrame:
    """One row per market row: ``coin_id, symbol, timestamp, price`` and FEATURE_COLUMNS.

    Market rows must be one per coin and 00:00 UTC day (as ingestion writes them; see
    :func:`check_market`, which the lake and online entry points call). Every feature
    of the row (c, t) uses only market rows with ``timestamp <= t`` and Fear & Greed / social rows
    with ``available_at <= t``.
    """
    return (
        _conform(market, MARKET_SCHEMA)
        .pipe(coin_calendar)
        .pipe(market_features)
        .pipe(with_market_factor)
        .filter(pl.col("observed"))
        # After the filter: a day's cross-section is the coins actually observed that day.
        .pipe(with_cross_section)
        .pipe(with_fear_greed, _conform(fear_greed, FEAR_GREED_SCHEMA))
        .pipe(with_social, _conform(social_daily, SOCIAL_DAILY_SCHEMA))
        .select(*KEY_COLUMNS, *(pl.col(name).cast(pl.Float64) for name in FEATURE_COLUMNS))
        .sort("coin_id", "timestamp")
    )


def load_feature_frame(lake_dir: Path) -> pl.LazyFrame:
    """The feature frame of everything in the lake (market rows checked first)."""
    check_market(scan_market(lake_dir))
    return build_feature_frame(scan_market(lake_dir), scan_fear_greed(lake_dir), scan_social_daily(lake_dir))


def latest_feature_vectors(
    market: pl.LazyFrame,
    fear_greed: pl.LazyFrame,
    social_daily: pl.LazyFrame,
    *,
    as_of: datetime | None = None,
    max_age: timedelta | None = None,
) -> pl.DataFrame:
    """Each coin's last feature row at or before ``as_of`` (default: all data), for online serving.

    Computed by :func:`build_feature_frame` on a trailing slice of history, which gives exactly
    the training row for the same (coin, timestamp). ``max_age`` drops coins whose last row is
    older than ``as_of - max_age`` (a stale price is not a current prediction input).
    """
    if as_of is not None and as_of.utcoffset() is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {as_of!r}")
    check_market(market)
    market = _conform(market, MARKET_SCHEMA)
    fear_greed = _conform(fear_greed, FEAR_GREED_SCHEMA)
    social_daily = _conform(social_daily, SOCIAL_DAILY_SCHEMA)
    if as_of is not None:
        cutoff = pl.lit(as_of).cast(pl.Datetime("us", "UTC"))
        market = market.filter(pl.col("timestamp") <= cutoff)
        fear_greed = fear_greed.filter(pl.col("available_at") <= cutoff)
        social_daily = social_daily.filter(pl.col("available_at") <= cutoff)
    last_seen = market.group_by("coin_id").agg(pl.col("timestamp").max().alias("last")).collect()
    if max_age is not None and last_seen.height:
        newest = as_of if as_of is not None else last_seen.get_column("last").max()
        assert isinstance(newest, datetime)
        last_seen = last_seen.filter(pl.col("last") >= newest - max_age)
    empty = pl.DataFrame(
        schema={
            **{name: MARKET_SCHEMA[name] for name in KEY_COLUMNS},
            **dict.fromkeys(FEATURE_COLUMNS, pl.Float64()),
        }
    )
    if last_seen.height == 0:
        return empty
    # The oldest coin's last row decides how far back the slice must start for all coins (the
    # market factor of a day needs every coin observed that day).
    oldest_last = last_seen.get_column("last").min()
    assert isinstance(oldest_last, datetime)
    start = pl.lit(oldest_last - timedelta(days=ONLINE_HISTORY_DAYS)).cast(pl.Datetime("us", "UTC"))
    frame = build_feature_frame(
        market.filter(pl.col("timestamp") >= start),
        fear_greed.filter(pl.col("available_at") >= start),
        social_daily.filter(pl.col("available_at") >= start),
    )
    wanted = last_seen.lazy().select("coin_id", pl.col("last").alias("timestamp"))
    return frame.join(wanted, on=["coin_id", "timestamp"], how="semi").sort("coin_id").collect()
