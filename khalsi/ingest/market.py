"""Market data sources behind one protocol, and the deliberate clean-up before validation.

Two sources speak the same interface: the bundled real history (``ReplayMarketSource``, no network)
and CoinGecko itself (``CoinGeckoMarketSource``). Both return the raw rows of a CoinGecko daily
export plus the raw bytes they came from, so ingestion keeps what it was given.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import polars as pl

from khalsi.sources.exports import (
    BUNDLED_COINS,
    BUNDLED_DAILY_DIR,
    COINS_BY_ID,
    CoinInfo,
    read_coingecko_export,
)

# How far from 00:00 UTC a snapshot may be and still be that day's snapshot.
SNAP_TOLERANCE = timedelta(hours=1)
RAW_COLUMNS = ("coin_id", "symbol", "timestamp", "price", "market_cap", "total_volume")


@dataclass(frozen=True)
class FetchedHistory:
    """What a source returned for one coin: rows in export shape, and the raw bytes."""

    coin: CoinInfo
    rows: pl.DataFrame
    raw: bytes
    raw_suffix: str


class MarketSource(Protocol):
    name: str

    def coins(self) -> list[CoinInfo]:
        """The coins this source can serve."""
        ...

    async def daily_history(self, coin: CoinInfo, *, since: datetime | None) -> FetchedHistory:
        """Daily rows strictly after ``since`` (everything when None), up to the source's now."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ReplayMarketSource:
    """The bundled CoinGecko exports, served up to a replay clock's "now"."""

    name = "replay"

    def __init__(self, *, daily_dir: Path = BUNDLED_DAILY_DIR, now: Callable[[], datetime] = _utc_now) -> None:
        self._daily_dir = daily_dir
        self._now = now

    def coins(self) -> list[CoinInfo]:
        return [BUNDLED_COINS[path.name.split("-")[0]] for path in sorted(self._daily_dir.glob("*-usd-max.csv"))]

    async def daily_history(self, coin: CoinInfo, *, since: datetime | None) -> FetchedHistory:
        path = self._daily_dir / f"{coin.symbol}-usd-max.csv"
        if not path.exists():
            raise LookupError(f"the bundled data has no history for {coin.coin_id}")
        rows = read_coingecko_export(path, coin).filter(pl.col("timestamp") <= self._now())
        if since is not None:
            rows = rows.filter(pl.col("timestamp") > since)
        buffer = io.BytesIO()
        rows.select(
            pl.col("timestamp").dt.strftime("%Y-%m-%d %H:%M:%S UTC").alias("snapped_at"),
            "price",
            "market_cap",
            "total_volume",
        ).write_csv(buffer)
        return FetchedHistory(coin=coin, rows=rows, raw=buffer.getvalue(), raw_suffix="csv")


@dataclass(frozen=True)
class PreparedBatch:
    """A batch ready for validation, and the rows refused on the way, each with its reason."""

    rows: pl.DataFrame
    rejected: pl.DataFrame
    notes: dict[str, int]


