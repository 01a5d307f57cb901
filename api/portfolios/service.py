"""Portfolio services: keyword-only async functions over an ``AsyncSession``.

- Every buy is its own position (a lot, with its own price and entry date): a second buy of the
  same coin is never merged into the first. ``GET /portfolio`` adds the lots of a coin up into a
  holding whose average price is weighted by quantity. Lots keep what merging would lose (when and
  at what price each buy happened), and editing or deleting one buy never rewrites another.
- Positions are stored by symbol (the seed's ``portfolios`` has no coin id) and resolved to a
  tracked coin through ``coins`` (case-insensitive); a symbol two tracked coins share is refused.
- Quantities and prices are read and written as ``Decimal``: the model maps the NUMERIC columns to
  float, so queries here re-type them with ``type_coerce`` to :class:`ExactDecimal` (no CAST
  reaches the SQL).
- "Now" is the platform's clock (:func:`khalsi.ingest.sources.source_clock`: the wall clock with
  CoinGecko, the replay's time in replay mode), the same clock ingestion and scoring use: prices and
  predictions after it are not visible yet, and an entry date after it is in the future.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from api.portfolios.exceptions import (
    AmbiguousSymbolError,
    EntryDateInFutureError,
    PositionLimitReachedError,
    UnknownCoinError,
)
from api.portfolios.schemas import PositionCreate, PositionUpdate
from api.portfolios.valuation import Lot, PortfolioValuation, Quote, TrackedCoin, price_from_double, value_portfolio
from khalsi.db.models import Coin, MarketData, Portfolio, Prediction, User, as_utc
from khalsi.settings import Settings

# Keeps one GET /portfolio bounded (it values every position) at the seed's 10,000+ users.
MAX_POSITIONS_PER_USER = 1000
# A client clock a little ahead of ours is not a position bought in the future.
ENTRY_DATE_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_PREDICTION_HORIZON_DAYS = (1, 7)


class ExactDecimal(sa.TypeDecorator[Decimal]):
    """``portfolios``' NUMERIC(38, 18) as ``Decimal`` in both directions, on every backend.

    PostgreSQL keeps the exact value. SQLite (the embedded default) stores NUMERIC as a double:
    there the value is read back through its shortest decimal form, so 0.1 comes back as 0.1, not
    0.100000000000000006 (about 15 significant digits survive; exact storage needs PostgreSQL).
    """

    impl = sa.Numeric(38, 18, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Double())
        return dialect.type_descriptor(sa.Numeric(38, 18, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: sa.Dialect) -> Any:
        if value is not None and dialect.name == "sqlite":
            return str(value)  # the sqlite3 driver has no Decimal; SQLite converts the text itself
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


_EXACT = ExactDecimal()
_QUANTITY = sa.type_coerce(Portfolio.quantity, _EXACT).label("quantity")
_AVG_PRICE = sa.type_coerce(Portfolio.avg_price, _EXACT).label("avg_price")
_LOT_COLUMNS = (Portfolio.id, Portfolio.symbol, _QUANTITY, _AVG_PRICE, Portfolio.entry_date)


def prediction_timeframes(settings: Settings) -> list[str]:
    """The horizons attached to holdings: the served ones, or 1d and 7d when serving names none."""
    days = settings.serving.horizons or DEFAULT_PREDICTION_HORIZON_DAYS
    return [f"{day}d" for day in sorted(set(days))]


def _utc_or_none(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


def _lot(row: sa.Row[tuple[uuid.UUID, str, Decimal, Decimal, datetime]]) -> Lot:
    return Lot(
        id=row.id,
        symbol=row.symbol,
        quantity=Decimal(row.quantity),
        avg_price=Decimal(row.avg_price),
        entry_date=as_utc(row.entry_date),
    )


async def list_positions(*, session: AsyncSession, user_id: uuid.UUID) -> list[Lot]:
    """The user's positions, oldest entry first."""
    rows = await session.execute(
        sa.select(*_LOT_COLUMNS).where(Portfolio.user_id == user_id).order_by(Portfolio.entry_date, Portfolio.id)
    )
    return [_lot(row) for row in rows]


async def get_position(*, session: AsyncSession, user_id: uuid.UUID, position_id: uuid.UUID) -> Lot | None:
    """The position if it exists and belongs to ``user_id``; None otherwise (the two look alike)."""
    row = await session.execute(
        sa.select(*_LOT_COLUMNS).where(Portfolio.id == position_id, Portfolio.user_id == user_id)
    )
    found = row.first()
    return _lot(found) if found is not None else None


async def tracked_symbols(*, session: AsyncSession) -> list[str]:
    rows = await session.scalars(sa.select(Coin.symbol).distinct().order_by(Coin.symbol))
    return list(rows)


