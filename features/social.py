"""Fear & Greed and social-sentiment features, keyed by the market timestamp they become known at.

A row of these sources may be used by the market row at t only when ``available_at <= t``. Market
rows sit at 00:00 UTC, so each source row is mapped to its *available day* (``available_at``
rounded up to 00:00) and features are computed on a calendar grid of available days, then joined
exactly on ``timestamp == available day``. Social data for day d (available at its end) therefore
first feeds the market row of d+1; Fear & Greed for day d (available at 00:00 of d) feeds d.

Each grid runs past the last source row by as many days as the longest window (or carry-forward)
reaches, so whether a row exists never depends on data that arrives later. Where a window holds
no data the feature is null: sparse social history is never filled in, least of all from the
future.
"""

from __future__ import annotations

import polars as pl

from features.windows import DAY, available_day, safe_log, window_mean, window_std

COIN = "coin_id"
MARKET_WIDE = "_market"
FEAR_GREED_STALE_DAYS = 3
SENTIMENT_WINDOW = 7
MENTION_Z_WINDOW = 30

FEAR_GREED_COLUMNS: list[str] = ["fg_value", "fg_chg_1d", "fg_chg_7d"]
_SOCIAL_NAMES = ("sentiment_1d", "sentiment_7d", "mentions_7d", "mentions_z_30d")
SOCIAL_COLUMNS: list[str] = [
    *(f"social_{name}" for name in _SOCIAL_NAMES),
    *(f"social_mkt_{name}" for name in _SOCIAL_NAMES),
]

SOCIAL_LOOKBACK_DAYS = max(MENTION_Z_WINDOW, 7 + FEAR_GREED_STALE_DAYS) + 1


def fear_greed_features(fear_greed: pl.LazyFrame) -> pl.LazyFrame:
    """Per available day: the index level (0-1) and its 1- and 7-day changes."""
    daily = (
        fear_greed.with_columns(available_day(pl.col("available_at")).alias("timestamp"))
        .sort("timestamp", "available_at")
        .group_by("timestamp")
        .agg(pl.col("value").last().cast(pl.Float64).alias("_value"))
    )
    # Grouping by a constant yields no row at all for an empty source (no null-bounded range).
    calendar = (
        daily.group_by(pl.lit(0).alias("_all"))
        .agg(pl.col("timestamp").min().alias("start"), pl.col("timestamp").max().alias("end"))
        .select(
            pl.datetime_ranges("start", pl.col("end").dt.offset_by(f"{FEAR_GREED_STALE_DAYS}d"), DAY).alias("timestamp")
        )
        .explode("timestamp")
    )
    # A missing day (the index has a few) takes the last value for up to FEAR_GREED_STALE_DAYS.
    level = pl.col("_value").forward_fill(limit=FEAR_GREED_STALE_DAYS) / 100.0
    return (
        calendar.join(daily, on="timestamp", how="left")
        .sort("timestamp")
        .with_columns(level.alias("fg_value"))
        .select(
            "timestamp",
            "fg_value",
            (pl.col("fg_value") - pl.col("fg_value").shift(1)).alias("fg_chg_1d"),
            (pl.col("fg_value") - pl.col("fg_value").shift(7)).alias("fg_chg_7d"),
        )
    )


def social_features(social_daily: pl.LazyFrame) -> pl.LazyFrame:
    """Per coin id (``_market`` included) and available day: sentiment and mention features."""
    daily = (
        social_daily.with_columns(available_day(pl.col("available_at")).alias("timestamp"))
        .group_by(COIN, "timestamp")
        .agg(
            pl.col("mean_sentiment").mean().alias("_sentiment"),
            pl.col("mention_count").sum().cast(pl.Float64).alias("_mentions"),
        )
    )
    reach = f"{max(SENTIMENT_WINDOW, MENTION_Z_WINDOW) - 1}d"
    calendar = (
        daily.group_by(COIN)
        .agg(pl.col("timestamp").min().alias("start"), pl.col("timestamp").max().alias("end"))
        .select(
            COIN,
            pl.datetime_ranges("start", pl.col("end").dt.offset_by(reach), DAY).alias("timestamp"),
        )
        .explode("timestamp")
    )
    log_mentions = safe_log(pl.col("_mentions") + 1.0)
    mean_log = window_mean(pl.col("_log_mentions"), MENTION_Z_WINDOW, min_obs=7).over(COIN)
    std_log = window_std(pl.col("_log_mentions"), MENTION_Z_WINDOW, min_obs=7).over(COIN)
    mean_mentions = window_mean(pl.col("_mentions"), SENTIMENT_WINDOW, min_obs=1).over(COIN)
    return (
        calendar.join(daily, on=[COIN, "timestamp"], how="left")
        .sort(COIN, "timestamp")
        .with_columns(log_mentions.alias("_log_mentions"))
        .select(
            COIN,
            "timestamp",
            pl.col("_sentiment").alias("sentiment_1d"),
            window_mean(pl.col("_sentiment"), SENTIMENT_WINDOW, min_obs=1).over(COIN).alias("sentiment_7d"),
            safe_log(mean_mentions + 1.0).alias("mentions_7d"),
            pl.when(std_log > 0).then((pl.col("_log_mentions") - mean_log) / std_log).alias("mentions_z_30d"),
        )
    )


def with_fear_greed(frame: pl.LazyFrame, fear_greed: pl.LazyFrame) -> pl.LazyFrame:
    """Add FEAR_GREED_COLUMNS to rows keyed by ``timestamp``."""
    return frame.join(fear_greed_features(fear_greed), on="timestamp", how="left")


def with_social(frame: pl.LazyFrame, social_daily: pl.LazyFrame) -> pl.LazyFrame:
    """Add the coin's own and the market-wide SOCIAL_COLUMNS to rows keyed by coin and timestamp."""
    features = social_features(social_daily)
    per_coin = features.filter(pl.col(COIN) != MARKET_WIDE).rename({name: f"social_{name}" for name in _SOCIAL_NAMES})
    market_wide = (
        features.filter(pl.col(COIN) == MARKET_WIDE)
        .drop(COIN)
        .rename({name: f"social_mkt_{name}" for name in _SOCIAL_NAMES})
    )
    return frame.join(per_coin, on=[COIN, "timestamp"], how="left").join(market_wide, on="timestamp", how="left")
