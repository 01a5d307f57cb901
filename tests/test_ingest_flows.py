"""The ingestion flows under Prefect, configured from the environment as in production.

One Prefect test server for the session (``prefect_harness``); a few small coins keep it fast. The
CoinGecko path runs the real client against the replay server over HTTP, with injected faults.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import flows.ingest_market as ingest_market_module
from flows.ingest_market import ingest_market
from flows.ingest_social import ingest_social
from khalsi import lake
from khalsi.db.engine import create_sync_engine
from khalsi.db.models import FearGreed, IngestionRun, MarketData, QuarantinedBatch, SocialDaily, SocialPost, as_utc
from khalsi.ingest.pipeline import BatchQuarantinedError
from khalsi.settings import Settings, get_settings
from khalsi.sources.exports import BUNDLED_DAILY_DIR, BUNDLED_SOCIAL_DIR
from khalsi.sources.replay import Fault, FaultKind, ReplayData, ReplayServer, run_replay_server
from tests.factories import (
    bundled_csv_rows,
    bundled_raw,
    count_rows,
    isolated_khalsi_env,
    table_rows,
    tree_digest,
    utc,
    write_export,
)

T1 = utc(2024, 6, 1)
T2 = utc(2024, 6, 10)
COINS = ["sui", "worldcoin-wld"]
FAST_CLIENT = {
    "COINGECKO_CALLS_PER_MINUTE": "100000",
    "COINGECKO_MAX_RETRIES": "1",
    "COINGECKO_BACKOFF_INITIAL_SECONDS": "0.01",
    "COINGECKO_TIMEOUT_SECONDS": "10",
}

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def flow_home(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with run_replay_server(start=T1) as running:
        yield running


@pytest.fixture
def replay(server: ReplayServer) -> Iterator[ReplayServer]:
    server.faults.clear()
    server.requests.clear()
    server.clock.reset(start=T1, speed=0.0)
    yield server
    server.faults.clear()


def days_up_to(coin_id: str, now: datetime, *, after: datetime | None = None) -> list[datetime]:
    """The export's midnights up to ``now``, read independently of the code under test."""
    days = []
    for row in bundled_csv_rows(coin_id):
        moment = datetime.strptime(row["snapped_at"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
        if moment.hour == 0 and moment.minute == 0 and moment <= now and (after is None or moment > after):
            days.append(moment)
    return days


def stored_days(engine: Engine, coin_id: str) -> list[datetime]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(MarketData.timestamp).where(MarketData.coin_id == coin_id).order_by(MarketData.timestamp)
        ).scalars()
        return [as_utc(value) for value in rows]


def engine_for(settings: Settings) -> Engine:
    return create_sync_engine(settings)


def by_name(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {outcome["name"]: outcome for outcome in outcomes}


def lake_summary(settings: Settings) -> dict[str, tuple[int, datetime, datetime]]:
    frame = lake.scan_market(settings.lake_dir).collect()
    summary = frame.group_by("coin_id").agg(
        pl.len(), pl.col("timestamp").min().alias("lo"), pl.col("timestamp").max().alias("hi")
    )
    return {row[0]: (row[1], row[2], row[3]) for row in summary.iter_rows()}


def db_summary(engine: Engine) -> dict[str, tuple[int, datetime, datetime]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                MarketData.coin_id,
                sa.func.count(),
                sa.func.min(MarketData.timestamp),
                sa.func.max(MarketData.timestamp),
            ).group_by(MarketData.coin_id)
        ).all()
    return {row[0]: (int(row[1]), as_utc(row[2]), as_utc(row[3])) for row in rows}


def assert_runs_recorded(engine: Engine, settings: Settings, *, flow: str, count: int) -> None:
    """Every run is in ingestion_runs with its counts, duration, Prefect run id and raw payload."""
    with Session(engine) as session:
        runs = session.execute(sa.select(IngestionRun).order_by(IngestionRun.started_at)).scalars().all()
    assert len(runs) == count
    for run in runs:
        assert run.flow == flow
        assert run.prefect_flow_run_id
        assert run.finished_at is not None
        assert run.duration_seconds is not None
        assert run.duration_seconds >= 0
        assert run.rows_stored <= run.rows_in
        assert run.raw_path is not None
        assert Path(run.raw_path).is_file()
        assert Path(run.raw_path).is_relative_to(settings.raw_dir)


# --- replay source: idempotent, incremental, on both databases -------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_market_flow_is_idempotent_and_incremental(
    backend: str, flow_home: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    database = {} if backend == "sqlite" else {"DATABASE_URL": request.getfixturevalue("pg_database_url")}
    env = {"HOME": str(flow_home), "ENVIRONMENT": "test", **database}

    isolated_khalsi_env(monkeypatch, REPLAY_START=T1.date().isoformat(), **env)
    settings = get_settings()
    assert settings.redis.url == ""  # nothing here needs Redis
    first = by_name(await ingest_market(coins=COINS))
    engine = engine_for(settings)
    try:
        for coin_id in COINS:
            assert first[coin_id]["status"] == "succeeded"
            assert stored_days(engine, coin_id) == days_up_to(coin_id, T1)
            assert first[coin_id]["rows_stored"] == len(days_up_to(coin_id, T1))
        stored = table_rows(engine, MarketData)

        # Same clock again: nothing new to fetch, nothing stored twice.
        again = by_name(await ingest_market(coins=COINS))
        assert {o["status"] for o in again.values()} == {"up-to-date"}
        assert table_rows(engine, MarketData) == stored

        # The clock moves on: only the new days are fetched.
        isolated_khalsi_env(monkeypatch, REPLAY_START=T2.date().isoformat(), **env)
        later = by_name(await ingest_market(coins=COINS))
        for coin_id in COINS:
            new_days = days_up_to(coin_id, T2, after=T1)
            assert len(new_days) == 9
            assert later[coin_id]["rows_in"] == later[coin_id]["rows_stored"] == len(new_days)
            assert stored_days(engine, coin_id) == days_up_to(coin_id, T2)

        prices = {row["snapped_at"][:10]: float(row["price"]) for row in bundled_csv_rows("sui")}
        with engine.connect() as connection:
            change = connection.execute(
                sa.select(MarketData.price_change_24h).where(
                    MarketData.coin_id == "sui", MarketData.timestamp == T1 + timedelta(days=1)
                )
            ).scalar_one()
        assert change == pytest.approx((prices["2024-06-02"] / prices["2024-06-01"] - 1) * 100)

        assert_runs_recorded(engine, settings, flow="ingest_market", count=3 * len(COINS))

        # The lake holds exactly what the tables hold, one partition per coin.
        assert lake_summary(settings) == db_summary(engine)
        assert sorted(p.name for p in (settings.lake_dir / lake.MARKET_DAILY).iterdir()) == [
            f"coin_id={coin_id}" for coin_id in sorted(COINS)
        ]
    finally:
        engine.dispose()


async def test_market_flow_refuses_an_unknown_coin(flow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolated_khalsi_env(monkeypatch, HOME=str(flow_home), REPLAY_START=T1.date().isoformat())
    with pytest.raises(ValueError, match=r"unknown coins \['not-a-coin'\]"):
        await ingest_market(coins=["sui", "not-a-coin"])


# --- the social flow -----------------------------------------------------------------------------------


def fear_greed_days_up_to(day: date) -> set[date]:
    path = BUNDLED_SOCIAL_DIR / "fear_greed_index.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        return {d for d in (date.fromisoformat(row["timestamp"]) for row in csv.DictReader(handle)) if d <= day}


def social_lake_checks(settings: Settings, clock: datetime) -> None:
    fear_greed = lake.scan_fear_greed(settings.lake_dir).collect()
    assert set(fear_greed["day"].to_list()) == fear_greed_days_up_to(clock.date())
    # alternative.me publishes a day's value at 00:00 UTC of that day, never later than now.
    assert (fear_greed["available_at"] == fear_greed["day"].cast(pl.Datetime("us", "UTC"))).all()
    assert (fear_greed["available_at"] <= clock).all()

    daily = lake.scan_social_daily(settings.lake_dir).collect()
    assert daily.height > 0
    assert lake.MARKET_WIDE in daily["coin_id"].to_list()
    # A day's aggregate can be known only once that day is over.
    assert (daily["available_at"] == daily["day"].cast(pl.Datetime("us", "UTC")) + timedelta(days=1)).all()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_social_flow_stores_point_in_time_data_once(
    backend: str, flow_home: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    clock = utc(2024, 4, 1)
    database = {} if backend == "sqlite" else {"DATABASE_URL": request.getfixturevalue("pg_database_url")}
    isolated_khalsi_env(
        monkeypatch, HOME=str(flow_home), ENVIRONMENT="test", REPLAY_START=clock.date().isoformat(), **database
    )
    settings = get_settings()
    first = by_name(await ingest_social())
    # Reddit's bundled posts are from 2025: nothing of it is visible yet, the rest loads.
    assert first.pop("bundled-reddit-2025")["status"] == "up-to-date"
    assert {o["status"] for o in first.values()} == {"succeeded"}
    social_lake_checks(settings, clock)

    engine = create_sync_engine(settings)
    try:
        counts = {model: count_rows(engine, model) for model in (SocialPost, FearGreed, SocialDaily)}
        assert counts[FearGreed] == len(fear_greed_days_up_to(clock.date()))
        assert counts[SocialPost] > 0
        with engine.connect() as connection:
            newest_post = connection.execute(sa.select(sa.func.max(SocialPost.published_at))).scalar_one()
        assert as_utc(newest_post) <= clock  # the replay never shows a post before its time

        again = await ingest_social()
        assert sum(o["rows_stored"] for o in again) == 0
        assert {model: count_rows(engine, model) for model in counts} == counts
    finally:
        engine.dispose()


# --- the real CoinGecko client against the replay server ------------------------------------------------


def coingecko_env(flow_home: Path, server: ReplayServer, **extra: str) -> dict[str, str]:
    return {
        "HOME": str(flow_home),
        "ENVIRONMENT": "test",
        "MARKET_SOURCE": "coingecko",
        "COINGECKO_API_URL": server.api_url,
        **FAST_CLIENT,
        **extra,
    }


async def test_coingecko_flow_retries_through_rate_limits(
    flow_home: Path, monkeypatch: pytest.MonkeyPatch, replay: ReplayServer
) -> None:
    isolated_khalsi_env(monkeypatch, **coingecko_env(flow_home, replay, COINGECKO_MAX_RETRIES="3"))
    replay.faults.inject(
        Fault(FaultKind.RATE_LIMIT_JSON, retry_after="0", path_prefix="/coins/sui/market_chart"), times=2
    )
    outcomes = by_name(await ingest_market(coins=["sui", "aptos"]))

    assert [r.status for r in replay.requests.entries("/coins/sui/market_chart")] == [429, 429, 200]
    assert [r.status for r in replay.requests.entries("/coins/aptos/market_chart")] == [200]
    settings = get_settings()
    engine = create_sync_engine(settings)
    try:
        assert stored_days(engine, "sui") == days_up_to("sui", T1)
        # APT's partial listing day is refused on this path too, with the same reason.
        assert stored_days(engine, "aptos") == days_up_to("aptos", T1)
        assert outcomes["aptos"]["rows_rejected"] == 1
        assert outcomes["sui"]["status"] == "succeeded"
        with Session(engine) as session:
            raw_paths = session.execute(sa.select(IngestionRun.raw_path)).scalars().all()
        assert sorted(Path(str(p)).name for p in raw_paths) == ["aptos.json", "sui.json"]
        assert lake_summary(settings) == db_summary(engine)
    finally:
        engine.dispose()


async def test_coingecko_server_error_storm_fails_the_flow_and_keeps_stored_data(
    flow_home: Path, monkeypatch: pytest.MonkeyPatch, replay: ReplayServer
) -> None:
    isolated_khalsi_env(monkeypatch, **coingecko_env(flow_home, replay))
    await ingest_market(coins=["sui"])
    settings = get_settings()
    engine = create_sync_engine(settings)
    try:
        stored, runs, lake_files = (
            table_rows(engine, MarketData),
            table_rows(engine, IngestionRun),
            tree_digest(settings.lake_dir),
        )
        replay.clock.reset(start=T2)
        replay.requests.clear()
        replay.faults.inject(Fault(FaultKind.SERVER_ERROR, path_prefix="/coins/sui/market_chart"), times=100)
        # The task keeps its declared retries; only the wait between them is shortened for the test.
        monkeypatch.setattr(
            ingest_market_module,
            "fetch_history",
            ingest_market_module.fetch_history.with_options(retry_delay_seconds=0, retry_jitter_factor=0.0),
        )
        state = await ingest_market(coins=["sui"], return_state=True)

        assert state.is_failed()
        assert "UpstreamUnavailableError: sui: CoinGecko 500" in str(state.message)
        attempts = (ingest_market_module.fetch_history.retries + 1) * (settings.coingecko.max_retries + 1)
        assert [r.status for r in replay.requests.entries("/coins/sui/market_chart")] == [500] * attempts
        assert table_rows(engine, MarketData) == stored
        assert table_rows(engine, IngestionRun) == runs
        assert tree_digest(settings.lake_dir) == lake_files
    finally:
        engine.dispose()


async def test_a_quarantined_coin_fails_the_flow_while_the_others_load(
    flow_home: Path, monkeypatch: pytest.MonkeyPatch, replay: ReplayServer, tmp_path: Path
) -> None:
    isolated_khalsi_env(monkeypatch, **coingecko_env(flow_home, replay))
    await ingest_market(coins=["sui", "aptos"])
    settings = get_settings()
    engine = create_sync_engine(settings)
    try:
        sui_rows = [row for row in table_rows(engine, MarketData) if "sui" in row]
        sui_lake = tree_digest(settings.lake_dir / lake.MARKET_DAILY / "coin_id=sui")

        # The feed turns bad for SUI only: a negative price inside the new days.
        bad_sui = bundled_raw("sui").with_columns(
            price=pl.when(pl.col("timestamp") == utc(2024, 6, 5)).then(-0.5).otherwise(pl.col("price"))
        )
        data = ReplayData.from_exports(
            [write_export(tmp_path / "feed" / "sui-usd-max.csv", bad_sui), BUNDLED_DAILY_DIR / "apt-usd-max.csv"]
        )
        with run_replay_server(start=T2, data=data) as bad_server:
            isolated_khalsi_env(monkeypatch, **coingecko_env(flow_home, bad_server))
            with pytest.raises(BatchQuarantinedError) as raised:
                await ingest_market(coins=["sui", "aptos"])
        message = str(raised.value)
        assert "market_daily batch sui quarantined" in message
        assert "expect_column_values_to_be_between on price" in message
        assert "aptos" not in message

        assert stored_days(engine, "aptos") == days_up_to("aptos", T2)
        assert [row for row in table_rows(engine, MarketData) if "sui" in row] == sui_rows
        assert tree_digest(settings.lake_dir / lake.MARKET_DAILY / "coin_id=sui") == sui_lake
        with Session(engine) as session:
            quarantined = session.execute(sa.select(QuarantinedBatch)).scalar_one()
            run = session.get(IngestionRun, quarantined.ingestion_run_id)
        assert quarantined.source == "coingecko:sui"
        assert run is not None
        assert run.status == "quarantined"
        assert run.prefect_flow_run_id is not None
        flow_run_id = run.prefect_flow_run_id
    finally:
        engine.dispose()

    async with get_client() as client:
        flow_run = await client.read_flow_run(uuid.UUID(flow_run_id))
    assert flow_run.state is not None
    assert flow_run.state.is_failed()
    assert "batch sui quarantined" in str(flow_run.state.message)
