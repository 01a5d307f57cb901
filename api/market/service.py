"""Market reads: keyword-only functions over an ``AsyncSession``, on the tables ingestion writes."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from api.market.exceptions import AmbiguousSymbolError, CoinNotFoundError
from api.market.schemas import (
    CoinDetailPublic,
    CoinMarketPublic,
    FearGreedPublic,
    HistoryOrder,
    MarketPointPublic,
    SocialAggregatePublic,
    SocialDayPublic,
    TrendingTokenPublic,
)
from khalsi.db.models import Coin, FearGreed, MarketData, SocialDaily, TrendingToken, as_utc

# social_daily's row for the whole market (see khalsi.db.models.SocialDaily).
MARKET_AGGREGATE_ID = "_market"


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _is_stale(last: datetime | None, *, now: datetime, stale_after: timedelta) -> bool:
    return last is None or now - as_utc(last) > stale_after


def _newest_point_of_each_coin() -> sa.ColumnElement[bool]:
    # A correlated max per coin rides the (coin_id, timestamp) unique index on PostgreSQL and SQLite
    # alike: one index probe per coin instead of aggregating the whole history.
    newer = aliased(MarketData)
    newest = sa.select(sa.func.max(newer.timestamp)).where(newer.coin_id == Coin.coin_id).scalar_subquery()
    return sa.and_(MarketData.coin_id == Coin.coin_id, MarketData.timestamp == newest)


def _coin_market(coin: Coin, point: MarketData | None, *, now: datetime, stale_after: timedelta) -> CoinMarketPublic:
    return CoinMarketPublic(
        coin_id=coin.coin_id,
        symbol=coin.symbol,
        name=coin.name,
        price=point.price if point else None,
        price_change_24h_percent=point.price_change_24h if point else None,
        volume_24h=point.volume_24h if point else None,
        market_cap=point.market_cap if point else None,
        last_timestamp=as_utc(point.timestamp) if point else None,
        stale=_is_stale(point.timestamp if point else None, now=now, stale_after=stale_after),
    )


async def list_coins(*, session: AsyncSession, now: datetime, stale_after: timedelta) -> list[CoinMarketPublic]:
    """Every tracked coin with its newest snapshot, largest market cap first."""
    rows = await session.execute(
        sa.select(Coin, MarketData)
        .outerjoin(MarketData, _newest_point_of_each_coin())
        .order_by(MarketData.market_cap.desc().nulls_last(), Coin.coin_id)
    )
    return [_coin_market(coin, point, now=now, stale_after=stale_after) for coin, point in rows.tuples()]


async def find_coin(*, session: AsyncSession, coin: str) -> Coin:
    """The tracked coin with this CoinGecko id, else this unique symbol (any case)."""
    needle = coin.strip().lower()
    by_id = await session.scalar(sa.select(Coin).where(sa.func.lower(Coin.coin_id) == needle))
    if by_id is not None:
        return by_id
    by_symbol = list(
        await session.scalars(sa.select(Coin).where(sa.func.lower(Coin.symbol) == needle).order_by(Coin.coin_id))
    )
    if not by_symbol:
        raise CoinNotFoundError(coin)
    if len(by_symbol) > 1:
        raise AmbiguousSymbolError(coin, [c.coin_id for c in by_symbol])
    return by_symbol[0]


async def coin_detail(*, session: AsyncSession, coin: str, now: datetime, stale_after: timedelta) -> CoinDetailPublic:
    """One coin's newest snapshot and the extent of its stored history."""
    found = await find_coin(session=session, coin=coin)
    point = await session.scalar(
        sa.select(MarketData).where(MarketData.coin_id == found.coin_id).order_by(MarketData.timestamp.desc()).limit(1)
    )
    first, points = (
        await session.execute(
            sa.select(sa.func.min(MarketData.timestamp), sa.func.count()).where(MarketData.coin_id == found.coin_id)
        )
    ).one()
    market = _coin_market(found, point, now=now, stale_after=stale_after)
    return CoinDetailPublic(
        **market.model_dump(),
        first_timestamp=_maybe_utc(first),
        points=int(points),
        as_of=now,
        stale_after_hours=stale_after.total_seconds() / 3600,
    )


