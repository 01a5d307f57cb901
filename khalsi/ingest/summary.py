"""What is stored, at a glance: the table ``make run`` and ``khalsi summary`` print."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from khalsi.db.models import (
    FearGreed,
    IngestionRun,
    MarketData,
    QuarantinedBatch,
    SocialDaily,
    SocialPost,
    TrendingToken,
)


@dataclass(frozen=True)
class CoinSummary:
    coin_id: str
    symbol: str
    first: datetime
    last: datetime
    rows: int
    rejected: int
    quarantined: int


@dataclass(frozen=True)
class DatasetSummary:
    dataset: str
    first: str | None
    last: str | None
    rows: int
    detail: str


def market_summary(engine: Engine) -> list[CoinSummary]:
    """Per coin: stored range and rows, rows refused by the gate, batches quarantined."""
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(
                MarketData.coin_id,
                sa.func.min(MarketData.symbol),
                sa.func.min(MarketData.timestamp),
                sa.func.max(MarketData.timestamp),
                sa.func.count(),
            )
            .group_by(MarketData.coin_id)
            .order_by(MarketData.coin_id)
        ).all()
        runs = connection.execute(
            sa.select(IngestionRun.source, IngestionRun.status, IngestionRun.rows_rejected).where(
                IngestionRun.dataset == "market_daily"
            )
        ).all()
        quarantined = connection.execute(
            sa.select(QuarantinedBatch.source, sa.func.count())
            .where(QuarantinedBatch.dataset == "market_daily")
            .group_by(QuarantinedBatch.source)
        ).all()
    rejected: dict[str, int] = {}
    for source, status, rows_rejected in runs:
        coin = str(source).rsplit(":", 1)[-1] if status != "quarantined" else None
        if coin is not None:
            rejected[coin] = rejected.get(coin, 0) + int(rows_rejected)
    quarantine_counts: dict[str, int] = {}
    for source, count in quarantined:
        coin = str(source).rsplit(":", 1)[-1]
        quarantine_counts[coin] = quarantine_counts.get(coin, 0) + int(count)
    return [
        CoinSummary(
            coin_id=row[0],
            symbol=row[1],
            first=row[2],
            last=row[3],
            rows=int(row[4]),
            rejected=rejected.get(row[0], 0),
            quarantined=quarantine_counts.get(row[0], 0),
        )
        for row in stored
    ]


def social_summary(engine: Engine) -> list[DatasetSummary]:
    """Per social dataset: stored range and rows."""
    with engine.connect() as connection:
        posts = connection.execute(
            sa.select(
                SocialPost.source,
                sa.func.min(SocialPost.published_at),
                sa.func.max(SocialPost.published_at),
                sa.func.count(),
            ).group_by(SocialPost.source)
        ).all()
        fear_greed = connection.execute(
            sa.select(sa.func.min(FearGreed.day), sa.func.max(FearGreed.day), sa.func.count())
        ).one()
        daily = connection.execute(
            sa.select(
                sa.func.min(SocialDaily.day),
                sa.func.max(SocialDaily.day),
                sa.func.count(),
                sa.func.count(sa.distinct(SocialDaily.coin_id)),
            )
        ).one()
        trending = connection.execute(
            sa.select(sa.func.max(TrendingToken.timestamp), sa.func.count(sa.distinct(TrendingToken.timestamp)))
        ).one()
    summaries = [
        DatasetSummary(f"posts: {row[0]}", _date(row[1]), _date(row[2]), int(row[3]), "scored, coins detected")
        for row in sorted(posts)
    ]
    summaries.append(DatasetSummary("fear & greed", _date(fear_greed[0]), _date(fear_greed[1]), int(fear_greed[2]), ""))
    summaries.append(
        DatasetSummary("social daily", _date(daily[0]), _date(daily[1]), int(daily[2]), f"{daily[3]} coins + market")
    )
    summaries.append(
        DatasetSummary("trending snapshots", None, _date(trending[0]), int(trending[1]), "CoinGecko /search/trending")
    )
    return summaries


def _date(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text[:10]