def prepare_market_batch(
    raw: pl.DataFrame,
    *,
    previous: tuple[datetime, float] | None = None,
    snap_tolerance: timedelta = SNAP_TOLERANCE,
) -> PreparedBatch:
    """Apply the deliberate decisions about the real data's flaws, before validation.

    - Zero ``market_cap``/``total_volume`` mean "CoinGecko had no data" (SHIB's early caps, BTC's
      early volumes), not a real zero: they become NULL.
    - CoinGecko's snapshot sometimes ran late or early (00:05:21, 23:29:55) and that day has no
      00:00 row: a row within ``snap_tolerance`` of a midnight takes that midnight's place, since it
      *is* that day's snapshot. Anything further off is a partial day (APT's listing-day row at
      01:03:53, or the "now" point CoinGecko appends) and is refused, as is an off-grid row whose
      midnight already has a snapshot.
    - Exact duplicate rows collapse to one; conflicting duplicates stay for validation to catch.
    - ``price_change_24h`` is the percent change from the previous day's snapshot, NULL where that
      day is missing (including across the batch boundary, via ``previous``).
    """
    frame = raw.select(list(RAW_COLUMNS))
    before_dedupe = frame.height
    frame = frame.unique(maintain_order=True)
    duplicates = before_dedupe - frame.height

    nearest_midnight = pl.col("timestamp").dt.round("1d")
    distance = (pl.col("timestamp") - nearest_midnight).abs()
    frame = frame.with_columns(
        grid_timestamp=pl.when(distance <= snap_tolerance).then(nearest_midnight),
        on_grid=pl.col("timestamp") == pl.col("timestamp").dt.truncate("1d"),
    )
    # An on-grid row wins its midnight; a snapped row only fills a midnight nobody else has. Two
    # different on-grid rows for one midnight both stay: choosing one would be a guess, so
    # validation sees the conflict and quarantines the batch.
    frame = frame.sort("coin_id", "grid_timestamp", "on_grid", descending=[False, False, True])
    frame = frame.with_columns(
        taken=pl.col("grid_timestamp").is_not_null()
        & ~pl.col("on_grid")
        & (pl.int_range(pl.len()).over("coin_id", "grid_timestamp") > 0)
    )
    reason = (
        pl.when(pl.col("grid_timestamp").is_null())
        .then(pl.lit(f"off the daily 00:00 UTC grid by more than {snap_tolerance} (partial day)"))
        .when(pl.col("taken"))
        .then(pl.lit("a second snapshot for a day that already has one"))
    )
    frame = frame.with_columns(reason=reason)
    rejected = frame.filter(pl.col("reason").is_not_null()).select(*RAW_COLUMNS, "reason")
    snapped = frame.filter(pl.col("reason").is_null() & ~pl.col("on_grid")).height
    kept = frame.filter(pl.col("reason").is_null()).with_columns(timestamp=pl.col("grid_timestamp"))
    # Counted on the rows kept: a zero on a refused row (APT's partial first day) never becomes NULL.
    zero_volume = kept.filter(pl.col("total_volume") == 0).height
    zero_cap = kept.filter(pl.col("market_cap") == 0).height
    kept = kept.select(list(RAW_COLUMNS)).with_columns(
        volume_24h=pl.when(pl.col("total_volume") > 0).then(pl.col("total_volume")),
        market_cap=pl.when(pl.col("market_cap") > 0).then(pl.col("market_cap")),
    )
    kept = kept.drop("total_volume").with_columns(is_anchor=pl.lit(False))
    if previous is not None:
        anchor = pl.DataFrame(
            {
                "coin_id": [kept["coin_id"][0] if kept.height else ""],
                "timestamp": [previous[0]],
                "price": [previous[1]],
                "is_anchor": [True],
            },
            schema={
                "coin_id": pl.String(),
                "timestamp": pl.Datetime("us", "UTC"),
                "price": pl.Float64(),
                "is_anchor": pl.Boolean(),
            },
        )
        kept = pl.concat([anchor, kept], how="diagonal_relaxed")
    # Each row is compared with the row before it and the anchor then dropped. Joining the changes
    # back on (coin_id, timestamp) would multiply a repeated timestamp: a conflicting duplicate, or
    # the stored last point fetched again (a late 00:05 snapshot is after its own midnight).
    kept = (
        kept.sort("coin_id", "timestamp", "is_anchor", descending=[False, False, True], maintain_order=True)
        .with_columns(
            price_change_24h=pl.when(
                (pl.col("timestamp") - pl.col("timestamp").shift(1).over("coin_id")) == timedelta(days=1)
            ).then((pl.col("price") / pl.col("price").shift(1).over("coin_id") - 1.0) * 100.0)
        )
        .filter(~pl.col("is_anchor"))
        .select("coin_id", "symbol", "timestamp", "price", "volume_24h", "market_cap", "price_change_24h")
    )
    return PreparedBatch(
        rows=kept,
        rejected=rejected,
        notes={
            "zero_volume_as_null": zero_volume,
            "zero_market_cap_as_null": zero_cap,
            "exact_duplicates_dropped": duplicates,
            "snapped_to_midnight": snapped,
            "rows_rejected": rejected.height,
        },
    )


def coin_info(coin_id: str) -> CoinInfo:
    """A known coin by CoinGecko id."""
    try:
        return COINS_BY_ID[coin_id]
    except KeyError:
        raise LookupError(f"unknown coin {coin_id!r}; known: {', '.join(sorted(COINS_BY_ID))}") from None
