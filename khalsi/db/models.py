"""SQLAlchemy 2 models: the seed's tables plus what ingestion needs.

Deliberate departures from the seed, each for a reason:
- market prices are double precision, not DECIMAL(20,8): SHIB traded below 1e-8 USD, which
  DECIMAL(20,8) would round to zero;
- market rows carry the CoinGecko ``coin_id`` beside the ``symbol``: symbols are not unique;
- zero market caps and volumes are stored as NULL (CoinGecko writes 0 where it had no data).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def _now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime: every stored time is UTC, but SQLite hands back naive
    datetimes and psycopg ones in the session's zone."""
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType, datetime: Timestamp}  # noqa: RUF012 - SQLAlchemy's own hook


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(sa.String(255), unique=True)
    username: Mapped[str | None] = mapped_column(sa.String(50), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(20), default="user", server_default="user")
    preferences: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now, server_default=sa.func.now())


class Coin(Base):
    """The coins the platform tracks, keyed by CoinGecko id."""

    __tablename__ = "coins"

    coin_id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    symbol: Mapped[str] = mapped_column(sa.String(20), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())


class MarketData(Base):
    """One validated daily snapshot of a coin (CoinGecko `market_chart`, 00:00 UTC grid)."""

    __tablename__ = "market_data"
    __table_args__ = (
        sa.UniqueConstraint("coin_id", "timestamp"),
        sa.Index("idx_market_data_symbol_timestamp", "symbol", sa.text("timestamp DESC")),
        sa.Index("idx_market_data_timestamp", sa.text("timestamp DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    coin_id: Mapped[str] = mapped_column(sa.String(100))
    symbol: Mapped[str] = mapped_column(sa.String(20))
    price: Mapped[float] = mapped_column(sa.Double)
    volume_24h: Mapped[float | None] = mapped_column(sa.Double)
    market_cap: Mapped[float | None] = mapped_column(sa.Double)
    # Percent change from the previous day's snapshot, NULL where that day is missing.
    price_change_24h: Mapped[float | None] = mapped_column(sa.Double)
    timestamp: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())
    source: Mapped[str] = mapped_column(sa.String(50), default="coingecko", server_default="coingecko")
    ingestion_run_id: Mapped[uuid.UUID | None]
    ingested_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        sa.Index("idx_predictions_symbol_timeframe", "symbol", "timeframe"),
        sa.Index("idx_predictions_created_at", sa.text("created_at DESC")),
        sa.Index("idx_predictions_expires_at", "expires_at"),
        # One prediction per coin, horizon, data point and model: re-scoring writes nothing twice.
        # (Named explicitly: the generated name is longer than PostgreSQL's 63-byte identifiers.)
        sa.UniqueConstraint(
            "coin_id", "timeframe", "feature_timestamp", "model_version", name="uq_predictions_coin_horizon_point_model"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    coin_id: Mapped[str] = mapped_column(sa.String(100))
    symbol: Mapped[str] = mapped_column(sa.String(20))
    timeframe: Mapped[str] = mapped_column(sa.String(20))
    probability_up: Mapped[float | None] = mapped_column(sa.Numeric(5, 4, asdecimal=False))
    probability_down: Mapped[float | None] = mapped_column(sa.Numeric(5, 4, asdecimal=False))
    confidence_level: Mapped[float | None] = mapped_column(sa.Numeric(5, 4, asdecimal=False))
    price_target: Mapped[float | None] = mapped_column(sa.Double)
    price_target_low: Mapped[float | None] = mapped_column(sa.Double)
    price_target_high: Mapped[float | None] = mapped_column(sa.Double)
    model_name: Mapped[str | None] = mapped_column(sa.String(200))
    model_version: Mapped[str] = mapped_column(sa.String(50))
    feature_timestamp: Mapped[datetime]
    methodology: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())
    expires_at: Mapped[datetime | None]


class Portfolio(Base):
    __tablename__ = "portfolios"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    symbol: Mapped[str] = mapped_column(sa.String(20))
    quantity: Mapped[float] = mapped_column(sa.Numeric(38, 18, asdecimal=False))
    avg_price: Mapped[float] = mapped_column(sa.Numeric(38, 18, asdecimal=False))
    entry_date: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())


class TrendingToken(Base):
    __tablename__ = "trending_tokens"
    __table_args__ = (
        sa.Index("idx_trending_tokens_timestamp", sa.text("timestamp DESC")),
        sa.Index("idx_trending_tokens_category", "category"),
        sa.UniqueConstraint("coin_id", "timestamp"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    coin_id: Mapped[str] = mapped_column(sa.String(100))
    symbol: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(100))
    volume_24h: Mapped[float | None] = mapped_column(sa.Double)
    price_change_24h: Mapped[float | None] = mapped_column(sa.Double)
    rank: Mapped[int | None]
    category: Mapped[str | None] = mapped_column(sa.String(50))
    social_mentions: Mapped[int | None]
    timestamp: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())


class UserAlert(Base):
    __tablename__ = "user_alerts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    symbol: Mapped[str] = mapped_column(sa.String(20))
    alert_type: Mapped[str] = mapped_column(sa.String(50))
    condition: Mapped[dict[str, Any]]
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    triggered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())


