"""Response bodies of the market domain: what ingestion stored, as clients read it."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

# One page of daily history: about 2.7 years, and a bounded answer whatever the range asked.
MAX_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 365


class HistoryOrder(StrEnum):
    NEWEST_FIRST = "desc"
    OLDEST_FIRST = "asc"


class MarketPointPublic(BaseModel):
    """One daily snapshot (CoinGecko's 00:00 UTC grid)."""

    timestamp: datetime
    price: float
    volume_24h: float | None = Field(description="USD; null where CoinGecko had no figure")
    market_cap: float | None = Field(description="USD; null where CoinGecko had no figure")
    price_change_24h_percent: float | None = Field(
        description="percent change from the previous day's snapshot; null where that day is missing"
    )


class CoinMarketPublic(BaseModel):
    """A tracked coin with its newest stored snapshot (all market fields null before the first one)."""

    coin_id: str = Field(description="CoinGecko id")
    symbol: str
    name: str
    price: float | None
    price_change_24h_percent: float | None
    volume_24h: float | None
    market_cap: float | None
    last_timestamp: datetime | None = Field(description="the newest snapshot's time")
    stale: bool = Field(description="true when the newest snapshot is older than stale_after_hours (or missing)")


class CoinsPublic(BaseModel):
    items: list[CoinMarketPublic] = Field(description="largest market cap first, coins without one last")
    as_of: datetime = Field(description="the platform clock the stale flags were judged against")
    stale_after_hours: float


class CoinDetailPublic(CoinMarketPublic):
    first_timestamp: datetime | None = Field(description="the oldest stored snapshot's time")
    points: int = Field(description="how many daily snapshots are stored")
    as_of: datetime
    stale_after_hours: float


class HistoryPublic(BaseModel):
    """A page of daily snapshots within [start, end], both inclusive."""

    coin_id: str
    symbol: str
    order: HistoryOrder
    start: datetime | None
    end: datetime | None
    limit: int
    items: list[MarketPointPublic]
    has_more: bool = Field(
        description="more rows match: ask again with end (desc) or start (asc) moved past the last item"
    )


class TrendingTokenPublic(BaseModel):
    rank: int | None = Field(description="position in the source's trending list, 1 = most searched")
    coin_id: str
    symbol: str
    name: str
    category: str | None
    social_mentions: int | None = Field(description="mentions on the latest social day (tracked coins only)")
    volume_24h: float | None
    price_change_24h_percent: float | None


class TrendingPublic(BaseModel):
    """The newest trending snapshot (empty, with a null timestamp, before the first ingestion)."""

    timestamp: datetime | None
    items: list[TrendingTokenPublic]


class FearGreedPublic(BaseModel):
    day: date
    value: int = Field(description="0 (extreme fear) to 100 (extreme greed)")
    classification: str
    available_at: datetime


class SocialAggregatePublic(BaseModel):
    coin_id: str
    mean_sentiment: float | None = Field(description="mean sentiment score of the day's posts, -1..1")
    mention_count: int
    post_count: int


class SocialDayPublic(BaseModel):
    day: date
    available_at: datetime = Field(description="the end of the day: when the aggregate became complete")
    market: SocialAggregatePublic | None = Field(description="the whole market's aggregate")
    coins: list[SocialAggregatePublic] = Field(description="per coin, most mentioned first")


class SentimentPublic(BaseModel):
    """The newest Fear & Greed value and social day known at ``as_of`` (null when none is stored)."""

    as_of: datetime
    fear_greed: FearGreedPublic | None
    social: SocialDayPublic | None
