"""The bundled real history as feature-pipeline inputs (tests, benchmarks, offline demos).

Shaped as ingestion shapes the lake: zero volumes and caps become null (CoinGecko's "no data")
and rows not at 00:00 UTC are dropped. The social frame is the market-wide daily mean of the
bundled FinBERT news/Reddit scores; it is real, sparse and has no per-coin rows.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from khalsi.lake import FEAR_GREED_SCHEMA, MARKET_SCHEMA, MARKET_WIDE, SOCIAL_DAILY_SCHEMA
from khalsi.sources.exports import (
    BUNDLED_SOCIAL_DIR,
    bundled_export_paths,
    coin_for_export,
    read_coingecko_export,
    read_fear_greed_csv,
)


def bundled_market_frame() -> pl.DataFrame:
    """All bundled CoinGecko exports in the ``market_daily`` lake schema."""
    raw = pl.concat([read_coingecko_export(path, coin_for_export(path)) for path in bundled_export_paths()])
    return (
        raw.rename({"total_volume": "volume_24h"})
        .filter(pl.col("timestamp").dt.time() == pl.time(0))
        .with_columns(pl.when(pl.col(name) > 0).then(pl.col(name)).alias(name) for name in ("volume_24h", "market_cap"))
        .select([pl.col(name).cast(dtype) for name, dtype in MARKET_SCHEMA.items()])
        .sort("coin_id", "timestamp")
    )


def bundled_fear_greed_frame() -> pl.DataFrame:
    """The bundled Fear & Greed index, each value available at 00:00 UTC of its day."""
    raw = read_fear_greed_csv(BUNDLED_SOCIAL_DIR / "fear_greed_index.csv")
    return (
        raw.with_columns(pl.col("day").cast(pl.Datetime("us", "UTC")).alias("available_at"))
        .select([pl.col(name).cast(dtype) for name, dtype in FEAR_GREED_SCHEMA.items()])
        .sort("day")
    )


def bundled_social_daily_frame() -> pl.DataFrame:
    """Market-wide daily sentiment from the bundled scored posts, available at the end of each day."""
    raw = pl.read_csv(
        BUNDLED_SOCIAL_DIR / "news_sentiment_scores.csv",
        schema_overrides={"Date": pl.Date(), "sentiment_score": pl.Float64()},
    )
    end_of_day = timedelta(days=1) - timedelta(microseconds=1)
    daily = raw.group_by("Date").agg(
        pl.col("sentiment_score").mean().alias("mean_sentiment"),
        pl.len().cast(pl.Int64).alias("mention_count"),
        pl.len().cast(pl.Int64).alias("post_count"),
    )
    return (
        daily.rename({"Date": "day"})
        .with_columns(
            pl.lit(MARKET_WIDE).alias("coin_id"),
            (pl.col("day").cast(pl.Datetime("us", "UTC")) + end_of_day).alias("available_at"),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in SOCIAL_DAILY_SCHEMA.items()])
        .sort("day")
    )
