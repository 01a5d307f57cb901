"""The gate and the store on SQLite and on real PostgreSQL: idempotent, incremental, quarantine, lake, run records."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from khalsi import lake
from khalsi.db.models import FearGreed, IngestionRun, MarketData, QuarantinedBatch, SocialDaily, as_utc
from khalsi.ingest import store
from khalsi.ingest.market import FetchedHistory, ReplayMarketSource
from khalsi.ingest.pipeline import (
    BatchOutcome,
    BatchQuarantinedError,
    load_market_batch,
    market_gated_batch,
    raise_if_quarantined,
    run_gate,
)
from khalsi.settings import Settings
from khalsi.sources.exports import CoinInfo
from khalsi.validation import MARKET_DAILY
from tests.factories import bundled_csv_rows, bundled_raw, classify, fetched, table_rows, tree_digest, utc

T1 = utc(2024, 6, 1)
T2 = utc(2024, 6, 10)
FLOW = "test"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> tuple[Engine, Settings]:
    """The same tests on the embedded default and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("engine"), request.getfixturevalue("settings")
    return request.getfixturevalue("pg_engine"), request.getfixturevalue("pg_settings")


def ingest(engine: Engine, settings: Settings, coin_id: str, now: datetime) -> tuple[FetchedHistory, BatchOutcome]:
    """What one flow run does for one coin, without Prefect: resume, fetch up to ``now``, gate."""
    source = ReplayMarketSource(now=lambda: now)
    coin = next(c for c in source.coins() if c.coin_id == coin_id)
    store.ensure_coins(engine, [coin])
    point = store.last_market_point(engine, coin_id)
    history = asyncio.run(source.daily_history(coin, since=point[0] if point else None))
    outcome = load_market_batch(engine, settings, fetched=history, source_name=source.name, now=now, flow_name=FLOW)
    return history, outcome


def csv_prices(coin_id: str) -> dict[datetime, float]:
    """The export's prices by instant, read independently of the code under test."""
    return {
        datetime.strptime(row["snapped_at"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=T1.tzinfo): float(row["price"])
        for row in bundled_csv_rows(coin_id)
    }


def stored_market(engine: Engine, coin_id: str) -> pl.DataFrame:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(MarketData.timestamp, MarketData.price, MarketData.price_change_24h)
            .where(MarketData.coin_id == coin_id)
            .order_by(MarketData.timestamp)
        ).all()
    return pl.DataFrame(
        [(as_utc(r[0]), r[1], r[2]) for r in rows],
        schema={"timestamp": pl.Datetime("us", "UTC"), "price": pl.Float64(), "price_change_24h": pl.Float64()},
        orient="row",
    )


def run_record(engine: Engine, run_id: str | None) -> IngestionRun:
    assert run_id is not None
    with Session(engine) as session:
        run = session.get(IngestionRun, uuid.UUID(run_id))
    assert run is not None
    return run


# --- idempotent and incremental ----------------------------------------------------------------------


