"""Social ingestion: posts, the Fear & Greed Index, trending coins, and the daily aggregates.

Sources come from ``khalsi.sources.social``; this module chooses them from settings, resumes each
from what is stored, and hands every batch to the same gate as market data.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from khalsi.db.engine import session_scope
from khalsi.db.models import FearGreed, SocialDaily, SocialPost, TrendingToken
from khalsi.ingest import store
from khalsi.ingest.pipeline import GatedBatch
from khalsi.ingest.sources import source_clock
from khalsi.settings import MarketSource as MarketSourceName
from khalsi.settings import Settings
from khalsi.sources.coingecko import CoinGeckoClient, Trending
from khalsi.sources.exports import BUNDLED_API_DIR, COINS_BY_ID, read_fear_greed_csv
from khalsi.sources.fear_greed import BUNDLED_FEAR_GREED_CSV, FearGreedClient
from khalsi.sources.social import (
    BundledFinbertSource,
    BundledHeadlinesSource,
    BundledRedditSource,
    Clock,
    FearGreedSource,
    SocialSource,
    daily_social_aggregates,
    fear_greed_daily,
)
from khalsi.validation import (
    FEAR_GREED,
    SOCIAL_DAILY,
    SOCIAL_POSTS,
    TRENDING,
    validate_fear_greed,
    validate_social_daily,
    validate_social_posts,
    validate_trending,
)

BUNDLED_TRENDING = BUNDLED_API_DIR / "GetTrendingSearches.json"


class ReplayFearGreedSource:
    """The bundled Fear & Greed history, revealed day by day as the replay clock passes 00:00 UTC."""

    name = "replay-fear-greed"

    def __init__(self, *, now: Clock, csv_path: Path = BUNDLED_FEAR_GREED_CSV) -> None:
        self._now = now
        self._csv_path = csv_path

    async def fetch(self, *, since: datetime | None = None) -> pl.DataFrame:
        """Days on or after ``since``'s day that are published by now, as the lake's Fear & Greed schema."""
        frame = await asyncio.to_thread(read_fear_greed_csv, self._csv_path)
        daily = fear_greed_daily(frame.lazy()).filter(pl.col("available_at") <= self._now())
        if since is not None:
            daily = daily.filter(pl.col("day") >= since.astimezone(UTC).date())
        return daily.collect()


class FearGreedFetcher:
    """The live alternative.me API, opened per fetch so no connection outlives the flow's loop."""

    name = "alternative.me-fear-greed"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def fetch(self, *, since: datetime | None = None) -> pl.DataFrame:
        async with FearGreedClient.from_settings(self._settings) as client:
            return await FearGreedSource(client).fetch(since=since)


def post_sources(settings: Settings) -> list[SocialSource]:
    """The post sources: the bundled real text and scores, revealed by the replay clock."""
    # No live news or Reddit API is reachable from here; the bundled sources are the real data
    # and speak the same protocol a live source would.
    now = source_clock(settings) if settings.market_source is MarketSourceName.REPLAY else None
    return [
        BundledFinbertSource(clock_now=now),
        BundledHeadlinesSource(clock_now=now),
        BundledRedditSource(clock_now=now),
    ]


def fear_greed_source(settings: Settings) -> ReplayFearGreedSource | FearGreedFetcher:
    if settings.market_source is MarketSourceName.REPLAY:
        return ReplayFearGreedSource(now=source_clock(settings))
    return FearGreedFetcher(settings)


def last_post_time(engine: Engine, source_name: str) -> datetime | None:
    """Where a post source resumes: its newest stored post (re-reading it is harmless)."""
    with engine.connect() as connection:
        value = connection.execute(
            sa.select(sa.func.max(SocialPost.published_at)).where(SocialPost.source == source_name)
        ).scalar()
    # psycopg answers in the session's zone (e.g. Etc/UTC), which polars will not compare with UTC.
    return None if value is None else (value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC))


def last_fear_greed_day(engine: Engine) -> datetime | None:
    with engine.connect() as connection:
        value = connection.execute(sa.select(sa.func.max(FearGreed.day))).scalar()
    return None if value is None else datetime(value.year, value.month, value.day, tzinfo=UTC)


def posts_batch(engine: Engine, source_name: str, posts: pl.DataFrame) -> GatedBatch:
    return GatedBatch(
        dataset=SOCIAL_POSTS,
        source=source_name,
        name=source_name,
        rows=posts,
        rows_in=posts.height,
        validate=validate_social_posts,
        store_rows=lambda rows, run_id: store.store_social_posts(engine, rows, run_id=run_id),
        time_column="published_at",
    )


def fear_greed_batch(engine: Engine, settings: Settings, source_name: str, frame: pl.DataFrame) -> GatedBatch:
    return GatedBatch(
        dataset=FEAR_GREED,
        source=source_name,
        name="fear-greed",
        rows=frame,
        rows_in=frame.height,
        validate=validate_fear_greed,
        store_rows=lambda rows, run_id: store.store_fear_greed(engine, rows, run_id=run_id),
        refresh_lake=lambda: store.refresh_fear_greed_lake(engine, settings.lake_dir),
        time_column="day",
    )


