"""Small builders for market and social test data, and snapshots of what a store holds."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from khalsi.db.models import Base, Coin, Prediction
from khalsi.ingest.market import FetchedHistory
from khalsi.sources.exports import BUNDLED_DAILY_DIR, COINS_BY_ID, CoinInfo, read_coingecko_export

RAW_SCHEMA: dict[str, pl.DataType] = {
    "coin_id": pl.String(),
    "symbol": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"),
    "price": pl.Float64(),
    "market_cap": pl.Float64(),
    "total_volume": pl.Float64(),
}
BATCH_SCHEMA: dict[str, pl.DataType] = {
    "coin_id": pl.String(),
    "symbol": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"),
    "price": pl.Float64(),
    "volume_24h": pl.Float64(),
    "market_cap": pl.Float64(),
}
START = datetime(2024, 1, 1, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """An aware UTC instant."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def days_from(start: datetime, count: int) -> list[datetime]:
    """``count`` consecutive midnights from ``start``."""
    return [start + timedelta(days=offset) for offset in range(count)]


def raw_market(
    prices: Sequence[float | None],
    *,
    coin_id: str = "testcoin",
    symbol: str = "tst",
    timestamps: Sequence[datetime] | None = None,
    market_caps: Sequence[float | None] | None = None,
    volumes: Sequence[float | None] | None = None,
    start: datetime = START,
) -> pl.DataFrame:
    """Rows in the shape a source returns (a CoinGecko export: ``market_cap``, ``total_volume``)."""
    count = len(prices)
    stamps = list(timestamps) if timestamps is not None else days_from(start, count)
    return pl.DataFrame(
        {
            "coin_id": [coin_id] * count,
            "symbol": [symbol] * count,
            "timestamp": stamps,
            "price": list(prices),
            "market_cap": list(market_caps) if market_caps is not None else [1e9] * count,
            "total_volume": list(volumes) if volumes is not None else [1e7] * count,
        },
        schema=RAW_SCHEMA,
    )


def market_batch(
    prices: Sequence[float | None],
    *,
    coin_id: str = "testcoin",
    symbol: str = "tst",
    timestamps: Sequence[datetime] | None = None,
    market_caps: Sequence[float | None] | None = None,
    volumes: Sequence[float | None] | None = None,
    start: datetime = START,
) -> pl.DataFrame:
    """A prepared batch, the shape ``validate_market`` checks (``volume_24h`` instead of ``total_volume``)."""
    raw = raw_market(
        prices,
        coin_id=coin_id,
        symbol=symbol,
        timestamps=timestamps,
        market_caps=market_caps,
        volumes=volumes,
        start=start,
    )
    return raw.rename({"total_volume": "volume_24h"}).select(list(BATCH_SCHEMA))


def bundled_path(coin_id: str) -> Path:
    """The bundled CoinGecko export of a coin."""
    return BUNDLED_DAILY_DIR / f"{COINS_BY_ID[coin_id].symbol}-usd-max.csv"


def bundled_raw(coin_id: str) -> pl.DataFrame:
    """A bundled export read as raw source rows."""
    return read_coingecko_export(bundled_path(coin_id), COINS_BY_ID[coin_id])


def bundled_csv_rows(coin_id: str) -> list[dict[str, str]]:
    """A bundled export read with the csv module, independently of the code under test."""
    with bundled_path(coin_id).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def fetched(rows: pl.DataFrame, coin: CoinInfo | None = None) -> FetchedHistory:
    """Rows as a source would hand them over, with CSV bytes as the raw payload."""
    info = coin or COINS_BY_ID.get(rows["coin_id"][0]) or CoinInfo(rows["coin_id"][0], rows["symbol"][0], "Test")
    return FetchedHistory(coin=info, rows=rows, raw=export_csv_text(rows).encode(), raw_suffix="csv")