async def coin_history(
    *,
    session: AsyncSession,
    coin_id: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    order: HistoryOrder,
) -> tuple[list[MarketPointPublic], bool]:
    """Up to ``limit`` daily snapshots in [start, end] in ``order``, and whether more match."""
    statement = sa.select(MarketData).where(MarketData.coin_id == coin_id)
    if start is not None:
        statement = statement.where(MarketData.timestamp >= start)
    if end is not None:
        statement = statement.where(MarketData.timestamp <= end)
    newest_first = order is HistoryOrder.NEWEST_FIRST
    statement = statement.order_by(MarketData.timestamp.desc() if newest_first else MarketData.timestamp.asc())
    # One row more than the page tells whether another page exists, without a count.
    rows = list(await session.scalars(statement.limit(limit + 1)))
    items = [
        MarketPointPublic(
            timestamp=as_utc(row.timestamp),
            price=row.price,
            volume_24h=row.volume_24h,
            market_cap=row.market_cap,
            price_change_24h_percent=row.price_change_24h,
        )
        for row in rows[:limit]
    ]
    return items, len(rows) > limit


async def latest_trending(*, session: AsyncSession) -> tuple[datetime | None, list[TrendingTokenPublic]]:
    """The newest trending snapshot, in rank order."""
    newest = await session.scalar(sa.select(sa.func.max(TrendingToken.timestamp)))
    if newest is None:
        return None, []
    rows = await session.scalars(
        sa.select(TrendingToken)
        .where(TrendingToken.timestamp == newest)
        .order_by(TrendingToken.rank.asc().nulls_last(), TrendingToken.coin_id)
    )
    items = [
        TrendingTokenPublic(
            rank=row.rank,
            coin_id=row.coin_id,
            symbol=row.symbol,
            name=row.name,
            category=row.category,
            social_mentions=row.social_mentions,
            volume_24h=row.volume_24h,
            price_change_24h_percent=row.price_change_24h,
        )
        for row in rows
    ]
    return as_utc(newest), items


async def latest_fear_greed(*, session: AsyncSession, now: datetime) -> FearGreedPublic | None:
    """The newest Fear & Greed value published by ``now``."""
    row = await session.scalar(
        sa.select(FearGreed).where(FearGreed.available_at <= now).order_by(FearGreed.day.desc()).limit(1)
    )
    if row is None:
        return None
    return FearGreedPublic(
        day=row.day, value=row.value, classification=row.classification, available_at=as_utc(row.available_at)
    )


def _aggregate(row: SocialDaily) -> SocialAggregatePublic:
    return SocialAggregatePublic(
        coin_id=row.coin_id,
        mean_sentiment=row.mean_sentiment,
        mention_count=row.mention_count,
        post_count=row.post_count,
    )


async def latest_social_day(*, session: AsyncSession, now: datetime) -> SocialDayPublic | None:
    """The newest complete social day at ``now``: the market's and every coin's aggregate.

    A day's row exists while the day is still being aggregated; ``available_at`` (the end of the
    day) keeps a partial day from being reported as the latest, as the features do.
    """
    day = await session.scalar(sa.select(sa.func.max(SocialDaily.day)).where(SocialDaily.available_at <= now))
    if day is None:
        return None
    rows = list(
        await session.scalars(
            sa.select(SocialDaily)
            .where(SocialDaily.day == day, SocialDaily.available_at <= now)
            .order_by(SocialDaily.mention_count.desc(), SocialDaily.coin_id)
        )
    )
    market = next((row for row in rows if row.coin_id == MARKET_AGGREGATE_ID), None)
    return SocialDayPublic(
        day=day,
        available_at=as_utc(max(row.available_at for row in rows)),
        market=_aggregate(market) if market is not None else None,
        coins=[_aggregate(row) for row in rows if row.coin_id != MARKET_AGGREGATE_ID],
    )