def test_running_twice_stores_nothing_twice(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    _, first = ingest(engine, settings, "sui", T1)
    expected = sum(1 for moment in csv_prices("sui") if moment <= T1)
    assert first.status == "succeeded"
    assert first.rows_stored == expected
    stored = table_rows(engine, MarketData)
    lake_files = tree_digest(settings.lake_dir)

    # The same history again, as if the resume point had been lost: every row is already stored.
    source = ReplayMarketSource(now=lambda: T1)
    history = asyncio.run(source.daily_history(first_coin(source, "sui"), since=None))
    again = load_market_batch(engine, settings, fetched=history, source_name="replay", now=T1, flow_name=FLOW)
    assert again.status == "succeeded"
    assert again.rows_in == expected
    assert again.rows_stored == 0
    assert table_rows(engine, MarketData) == stored
    assert tree_digest(settings.lake_dir) == lake_files  # the partition is rewritten to the same bytes


def first_coin(source: ReplayMarketSource, coin_id: str) -> CoinInfo:
    return next(c for c in source.coins() if c.coin_id == coin_id)


def test_incremental_runs_fetch_only_new_days(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    prices = csv_prices("sui")
    _, first = ingest(engine, settings, "sui", T1)
    history, second = ingest(engine, settings, "sui", T2)

    new_days = sorted(moment for moment in prices if T1 < moment <= T2)
    assert len(new_days) == 9
    assert history.rows["timestamp"].to_list() == new_days  # only what the first run did not have
    assert second.rows_in == second.rows_stored == len(new_days)
    assert (second.first, second.last) == (str(new_days[0]), str(new_days[-1]))

    stored = stored_market(engine, "sui")
    assert stored["timestamp"].to_list() == sorted(moment for moment in prices if moment <= T2)
    # The 24h change of the first new day reaches back across the batch boundary.
    boundary = stored.filter(pl.col("timestamp") == new_days[0])["price_change_24h"][0]
    assert boundary == pytest.approx((prices[new_days[0]] / prices[T1] - 1.0) * 100.0)
    assert stored["price_change_24h"].null_count() == 1  # only the very first day has none

    _, third = ingest(engine, settings, "sui", T2)
    assert (third.status, third.rows_in, third.rows_stored) == ("up-to-date", 0, 0)

    for outcome, rows_in in ((first, first.rows_in), (second, len(new_days)), (third, 0)):
        run = run_record(engine, outcome.run_id)
        assert (run.flow, run.dataset, run.source) == (FLOW, MARKET_DAILY, "replay:sui")
        assert (run.status, run.rows_in, run.rows_stored, run.rows_rejected) == (
            outcome.status,
            rows_in,
            outcome.rows_stored,
            0,
        )
        assert run.finished_at is not None
        assert run.duration_seconds is not None
        assert run.duration_seconds >= 0
        # The source's bytes are kept under KHALSI_HOME/raw, beside the run that read them.
        assert run.raw_path is not None
        raw = settings.raw_dir / MARKET_DAILY / str(run.id) / "sui.csv"
        assert run.raw_path == str(raw)
        assert len(raw.read_text().splitlines()) == rows_in + 1  # header + rows


def test_resume_after_a_late_snapshot_day(db: tuple[Engine, Settings]) -> None:
    # BTC's 2018-01-30 snapshot was taken at 00:05:18. A run stopped that day stores it as
    # 2018-01-30 00:00; the next run fetches strictly after that midnight and gets it again.
    engine, settings = db
    _, first = ingest(engine, settings, "bitcoin", utc(2018, 1, 30, 12))
    assert first.status == "succeeded"
    assert store.last_market_point(engine, "bitcoin") == (utc(2018, 1, 30), 11095.2106891266)

    history, second = ingest(engine, settings, "bitcoin", utc(2018, 2, 2))
    assert history.rows["timestamp"][0] == utc(2018, 1, 30, 0, 5, 18)
    assert second.status == "succeeded", second.message
    assert second.rows_stored == 3  # 01-31, 02-01 and 02-02
    stored = stored_market(engine, "bitcoin").filter(pl.col("timestamp") >= utc(2018, 1, 29))
    assert stored["timestamp"].to_list() == [utc(2018, 1, day) for day in (29, 30, 31)] + [
        utc(2018, 2, 1),
        utc(2018, 2, 2),
    ]
    assert stored["price_change_24h"][2] == pytest.approx((9989.68977659669 / 11095.2106891266 - 1) * 100)


# --- quarantine --------------------------------------------------------------------------------------


def next_days(coin_id: str) -> pl.DataFrame:
    """The bundled rows after T1 up to T2: a realistic next batch to corrupt."""
    raw = bundled_raw(coin_id)
    return raw.filter((pl.col("timestamp") > T1) & (pl.col("timestamp") <= T2))


def corrupt_value(rows: pl.DataFrame, column: str, value: float | None) -> pl.DataFrame:
    return rows.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.lit(value, dtype=pl.Float64()))
        .otherwise(pl.col(column))
        .alias(column)
    )