def export_csv_text(rows: pl.DataFrame) -> str:
    """Rows rendered as a CoinGecko "Export Data" CSV."""
    lines = ["snapped_at,price,market_cap,total_volume"]
    for row in rows.iter_rows(named=True):
        values = [row["price"], row["market_cap"], row["total_volume"]]
        rendered = ["" if value is None else repr(float(value)) for value in values]
        lines.append(f"{row['timestamp']:%Y-%m-%d %H:%M:%S} UTC," + ",".join(rendered))
    return "\n".join(lines) + "\n"


def write_export(path: Path, rows: pl.DataFrame) -> Path:
    """Write rows as a CoinGecko export file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(export_csv_text(rows), encoding="utf-8")
    return path


def write_fear_greed_csv(path: Path, rows: Sequence[tuple[date, int | str, str]]) -> Path:
    """Write an alternative.me Fear & Greed CSV (``value,value_classification,timestamp,time_until_update``)."""
    lines = ["value,value_classification,timestamp,time_until_update"]
    lines += [f"{value},{classification},{day.isoformat()}," for day, value, classification in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def classify(value: int) -> str:
    """alternative.me's class for an index value."""
    if value <= 24:
        return "Extreme Fear"
    if value <= 45:
        return "Fear"
    if value <= 54:
        return "Neutral"
    if value <= 74:
        return "Greed"
    return "Extreme Greed"


def table_rows(engine: Engine, model: type[Base]) -> list[tuple[Any, ...]]:
    """Every row of a table, in a stable order, for before/after comparisons."""
    table = model.__table__
    assert isinstance(table, sa.Table)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table)).all()
    return sorted((tuple(row) for row in rows), key=repr)


def count_rows(engine: Engine, model: type[Base], *where: sa.ColumnElement[bool]) -> int:
    """How many rows a table holds (optionally filtered)."""
    table = model.__table__
    assert isinstance(table, sa.Table)
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256), to prove nothing was rewritten."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def add_coin(engine: Engine, coin_id: str, symbol: str, name: str | None = None) -> None:
    """A tracked coin, if it is not one already."""
    with engine.begin() as connection:
        exists = connection.execute(sa.select(Coin.coin_id).where(Coin.coin_id == coin_id)).first()
        if exists is None:
            connection.execute(sa.insert(Coin).values(coin_id=coin_id, symbol=symbol, name=name or coin_id.title()))


def add_prediction(
    engine: Engine,
    coin_id: str,
    symbol: str,
    *,
    timeframe: str,
    probability_up: float,
    feature_timestamp: datetime,
    model_version: str = "1",
    created_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> None:
    """One ``predictions`` row shaped like the score flow's (serving.predict.prediction_rows)."""
    written = {"created_at": created_at} if created_at is not None else {}
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Prediction).values(
                coin_id=coin_id,
                symbol=symbol,
                timeframe=timeframe,
                probability_up=probability_up,
                probability_down=round(1 - probability_up, 4),
                confidence_level=round(abs(probability_up - 0.5) * 2, 4),
                price_target=101.5,
                price_target_low=90.25,
                price_target_high=110.75,
                model_name=f"khalsi-direction-{timeframe}",
                model_version=model_version,
                feature_timestamp=feature_timestamp,
                methodology={"source": "batch-score"},
                expires_at=expires_at,
                **written,
            )
        )


def isolated_khalsi_env(monkeypatch: Any, **values: str) -> None:
    """Only the given ``KHALSI_<NAME>`` variables, and settings read afresh (flows call ``get_settings``)."""
    import os

    from khalsi.settings import get_settings

    for key in list(os.environ):
        # KHALSI_TEST_* point the test fixtures at services; they are not platform settings.
        if key.startswith("KHALSI_") and not key.startswith("KHALSI_TEST_"):
            monkeypatch.delenv(key)
    for name, value in values.items():
        monkeypatch.setenv(f"KHALSI_{name}", value)
    get_settings.cache_clear()
