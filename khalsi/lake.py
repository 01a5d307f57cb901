"""The Parquet lake under ``KHALSI_HOME/lake`` that polars reads for features and training.

Only validated data reaches it. Layout (hive-partitioned where it helps pruning):

- ``market_daily/coin_id=<id>/data.parquet``: ``coin_id, symbol, timestamp (UTC), price,
  volume_24h, market_cap`` (volume/cap NULL where CoinGecko had none);
- ``fear_greed/data.parquet``: ``day, value, classification, available_at``;
- ``social_daily/data.parquet``: ``day, coin_id, mean_sentiment, mention_count, post_count,
  available_at`` (``coin_id='_market'`` for the whole market).

Each partition is rewritten whole from the database after a load (write to a temporary file,
then rename), so a crash mid-write never leaves a half file and a re-run gives the same bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import polars as pl

MARKET_DAILY = "market_daily"
FEAR_GREED = "fear_greed"
SOCIAL_DAILY = "social_daily"
MARKET_WIDE = "_market"

MARKET_SCHEMA: dict[str, pl.DataType] = {
    "coin_id": pl.String(),
    "symbol": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"),
    "price": pl.Float64(),
    "volume_24h": pl.Float64(),
    "market_cap": pl.Float64(),
}
FEAR_GREED_SCHEMA: dict[str, pl.DataType] = {
    "day": pl.Date(),
    "value": pl.Int64(),
    "classification": pl.String(),
    "available_at": pl.Datetime("us", "UTC"),
}
SOCIAL_DAILY_SCHEMA: dict[str, pl.DataType] = {
    "day": pl.Date(),
    "coin_id": pl.String(),
    "mean_sentiment": pl.Float64(),
    "mention_count": pl.Int64(),
    "post_count": pl.Int64(),
    "available_at": pl.Datetime("us", "UTC"),
}


def _atomic_write(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
    os.close(handle)
    try:
        frame.write_parquet(tmp_name, statistics=True)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_market_partition(lake_dir: Path, coin_id: str, frame: pl.DataFrame) -> Path:
    """Replace one coin's market partition with ``frame`` (sorted by time)."""
    path = lake_dir / MARKET_DAILY / f"coin_id={coin_id}" / "data.parquet"
    ordered = frame.select([pl.col(name).cast(dtype) for name, dtype in MARKET_SCHEMA.items()])
    _atomic_write(ordered.sort("timestamp"), path)
    return path


def write_fear_greed(lake_dir: Path, frame: pl.DataFrame) -> Path:
    path = lake_dir / FEAR_GREED / "data.parquet"
    ordered = frame.select([pl.col(name).cast(dtype) for name, dtype in FEAR_GREED_SCHEMA.items()])
    _atomic_write(ordered.sort("day"), path)
    return path


def write_social_daily(lake_dir: Path, frame: pl.DataFrame) -> Path:
    path = lake_dir / SOCIAL_DAILY / "data.parquet"
    ordered = frame.select([pl.col(name).cast(dtype) for name, dtype in SOCIAL_DAILY_SCHEMA.items()])
    _atomic_write(ordered.sort("day", "coin_id"), path)
    return path


def scan_market(lake_dir: Path) -> pl.LazyFrame:
    """All coins' validated daily market rows (empty, with the schema, before the first ingest)."""
    root = lake_dir / MARKET_DAILY
    if not any(root.glob("coin_id=*/data.parquet")):
        return pl.LazyFrame(schema=MARKET_SCHEMA)
    # The partition column is also stored in the file, so hive inference is not needed.
    return pl.scan_parquet(root / "coin_id=*" / "data.parquet", hive_partitioning=False).select(list(MARKET_SCHEMA))


def scan_fear_greed(lake_dir: Path) -> pl.LazyFrame:
    path = lake_dir / FEAR_GREED / "data.parquet"
    return pl.scan_parquet(path) if path.exists() else pl.LazyFrame(schema=FEAR_GREED_SCHEMA)


def scan_social_daily(lake_dir: Path) -> pl.LazyFrame:
    path = lake_dir / SOCIAL_DAILY / "data.parquet"
    return pl.scan_parquet(path) if path.exists() else pl.LazyFrame(schema=SOCIAL_DAILY_SCHEMA)