class UserSession(Base):
    __tablename__ = "user_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    session_token: Mapped[str] = mapped_column(sa.String(255), unique=True)
    socket_id: Mapped[str | None] = mapped_column(sa.String(100))
    connected_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())
    disconnected_at: Mapped[datetime | None]
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())


class SocialPost(Base):
    """One scored text (news headline, Reddit post or comment) with the coins it mentions."""

    __tablename__ = "social_posts"
    __table_args__ = (
        sa.UniqueConstraint("source", "external_id"),
        sa.Index("ix_social_posts_published_at", "published_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    source: Mapped[str] = mapped_column(sa.String(50))
    external_id: Mapped[str] = mapped_column(sa.String(200))
    published_at: Mapped[datetime]
    text: Mapped[str | None] = mapped_column(sa.Text)
    sentiment: Mapped[float] = mapped_column(sa.Double)
    positive: Mapped[float | None] = mapped_column(sa.Double)
    negative: Mapped[float | None] = mapped_column(sa.Double)
    neutral: Mapped[float | None] = mapped_column(sa.Double)
    scorer: Mapped[str] = mapped_column(sa.String(50))
    coins: Mapped[list[Any]] = mapped_column(default=list)
    ingestion_run_id: Mapped[uuid.UUID | None]
    ingested_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())


class FearGreed(Base):
    """The Crypto Fear & Greed Index (alternative.me), one value per UTC day."""

    __tablename__ = "fear_greed"

    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    value: Mapped[int]
    classification: Mapped[str] = mapped_column(sa.String(30))
    # alternative.me publishes the day's value at 00:00 UTC of that day.
    available_at: Mapped[datetime]
    ingestion_run_id: Mapped[uuid.UUID | None]


class SocialDaily(Base):
    """Daily social aggregates per coin (``coin_id='_market'`` for the whole market), point-in-time.

    ``available_at`` is when the aggregate could first have been known (the end of its day), so a
    feature at time t joins only rows with ``available_at <= t``.
    """

    __tablename__ = "social_daily"
    __table_args__ = (sa.UniqueConstraint("day", "coin_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    day: Mapped[date] = mapped_column(sa.Date)
    coin_id: Mapped[str] = mapped_column(sa.String(100))
    mean_sentiment: Mapped[float | None] = mapped_column(sa.Double)
    mention_count: Mapped[int] = mapped_column(default=0)
    post_count: Mapped[int] = mapped_column(default=0)
    fear_greed: Mapped[int | None]
    available_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now, server_default=sa.func.now())


class IngestionRun(Base):
    """Every ingestion run: what came in, what was stored, what was refused, how long it took."""

    __tablename__ = "ingestion_runs"
    __table_args__ = (sa.Index("ix_ingestion_runs_started_at", "started_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    flow: Mapped[str] = mapped_column(sa.String(100))
    source: Mapped[str] = mapped_column(sa.String(100))
    dataset: Mapped[str] = mapped_column(sa.String(100))
    status: Mapped[str] = mapped_column(sa.String(20), default="running")
    started_at: Mapped[datetime] = mapped_column(default=_now)
    finished_at: Mapped[datetime | None]
    duration_seconds: Mapped[float | None] = mapped_column(sa.Double)
    rows_in: Mapped[int] = mapped_column(default=0)
    rows_stored: Mapped[int] = mapped_column(default=0)
    rows_rejected: Mapped[int] = mapped_column(default=0)
    message: Mapped[str | None] = mapped_column(sa.Text)
    details: Mapped[dict[str, Any] | None]
    raw_path: Mapped[str | None] = mapped_column(sa.String(500))
    prefect_flow_run_id: Mapped[str | None] = mapped_column(sa.String(64))


class QuarantinedBatch(Base):
    """A batch that failed a blocking expectation: kept with its validation result, never loaded."""

    __tablename__ = "quarantined_batches"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    ingestion_run_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("ingestion_runs.id", ondelete="SET NULL"), index=True
    )
    dataset: Mapped[str] = mapped_column(sa.String(100))
    source: Mapped[str] = mapped_column(sa.String(100))
    reason: Mapped[str] = mapped_column(sa.Text)
    validation_result: Mapped[dict[str, Any]]
    payload_path: Mapped[str] = mapped_column(sa.String(500))
    row_count: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())


class Notification(Base):
    """One delivery of an alert's firing to one channel: what was sent, where, and how it went.

    A row is written ``pending`` in the same transaction that marks the alert triggered, so a firing
    is never lost: a failed or interrupted delivery stays visible (``failed`` with its error, or a
    stale ``pending`` that the next evaluation picks up) and can be retried.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        # The owner's inbox, newest first.
        sa.Index("ix_notifications_user_id_created_at", "user_id", "created_at"),
        # The evaluation's sweep for pending deliveries left behind by an interrupted run.
        sa.Index("ix_notifications_status_updated_at", "status", "updated_at"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        sa.CheckConstraint("channel IN ('email', 'webhook')", name="channel"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    # Deleting an alert keeps the history of what it sent.
    alert_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("user_alerts.id", ondelete="SET NULL"), index=True)
    channel: Mapped[str] = mapped_column(sa.String(20))
    target: Mapped[str] = mapped_column(sa.String(2048))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(sa.String(20), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(default=_now, server_default=sa.func.now())
    sent_at: Mapped[datetime | None]
