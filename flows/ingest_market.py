"""Prefect flow ``ingest_market``: fetch → prepare → validate → store or quarantine → lake.

Thin on purpose: every step is a plain function in ``khalsi.ingest``; tasks add retries and
visibility. Fetches run concurrently (the source's rate budget spaces them); database writes run
one coin at a time in a worker thread so the event loop never blocks and SQLite never contends.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff
from sqlalchemy.engine import Engine

from khalsi.db.engine import create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.ingest import store
from khalsi.ingest.market import FetchedHistory, MarketSource, prepare_market_batch
from khalsi.ingest.sources import market_source_from_settings, source_clock
from khalsi.settings import Settings, get_settings
from khalsi.sources.exports import CoinInfo
from khalsi.validation import MARKET_DAILY, validate_market

FLOW_NAME = "ingest_market"


class BatchQuarantinedError(RuntimeError):
    """A batch failed a blocking expectation; it was set aside and nothing stored was touched."""


@dataclass
class CoinOutcome:
    coin_id: str
    status: str
    rows_in: int = 0
    rows_stored: int = 0
    rows_rejected: int = 0
    first: str | None = None
    last: str | None = None
    warnings: list[str] = field(default_factory=list)
    message: str | None = None


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5)
async def fetch_history(source: MarketSource, coin: CoinInfo, since: datetime | None) -> FetchedHistory:
    """Fetch a coin's new daily rows (the source retries HTTP faults itself; this retries the rest)."""
    return await source.daily_history(coin, since=since)


def _load_batch(
    engine: Engine, settings: Settings, *, fetched: FetchedHistory, source_name: str, now: datetime
) -> CoinOutcome:
    coin = fetched.coin
    run_id = store.start_run(
        engine, flow=FLOW_NAME, source=f"{source_name}:{coin.coin_id}", dataset=MARKET_DAILY,
        prefect_flow_run_id=str(flow_run.get_id() or "") or None,
    )
    raw_path = store.keep_raw(
        settings.raw_dir, dataset=MARKET_DAILY, run_id=run_id, name=coin.coin_id,
        payload=fetched.raw, suffix=fetched.raw_suffix,
    )
    previous = store.last_market_point(engine, coin.coin_id)
    prepared = prepare_market_batch(fetched.rows, previous=previous)
    outcome = CoinOutcome(coin_id=coin.coin_id, status="succeeded", rows_in=fetched.rows.height,
                          rows_rejected=prepared.rejected.height)
    if prepared.rows.height == 0:
        outcome.status = "up-to-date" if fetched.rows.height == 0 else "succeeded"
        store.finish_run(engine, run_id, status=outcome.status, rows_in=outcome.rows_in, rows_stored=0,
                         rows_rejected=outcome.rows_rejected, details={"notes": prepared.notes}, raw_path=str(raw_path))
        return outcome
    report = validate_market(prepared.rows, now=now)
    details: dict[str, Any] = {"notes": prepared.notes, "validation": report.as_dict()}
    if not report.passed:
        store.quarantine(engine, settings.quarantine_dir, run_id=run_id, dataset=MARKET_DAILY,
                         source=f"{source_name}:{coin.coin_id}", batch=prepared.rows, report=report)
        outcome.status = "quarantined"
        outcome.message = report.describe_failures()
        store.finish_run(engine, run_id, status="quarantined", rows_in=outcome.rows_in, rows_stored=0,
                         rows_rejected=fetched.rows.height, message=outcome.message, details=details,
                         raw_path=str(raw_path))
        outcome.rows_rejected = fetched.rows.height
        return outcome
    outcome.rows_stored = store.store_market_rows(engine, prepared.rows, run_id=run_id, source=source_name)
    store.refresh_market_lake(engine, settings.lake_dir, coin.coin_id)
    outcome.first = prepared.rows["timestamp"].min().isoformat()  # type: ignore[union-attr]
    outcome.last = prepared.rows["timestamp"].max().isoformat()  # type: ignore[union-attr]
    outcome.warnings = report.warnings
    store.finish_run(engine, run_id, status="succeeded", rows_in=outcome.rows_in, rows_stored=outcome.rows_stored,
                     rows_rejected=outcome.rows_rejected, details=details, raw_path=str(raw_path))
    return outcome


@task
async def load_batch(settings: Settings, fetched: FetchedHistory, source_name: str, now: datetime) -> CoinOutcome:
    """Prepare, validate and store (or quarantine) one coin's batch, off the event loop."""
    engine = create_sync_engine(settings)
    try:
        return await asyncio.to_thread(
            _load_batch, engine, settings, fetched=fetched, source_name=source_name, now=now
        )
    finally:
        engine.dispose()


@flow(name=FLOW_NAME)
async def ingest_market(coins: list[str] | None = None) -> list[dict[str, Any]]:
    """Ingest new daily market data for the configured (or given) coins; fail if any batch was quarantined."""
    logger = get_run_logger()
    settings = get_settings()
    settings.ensure_home()
    engine = create_sync_engine(settings)
    await asyncio.to_thread(upgrade, engine)
    source = market_source_from_settings(settings)
    now = source_clock(settings)()
    wanted = coins or settings.coins
    selected = [c for c in source.coins() if not wanted or c.coin_id in wanted]
    unknown = set(wanted) - {c.coin_id for c in selected}
    if unknown:
        raise ValueError(f"unknown coins {sorted(unknown)}; this source serves {[c.coin_id for c in source.coins()]}")
    await asyncio.to_thread(store.ensure_coins, engine, selected)
    since = {c.coin_id: await asyncio.to_thread(store.last_market_point, engine, c.coin_id) for c in selected}
    engine.dispose()

    fetched = await asyncio.gather(
        *(fetch_history(source, coin, since[coin.coin_id][0] if since[coin.coin_id] else None) for coin in selected)
    )
    outcomes = [await load_batch(settings, batch, source.name, now) for batch in fetched]
    for outcome in outcomes:
        logger.info(
            "%s: %s, %d in, %d stored, %d rejected", outcome.coin_id, outcome.status,
            outcome.rows_in, outcome.rows_stored, outcome.rows_rejected,
        )
        for warning in outcome.warnings:
            logger.warning("%s: %s", outcome.coin_id, warning)
    quarantined = [o for o in outcomes if o.status == "quarantined"]
    if quarantined:
        raise BatchQuarantinedError(
            "; ".join(f"{o.coin_id} batch quarantined: {o.message}" for o in quarantined)
            + f" (see {settings.quarantine_dir}; nothing already stored was changed)"
        )
    return [asdict(o) for o in outcomes]