def conflicting(rows: pl.DataFrame) -> pl.DataFrame:
    twin = rows.slice(4, 1).with_columns(price=pl.col("price") * 1.1)
    return pl.concat([rows, twin])


QUARANTINE_CASES: dict[str, tuple[Callable[[pl.DataFrame], pl.DataFrame], bool, str]] = {
    # name: (corruption, applied before preparation (else to the prepared rows), expected failure)
    "negative price": (
        lambda rows: corrupt_value(rows, "price", -1.0),
        True,
        "expect_column_values_to_be_between on price",
    ),
    "null price": (
        lambda rows: corrupt_value(rows, "price", None),
        True,
        "expect_column_values_to_not_be_null on price",
    ),
    "conflicting duplicate": (conflicting, True, "expect_compound_columns_to_be_unique on coin_id,timestamp"),
    # Preparation snaps or refuses off-grid rows; the gate must still catch one that slipped past.
    "off-grid timestamp": (
        lambda rows: rows.with_columns(
            timestamp=pl.when(pl.int_range(pl.len()) == 2)
            .then(pl.col("timestamp") + timedelta(hours=5))
            .otherwise(pl.col("timestamp"))
        ),
        False,
        "expect_column_values_to_be_in_set on on_daily_grid",
    ),
}


@pytest.mark.parametrize("case", list(QUARANTINE_CASES))
def test_a_blocking_failure_quarantines_and_changes_nothing_stored(db: tuple[Engine, Settings], case: str) -> None:
    engine, settings = db
    corrupt, before_preparation, failure = QUARANTINE_CASES[case]
    ingest(engine, settings, "sui", T1)
    market_before = table_rows(engine, MarketData)
    lake_before = tree_digest(settings.lake_dir)

    rows = next_days("sui")
    if before_preparation:
        batch = market_gated_batch(engine, settings, fetched(corrupt(rows)), source_name="replay", now=T2)
    else:
        good = market_gated_batch(engine, settings, fetched(rows), source_name="replay", now=T2)
        batch = dataclasses.replace(good, rows=corrupt(good.rows))
    outcome = run_gate(engine, settings, batch, flow_name=FLOW)

    assert outcome.status == "quarantined"
    assert outcome.rows_stored == 0
    assert outcome.message is not None
    assert failure in outcome.message

    with Session(engine) as session:
        kept = session.execute(sa.select(QuarantinedBatch)).scalar_one()
    assert kept.ingestion_run_id == uuid.UUID(str(outcome.run_id))
    assert (kept.dataset, kept.source, kept.row_count) == (MARKET_DAILY, "replay:sui", batch.rows.height)
    assert kept.reason == outcome.message
    assert kept.validation_result["passed"] is False
    assert any(failure.split(" on ")[0] == f["expectation"] for f in kept.validation_result["blocking_failures"])
    payload = pl.read_parquet(kept.payload_path)
    assert_frame_equal(payload, batch.rows)
    on_disk = json.loads(Path(kept.payload_path).with_suffix(".validation.json").read_text())
    assert on_disk["passed"] is False
    assert on_disk["blocking_failures"] == kept.validation_result["blocking_failures"]

    run = run_record(engine, outcome.run_id)
    assert (run.status, run.rows_stored, run.rows_rejected) == ("quarantined", 0, batch.rows_in)
    assert run.message == outcome.message

    assert table_rows(engine, MarketData) == market_before
    assert tree_digest(settings.lake_dir) == lake_before

    with pytest.raises(BatchQuarantinedError, match=r"market_daily batch sui quarantined: ") as raised:
        raise_if_quarantined([outcome], settings)
    assert failure in str(raised.value)
    assert str(settings.quarantine_dir) in str(raised.value)


