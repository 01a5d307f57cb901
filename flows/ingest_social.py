"""Prefect flow ``ingest_social``: posts, Fear & Greed and trending coins, then daily aggregates.

Each source resumes from what is stored and goes through the same gate as market data; the
daily per-coin and market-wide aggregates are then recomputed point-in-time from what is stored.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.ingest_market import prefect_run_id
from khalsi.db.engine import create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.ingest import social
from khalsi.ingest.pipeline import BatchOutcome, GatedBatch, raise_if_quarantined, run_gate
from khalsi.ingest.sources import source_clock
from khalsi.settings import Settings, get_settings
from khalsi.sources.social import SocialSource

FLOW_NAME = "ingest_social"


@task(
    cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5
)
async def fetch_posts(source: SocialSource, since: datetime | None) -> pl.DataFrame:
    """New posts from one source, scored and with their coin mentions."""
    return await source.fetch(since=since)


@task(
    cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5
)
async def fetch_fear_greed(settings: Settings, since: datetime | None) -> tuple[str, pl.DataFrame]:
    """New Fear & Greed days."""
    source = social.fear_greed_source(settings)
    return source.name, await source.fetch(since=since)


@task(
    cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5
)
async def fetch_trending(settings: Settings) -> tuple[Any, bytes]:
    """CoinGecko's trending coins."""
    return await social.fetch_trending(settings)


async def _gate(settings: Settings, make_batch: Any) -> BatchOutcome:
    def _run() -> BatchOutcome:
        engine = create_sync_engine(settings)
        try:
            batch: GatedBatch = make_batch(engine)
            return run_gate(engine, settings, batch, flow_name=FLOW_NAME, prefect_flow_run_id=prefect_run_id())
        finally:
            engine.dispose()

    return await asyncio.to_thread(_run)


@task(cache_policy=NO_CACHE)
async def load_posts(settings: Settings, source_name: str, posts: pl.DataFrame) -> BatchOutcome:
    return await _gate(settings, lambda engine: social.posts_batch(engine, source_name, posts))


@task(cache_policy=NO_CACHE)
async def load_fear_greed(settings: Settings, source_name: str, frame: pl.DataFrame) -> BatchOutcome:
    return await _gate(settings, lambda engine: social.fear_greed_batch(engine, settings, source_name, frame))


@task(cache_policy=NO_CACHE)
async def load_trending(settings: Settings, frame: pl.DataFrame, raw: bytes) -> BatchOutcome:
    return await _gate(settings, lambda engine: social.trending_batch(engine, frame, raw, "coingecko-trending"))


@task(cache_policy=NO_CACHE)
async def rebuild_daily_aggregates(settings: Settings) -> BatchOutcome:
    return await _gate(settings, lambda engine: social.social_daily_batch(engine, settings))


@task(cache_policy=NO_CACHE)
async def resume_points(settings: Settings, source_names: list[str]) -> dict[str, datetime | None]:
    """Migrate and find where each social source resumes."""

    def _resume() -> dict[str, datetime | None]:
        engine = create_sync_engine(settings)
        try:
            upgrade(engine)
            points = {name: social.last_post_time(engine, name) for name in source_names}
            points["fear-greed"] = social.last_fear_greed_day(engine)
            return points
        finally:
            engine.dispose()

    return await asyncio.to_thread(_resume)


@flow(name=FLOW_NAME)
async def ingest_social() -> list[dict[str, Any]]:
    """Ingest social posts, the Fear & Greed Index and trending coins; rebuild the daily aggregates."""
    logger = get_run_logger()
    settings = get_settings()
    settings.ensure_home()
    sources = social.post_sources(settings)
    since = await resume_points(settings, [s.name for s in sources])
    posts, fear_greed, trending = await asyncio.gather(
        asyncio.gather(*(fetch_posts(s, since[s.name]) for s in sources)),
        fetch_fear_greed(settings, since["fear-greed"]),
        fetch_trending(settings),
    )
    outcomes = [await load_posts(settings, s.name, frame) for s, frame in zip(sources, posts, strict=True)]
    outcomes.append(await load_fear_greed(settings, fear_greed[0], fear_greed[1]))
    snapshot_time = source_clock(settings)().replace(minute=0, second=0, microsecond=0)
    outcomes.append(
        await load_trending(settings, social.trending_frame(trending[0], timestamp=snapshot_time), trending[1])
    )
    outcomes.append(await rebuild_daily_aggregates(settings))
    for outcome in outcomes:
        logger.info(
            "%s/%s: %s, %d in, %d stored",
            outcome.dataset,
            outcome.name,
            outcome.status,
            outcome.rows_in,
            outcome.rows_stored,
        )
        for warning in outcome.warnings:
            logger.warning("%s/%s: %s", outcome.dataset, outcome.name, warning)
    raise_if_quarantined(outcomes, settings)
    return [asdict(o) for o in outcomes]