async def coins_by_symbol(*, session: AsyncSession, symbols: Iterable[str]) -> dict[str, list[TrackedCoin]]:
    """Tracked coins keyed by lower-case symbol, for the given symbols."""
    wanted = sorted({symbol.lower() for symbol in symbols})
    if not wanted:
        return {}
    rows = await session.execute(
        sa.select(Coin.coin_id, Coin.symbol, Coin.name)
        .where(sa.func.lower(Coin.symbol).in_(wanted))
        .order_by(Coin.coin_id)
    )
    found: dict[str, list[TrackedCoin]] = {}
    for coin_id, symbol, name in rows:
        found.setdefault(symbol.lower(), []).append(TrackedCoin(coin_id, symbol, name))
    return found


async def resolve_coin(*, session: AsyncSession, symbol: str | None = None, coin_id: str | None = None) -> TrackedCoin:
    """The tracked coin a request names; raise if it is unknown or its symbol is ambiguous."""
    field, value = ("coin_id", coin_id) if coin_id is not None else ("symbol", symbol or "")
    lookup_symbol: str | None = value
    if coin_id is not None:
        lookup_symbol = await session.scalar(
            sa.select(Coin.symbol).where(sa.func.lower(Coin.coin_id) == coin_id.lower()).limit(1)
        )
    candidates = []
    if lookup_symbol:
        candidates = (await coins_by_symbol(session=session, symbols=[lookup_symbol])).get(lookup_symbol.lower(), [])
    if not candidates:
        raise UnknownCoinError(field, value, await tracked_symbols(session=session))
    if len(candidates) > 1:
        raise AmbiguousSymbolError(field, value, candidates[0].symbol, [coin.coin_id for coin in candidates])
    return candidates[0]


def _check_entry_date(entry_date: datetime, now: datetime) -> None:
    if entry_date > now + ENTRY_DATE_CLOCK_SKEW:
        raise EntryDateInFutureError(entry_date, now)


async def create_position(
    *, session: AsyncSession, user_id: uuid.UUID, position_in: PositionCreate, now: datetime
) -> tuple[Lot, TrackedCoin]:
    """Store a new lot for ``user_id`` (never merged with an earlier buy of the same coin)."""
    coin = await resolve_coin(session=session, symbol=position_in.symbol, coin_id=position_in.coin_id)
    entry_date = position_in.entry_date or now
    _check_entry_date(entry_date, now)
    # Lock the owner's row so two concurrent buys cannot both pass the count below.
    await session.execute(sa.select(User.id).where(User.id == user_id).with_for_update())
    held = await session.scalar(sa.select(sa.func.count()).select_from(Portfolio).where(Portfolio.user_id == user_id))
    if (held or 0) >= MAX_POSITIONS_PER_USER:
        await session.rollback()
        raise PositionLimitReachedError(MAX_POSITIONS_PER_USER)
    row = (
        await session.execute(
            sa.insert(Portfolio)
            .values(
                id=uuid.uuid4(),
                user_id=user_id,
                symbol=coin.symbol,
                quantity=sa.literal(position_in.quantity, _EXACT),
                avg_price=sa.literal(position_in.avg_price, _EXACT),
                entry_date=entry_date,
            )
            .returning(*_LOT_COLUMNS)
        )
    ).one()
    await session.commit()
    return _lot(row), coin


async def update_position(
    *, session: AsyncSession, user_id: uuid.UUID, position: Lot, position_in: PositionUpdate, now: datetime
) -> Lot | None:
    """Apply the fields that were sent to an owned position; the position as stored, None if gone."""
    changes: dict[str, Any] = {}
    if position_in.quantity is not None:
        changes["quantity"] = sa.literal(position_in.quantity, _EXACT)
    if position_in.avg_price is not None:
        changes["avg_price"] = sa.literal(position_in.avg_price, _EXACT)
    if position_in.entry_date is not None:
        _check_entry_date(position_in.entry_date, now)
        changes["entry_date"] = position_in.entry_date
    row = (
        await session.execute(
            sa.update(Portfolio)
            .where(Portfolio.id == position.id, Portfolio.user_id == user_id)
            .values(**changes)
            .returning(*_LOT_COLUMNS)
        )
    ).first()
    await session.commit()
    # None: deleted by a concurrent request between the ownership check and the update.
    return _lot(row) if row is not None else None


async def delete_position(*, session: AsyncSession, user_id: uuid.UUID, position_id: uuid.UUID) -> None:
    await session.execute(sa.delete(Portfolio).where(Portfolio.id == position_id, Portfolio.user_id == user_id))
    await session.commit()