def social_daily_batch(engine: Engine, settings: Settings) -> GatedBatch:
    """Daily aggregates recomputed from every stored post and index value (cheap, and never drifts)."""
    posts = store.read_social_posts(engine)
    with engine.connect() as connection:
        index_rows = connection.execute(sa.select(FearGreed.day, FearGreed.value)).all()
    fear_greed = pl.DataFrame(
        {"day": [r[0] for r in index_rows], "value": [r[1] for r in index_rows]},
        schema={"day": pl.Date(), "value": pl.Int64()},
    )
    daily = daily_social_aggregates(posts.lazy(), fear_greed.lazy()).collect()
    return GatedBatch(
        dataset=SOCIAL_DAILY,
        source="aggregate",
        name="social-daily",
        rows=daily,
        rows_in=daily.height,
        validate=validate_social_daily,
        store_rows=lambda rows, _run_id: store.replace_social_daily(engine, rows),
        refresh_lake=lambda: store.refresh_social_daily_lake(engine, settings.lake_dir),
        time_column="day",
    )


async def fetch_trending(settings: Settings) -> tuple[Trending, bytes]:
    """CoinGecko's trending searches: the bundled capture in replay, the live endpoint otherwise."""
    if settings.market_source is MarketSourceName.REPLAY:
        raw = await asyncio.to_thread(BUNDLED_TRENDING.read_bytes)
        return Trending.model_validate_json(raw), raw
    async with CoinGeckoClient.from_settings(settings) as client:
        trending = await client.trending()
        raw = client.last_raw.body if client.last_raw is not None else b""
        return trending, raw


def trending_frame(trending: Trending, *, timestamp: datetime) -> pl.DataFrame:
    """One row per trending coin for the ``trending_tokens`` table, ranked as CoinGecko lists them."""
    rows: list[dict[str, Any]] = []
    for position, entry in enumerate(trending.coins, start=1):
        item = entry.item
        data = item.data
        change = None
        if data is not None and data.price_change_percentage_24h is not None:
            change = data.price_change_percentage_24h.get("usd")
        volume = _money(data.total_volume) if data is not None else None
        rows.append(
            {
                "coin_id": item.id,
                "symbol": item.symbol.lower(),
                "name": item.name,
                "volume_24h": volume,
                "price_change_24h": change,
                "rank": position,
                "market_cap_rank": item.market_cap_rank,
                "category": "coingecko-trending",
                "timestamp": timestamp,
            }
        )
    schema = {
        "coin_id": pl.String(),
        "symbol": pl.String(),
        "name": pl.String(),
        "volume_24h": pl.Float64(),
        "price_change_24h": pl.Float64(),
        "rank": pl.Int64(),
        "market_cap_rank": pl.Int64(),
        "category": pl.String(),
        "timestamp": pl.Datetime("us", "UTC"),
    }
    return pl.DataFrame(rows, schema=schema)


def _money(text: str | None) -> float | None:
    """CoinGecko renders trending volumes as "$1,234,567"; anything unparsable is unknown."""
    if text is None:
        return None
    try:
        return float(text.replace("$", "").replace(",", "").strip())
    except ValueError:
        return None


def store_trending(engine: Engine, frame: pl.DataFrame, _run_id: uuid.UUID) -> int:
    """Insert a trending snapshot with each coin's social mentions on the latest day we know."""
    mentions = _latest_mentions(engine)
    rows = [
        {
            "id": uuid.uuid4(),
            "coin_id": row["coin_id"],
            "symbol": row["symbol"],
            "name": row["name"],
            "volume_24h": row["volume_24h"],
            "price_change_24h": row["price_change_24h"],
            "rank": row["rank"],
            "category": row["category"],
            "social_mentions": mentions.get(row["coin_id"]) if row["coin_id"] in COINS_BY_ID else None,
            "timestamp": row["timestamp"],
        }
        for row in frame.iter_rows(named=True)
    ]
    with session_scope(engine) as session:
        return store.insert_new_rows(session, TrendingToken, rows, conflict_columns=["coin_id", "timestamp"])


def _latest_mentions(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        latest = connection.execute(sa.select(sa.func.max(SocialDaily.day))).scalar()
        if latest is None:
            return {}
        rows = connection.execute(
            sa.select(SocialDaily.coin_id, SocialDaily.mention_count).where(SocialDaily.day == latest)
        ).all()
    return {str(r[0]): int(r[1]) for r in rows}


def trending_batch(engine: Engine, frame: pl.DataFrame, raw: bytes, source_name: str) -> GatedBatch:
    return GatedBatch(
        dataset=TRENDING,
        source=source_name,
        name="trending",
        rows=frame,
        rows_in=frame.height,
        validate=validate_trending,
        store_rows=lambda rows, run_id: store_trending(engine, rows, run_id),
        time_column="timestamp",
        raw=raw,
        raw_suffix="json",
    )
