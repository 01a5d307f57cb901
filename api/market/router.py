"""``/market``: tracked coins, their daily history, trending tokens and market sentiment.

Public market data: no account needed (it is what CoinGecko and alternative.me publish). Every
answer is cached in Redis for a few seconds; the ``X-Cache`` header says whether it came from the
cache (``hit``), was built and cached (``miss``), or was built from the database because Redis is
not configured (``disabled``) or failing (``unavailable``). See :mod:`api.market.cache`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from api.clock import PlatformNow
from api.deps import SessionDep, SettingsDep
from api.market import service
from api.market.cache import CACHE_HEADER, CacheDep, CacheStatus
from api.market.exceptions import AmbiguousSymbolError, MarketError
from api.market.schemas import (
    DEFAULT_HISTORY_LIMIT,
    MAX_HISTORY_LIMIT,
    CoinDetailPublic,
    CoinsPublic,
    HistoryOrder,
    HistoryPublic,
    SentimentPublic,
    TrendingPublic,
)
from khalsi.db.models import as_utc
from khalsi.settings import Settings

router = APIRouter(prefix="/market", tags=["market"])

CoinPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="CoinGecko id (e.g. 'bitcoin') or symbol (e.g. 'BTC'), any case",
    ),
]
CACHED: dict[int | str, dict[str, Any]] = {
    status.HTTP_200_OK: {
        "headers": {
            CACHE_HEADER: {
                "description": "hit, miss, disabled (no Redis configured) or unavailable (Redis failing)",
                "schema": {"type": "string", "enum": [s.value for s in CacheStatus]},
            }
        }
    }
}
COIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **CACHED,
    status.HTTP_404_NOT_FOUND: {"description": "unknown coin"},
    status.HTTP_409_CONFLICT: {"description": "a symbol shared by several tracked coins: ask by CoinGecko id"},
}


def stale_after(settings: Settings) -> timedelta:
    # A coin whose newest snapshot is older than the prediction service accepts for its features
    # is the coin the platform can no longer speak about: one bound for both.
    return timedelta(hours=settings.serving.max_feature_age_hours)


def _utc(value: datetime | None) -> datetime | None:
    # A time without an offset is read as UTC, the zone of every stored time.
    return None if value is None else as_utc(value)


def _http_error(error: MarketError) -> HTTPException:
    code = status.HTTP_409_CONFLICT if isinstance(error, AmbiguousSymbolError) else status.HTTP_404_NOT_FOUND
    return HTTPException(code, detail=str(error))


@router.get("/coins", response_model=CoinsPublic, responses=CACHED)
async def list_coins(session: SessionDep, settings: SettingsDep, now: PlatformNow, cache: CacheDep) -> Response:
    """Every tracked coin with its newest price, 24h change, volume, market cap and a stale flag."""

    async def build() -> CoinsPublic:
        window = stale_after(settings)
        items = await service.list_coins(session=session, now=now, stale_after=window)
        return CoinsPublic(items=items, as_of=now, stale_after_hours=window.total_seconds() / 3600)

    return await cache.respond("coins", build)


@router.get("/coins/{coin}", response_model=CoinDetailPublic, responses=COIN_ERRORS)
async def read_coin(
    coin: CoinPath, session: SessionDep, settings: SettingsDep, now: PlatformNow, cache: CacheDep
) -> Response:
    """One coin by CoinGecko id or symbol (any case): its newest snapshot and stored history's extent."""

    async def build() -> CoinDetailPublic:
        return await service.coin_detail(session=session, coin=coin, now=now, stale_after=stale_after(settings))

    try:
        return await cache.respond(f"coin:{coin.lower()}", build)
    except MarketError as error:
        raise _http_error(error) from error


@router.get("/coins/{coin}/history", response_model=HistoryPublic, responses=COIN_ERRORS)
async def read_coin_history(
    coin: CoinPath,
    session: SessionDep,
    cache: CacheDep,
    start: Annotated[datetime | None, Query(description="first instant, inclusive (ISO 8601, UTC if no zone)")] = None,
    end: Annotated[datetime | None, Query(description="last instant, inclusive (ISO 8601, UTC if no zone)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT, description="rows per page")] = DEFAULT_HISTORY_LIMIT,
    order: Annotated[
        HistoryOrder, Query(description="'desc': newest first (the default); 'asc': oldest first")
    ] = HistoryOrder.NEWEST_FIRST,
) -> Response:
    """Daily snapshots of one coin in [start, end], a page of at most ``limit`` rows, newest first by default."""
    start_utc, end_utc = _utc(start), _utc(end)
    if start_utc is not None and end_utc is not None and start_utc > end_utc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {
                    "loc": ["query", "start"],
                    "msg": f"start ({start_utc.isoformat()}) is after end ({end_utc.isoformat()})",
                    "type": "value_error",
                }
            ],
        )

    async def build() -> HistoryPublic:
        found = await service.find_coin(session=session, coin=coin)
        items, has_more = await service.coin_history(
            session=session, coin_id=found.coin_id, start=start_utc, end=end_utc, limit=limit, order=order
        )
        return HistoryPublic(
            coin_id=found.coin_id,
            symbol=found.symbol,
            order=order,
            start=start_utc,
            end=end_utc,
            limit=limit,
            items=items,
            has_more=has_more,
        )

    span = f"{start_utc.isoformat() if start_utc else ''}..{end_utc.isoformat() if end_utc else ''}"
    key = f"history:{coin.lower()}:{span}:{limit}:{order.value}"
    try:
        return await cache.respond(key, build)
    except MarketError as error:
        raise _http_error(error) from error


@router.get("/trending", response_model=TrendingPublic, responses=CACHED)
async def read_trending(session: SessionDep, cache: CacheDep) -> Response:
    """The newest trending snapshot with rank, category and social mentions (empty before the first one)."""

    async def build() -> TrendingPublic:
        timestamp, items = await service.latest_trending(session=session)
        return TrendingPublic(timestamp=timestamp, items=items)

    return await cache.respond("trending", build)


@router.get("/sentiment", response_model=SentimentPublic, responses=CACHED)
async def read_sentiment(session: SessionDep, now: PlatformNow, cache: CacheDep) -> Response:
    """The newest Fear & Greed value and the newest complete day of social aggregates (market and per coin)."""

    async def build() -> SentimentPublic:
        fear_greed = await service.latest_fear_greed(session=session, now=now)
        social = await service.latest_social_day(session=session, now=now)
        return SentimentPublic(as_of=now, fear_greed=fear_greed, social=social)

    return await cache.respond("sentiment", build)
