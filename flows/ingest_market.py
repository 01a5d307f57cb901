"""Prefect flow ``ingest_market``: fetch → prepare → validate → store or quarantine → lake.

Thin on purpose: every step is a plain function in ``khalsi.ingest``; tasks add retries and
visibility. Fetches run concurrently (the source's rate budget spaces them); database writes run
one coin at a time in a worker thread, so the event loop never blocks and SQLite never contends.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from khalsi.db.engine import create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.events import channel_name, publish_events
from khalsi.ingest import store
from khalsi.ingest.market import FetchedHistory, MarketSource
from khalsi.ingest.pipeline import BatchOutcome, load_market_batch, raise_if_quarantined
from khalsi.ingest.sources import market_source_from_settings, source_clock
from khalsi.settings import Settings, get_settings
from khalsi.sources.exports import CoinInfo

FLOW_NAME = "ingest_market"


def prefect_run_id() -> str | None:
    """The current Prefect flow run's id, for the run record."""
    return str(flow_run.get_id() or "") or None


@task(
    cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5
)
async def fetch_history(source: MarketSource, coin: CoinInfo, since: datetime | None) -> FetchedHistory:
    """Fetch a coin's new daily rows (the HTTP client retries faults itself; this retries the rest)."""
    return await source.daily_history(coin, since=since)


@task(cache_policy=NO_CACHE)
async def load_batch(settings: Settings, fetched: FetchedHistory, source_name: str, now: datetime) -> BatchOutcome:
    """Prepare, validate and store (or quarantine) one coin's batch, off the event loop."""
    engine = create_sync_engine(settings)
    try:
        return await asyncio.to_thread(
            load_market_batch,
            engine,
            settings,
            fetched=fetched,
            source_name=source_name,
            now=now,
            flow_name=FLOW_NAME,
            prefect_flow_run_id=prefect_run_id(),
        )
    finally:
        engine.dispose()


@task(cache_policy=NO_CACHE)
async def resume_points(settings: Settings, coins: list[CoinInfo]) -> dict[str, datetime | None]:
    """Migrate, register the coins and find where each one's history resumes."""

    def _resume() -> dict[str, datetime | None]:
        engine = create_sync_engine(settings)
        try:
            upgrade(engine)
            store.ensure_coins(engine, coins)
            points = {coin.coin_id: store.last_market_point(engine, coin.coin_id) for coin in coins}
            return {coin_id: point[0] if point else None for coin_id, point in points.items()}
        finally:
            engine.dispose()

    return await asyncio.to_thread(_resume)


@task(cache_policy=NO_CACHE)
async def announce_new_prices(settings: Settings, coin_ids: list[str]) -> int:
    """Tell live clients (WebSockets, through Redis) each coin's newest stored price; best effort."""

    def _announce() -> int:
        engine = create_sync_engine(settings)
        try:
            events = []
            for coin_id in coin_ids:
                point = store.last_market_point(engine, coin_id)
                if point is not None:
                    payload = {
                        "type": "price",
                        "coin_id": coin_id,
                        "timestamp": point[0].isoformat(),
                        "price": point[1],
                    }
                    events.append((channel_name("prices", coin_id), payload))
            return publish_events(settings, events)
        finally:
            engine.dispose()

    return await asyncio.to_thread(_announce)


@flow(name=FLOW_NAME)
async def ingest_market(coins: list[str] | None = None) -> list[dict[str, Any]]:
    """Ingest new daily market data for the configured (or given) coins; fail if any batch was quarantined."""
    logger = get_run_logger()
    settings = get_settings()
    settings.ensure_home()
    source = market_source_from_settings(settings)
    now = source_clock(settings)()
    wanted = coins or settings.coins
    available = source.coins()
    selected = [c for c in available if not wanted or c.coin_id in wanted]
    unknown = set(wanted) - {c.coin_id for c in selected}
    if unknown:
        raise ValueError(f"unknown coins {sorted(unknown)}; this source serves {[c.coin_id for c in available]}")
    since = await resume_points(settings, selected)
    fetched = await asyncio.gather(*(fetch_history(source, coin, since[coin.coin_id]) for coin in selected))
    outcomes = [await load_batch(settings, batch, source.name, now) for batch in fetched]
    for outcome in outcomes:
        logger.info(
            "%s: %s, %d in, %d stored, %d rejected",
            outcome.name,
            outcome.status,
            outcome.rows_in,
            outcome.rows_stored,
            outcome.rows_rejected,
        )
        for warning in outcome.warnings:
            logger.warning("%s: %s", outcome.name, warning)
    stored = [coin.coin_id for coin, outcome in zip(selected, outcomes, strict=True) if outcome.rows_stored > 0]
    if stored:
        await announce_new_prices(settings, stored)
    raise_if_quarantined(outcomes, settings)
    return [asdict(o) for o in outcomes]