async def latest_quotes(*, session: AsyncSession, coin_ids: Sequence[str], now: datetime) -> dict[str, Quote]:
    """Each coin's latest stored positive price at or before ``now``."""
    if not coin_ids:
        return {}
    # One index probe per coin on (coin_id, timestamp): a correlated ORDER BY ... LIMIT 1, portable
    # to SQLite, instead of a GROUP BY that would read each coin's whole history.
    latest_at = (
        sa.select(MarketData.timestamp)
        .where(MarketData.coin_id == Coin.coin_id, MarketData.timestamp <= now, MarketData.price > 0)
        .order_by(MarketData.timestamp.desc())
        .limit(1)
        .correlate(Coin)
        .scalar_subquery()
    )
    latest = sa.select(Coin.coin_id, latest_at.label("at")).where(Coin.coin_id.in_(coin_ids)).subquery()
    rows = await session.execute(
        sa.select(MarketData.coin_id, MarketData.price, MarketData.timestamp).join(
            latest, sa.and_(MarketData.coin_id == latest.c.coin_id, MarketData.timestamp == latest.c.at)
        )
    )
    quotes: dict[str, Quote] = {}
    for coin_id, price, at in rows:
        exact = price_from_double(price)
        if exact is not None:  # NaN passes "price > 0" in PostgreSQL; it is no price
            quotes[coin_id] = Quote(coin_id, exact, as_utc(at))
    return quotes


@dataclass(frozen=True)
class StoredPrediction:
    coin_id: str
    timeframe: str
    probability_up: float | None
    probability_down: float | None
    confidence: float | None
    price_target: float | None
    price_target_low: float | None
    price_target_high: float | None
    model_name: str | None
    model_version: str
    feature_timestamp: datetime
    created_at: datetime
    expires_at: datetime | None
    expired: bool


async def latest_predictions(
    *, session: AsyncSession, coin_ids: Sequence[str], timeframes: Sequence[str], now: datetime
) -> dict[str, dict[str, StoredPrediction]]:
    """Per coin and horizon, the prediction of the newest data point at or before ``now``.

    Re-scoring the same point with a new champion adds a row (the key includes the model version):
    the most recently written one wins.
    """
    if not coin_ids or not timeframes:
        return {}
    chosen = sa.union_all(
        *(
            sa.select(
                sa.select(Prediction.id)
                .where(
                    Prediction.coin_id == Coin.coin_id,
                    Prediction.timeframe == timeframe,
                    Prediction.feature_timestamp <= now,
                )
                .order_by(Prediction.feature_timestamp.desc(), Prediction.created_at.desc())
                .limit(1)
                .correlate(Coin)
                .scalar_subquery()
                .label("id")
            ).where(Coin.coin_id.in_(coin_ids))
            for timeframe in timeframes
        )
    ).subquery()
    rows = await session.execute(
        sa.select(
            Prediction.coin_id,
            Prediction.timeframe,
            Prediction.probability_up,
            Prediction.probability_down,
            Prediction.confidence_level,
            Prediction.price_target,
            Prediction.price_target_low,
            Prediction.price_target_high,
            Prediction.model_name,
            Prediction.model_version,
            Prediction.feature_timestamp,
            Prediction.created_at,
            Prediction.expires_at,
        ).join(chosen, Prediction.id == chosen.c.id)
    )
    found: dict[str, dict[str, StoredPrediction]] = {}
    for row in rows:
        expires_at = _utc_or_none(row.expires_at)
        found.setdefault(row.coin_id, {})[row.timeframe] = StoredPrediction(
            coin_id=row.coin_id,
            timeframe=row.timeframe,
            probability_up=row.probability_up,
            probability_down=row.probability_down,
            confidence=row.confidence_level,
            price_target=row.price_target,
            price_target_low=row.price_target_low,
            price_target_high=row.price_target_high,
            model_name=row.model_name,
            model_version=row.model_version,
            feature_timestamp=as_utc(row.feature_timestamp),
            created_at=as_utc(row.created_at),
            expires_at=expires_at,
            expired=expires_at is not None and expires_at <= now,
        )
    return found


@dataclass(frozen=True)
class ValuedPortfolio:
    valuation: PortfolioValuation
    predictions: dict[str, dict[str, StoredPrediction]] | None


async def value_positions(
    *,
    session: AsyncSession,
    positions: Sequence[Lot],
    now: datetime,
    max_price_age: timedelta,
    prediction_timeframes: Sequence[str] | None = None,
) -> ValuedPortfolio:
    """Value ``positions`` at the latest stored prices; attach predictions when horizons are given."""
    coins = await coins_by_symbol(session=session, symbols=(position.symbol for position in positions))
    # Only unambiguous symbols resolve to a coin, so only their coins need a price.
    coin_ids = sorted(candidates[0].coin_id for candidates in coins.values() if len(candidates) == 1)
    quotes = await latest_quotes(session=session, coin_ids=coin_ids, now=now)
    valuation = value_portfolio(positions, coins_by_symbol=coins, quotes=quotes, now=now, max_age=max_price_age)
    predictions = None
    if prediction_timeframes is not None:
        predictions = await latest_predictions(
            session=session, coin_ids=coin_ids, timeframes=prediction_timeframes, now=now
        )
    return ValuedPortfolio(valuation, predictions)