def test_other_coins_still_load_beside_a_quarantined_one(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    bad = load_market_batch(
        engine,
        settings,
        fetched=fetched(corrupt_value(next_days("sui"), "price", -3.0)),
        source_name="replay",
        now=T2,
        flow_name=FLOW,
    )
    _, good = ingest(engine, settings, "aptos", T2)
    assert bad.status == "quarantined"
    assert good.status == "succeeded"
    assert good.rows_stored > 0
    assert stored_market(engine, "sui").height == 0
    assert stored_market(engine, "aptos").height == good.rows_stored
    with pytest.raises(BatchQuarantinedError) as raised:
        raise_if_quarantined([bad, good], settings)
    assert "batch sui quarantined" in str(raised.value)
    assert "aptos" not in str(raised.value)


# --- the lake ------------------------------------------------------------------------------------------


def test_lake_holds_exactly_the_stored_rows(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    for coin_id in ("sui", "aptos"):
        ingest(engine, settings, coin_id, T1)
        ingest(engine, settings, coin_id, T2)
    scanned = lake.scan_market(settings.lake_dir).collect()
    assert sorted(path.name for path in (settings.lake_dir / lake.MARKET_DAILY).iterdir()) == [
        "coin_id=aptos",
        "coin_id=sui",
    ]
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                MarketData.coin_id,
                MarketData.symbol,
                MarketData.timestamp,
                MarketData.price,
                MarketData.volume_24h,
                MarketData.market_cap,
            ).order_by(MarketData.coin_id, MarketData.timestamp)
        ).all()
    from_db = pl.DataFrame(
        [(r[0], r[1], as_utc(r[2]), r[3], r[4], r[5]) for r in rows], schema=lake.MARKET_SCHEMA, orient="row"
    )
    assert_frame_equal(scanned.sort("coin_id", "timestamp"), from_db)
    assert scanned.group_by("coin_id").agg(pl.col("timestamp").max())["timestamp"].to_list() == [T2, T2]


def test_fear_greed_and_social_daily_are_idempotent_and_point_in_time(db: tuple[Engine, Settings]) -> None:
    engine, settings = db
    days = [date(2024, 1, 1) + timedelta(days=offset) for offset in range(3)]
    index = pl.DataFrame(
        {
            "day": days,
            "value": [20, 50, 80],
            "classification": [classify(v) for v in (20, 50, 80)],
            "available_at": [utc(d.year, d.month, d.day) for d in days],
        }
    )
    run_id = uuid.uuid4()
    assert store.store_fear_greed(engine, index, run_id=run_id) == 3
    assert store.store_fear_greed(engine, index, run_id=run_id) == 0
    assert len(table_rows(engine, FearGreed)) == 3

    daily = pl.DataFrame(
        {
            "day": days,
            "coin_id": ["_market"] * 3,
            "mean_sentiment": [0.1, 0.2, 0.3],
            "mention_count": [1, 2, 3],
            "post_count": [1, 2, 3],
            "fear_greed": [20, 50, 80],
            "available_at": [utc(d.year, d.month, d.day) + timedelta(days=1) for d in days],
        }
    )
    assert store.replace_social_daily(engine, daily) == 3
    assert store.replace_social_daily(engine, daily) == 0  # nothing changed, nothing rewritten
    assert store.replace_social_daily(engine, daily.with_columns(post_count=pl.Series([1, 2, 4]))) == 1
    assert len(table_rows(engine, SocialDaily)) == 3

    store.refresh_fear_greed_lake(engine, settings.lake_dir)
    store.refresh_social_daily_lake(engine, settings.lake_dir)
    fear_greed = lake.scan_fear_greed(settings.lake_dir).collect()
    social = lake.scan_social_daily(settings.lake_dir).collect()
    assert fear_greed["available_at"].to_list() == [utc(d.year, d.month, d.day) for d in days]
    assert social["post_count"].to_list() == [1, 2, 4]
    # A day's aggregate is known only once the day is over.
    assert (social["available_at"] == social["day"].cast(pl.Datetime("us", "UTC")) + timedelta(days=1)).all()
