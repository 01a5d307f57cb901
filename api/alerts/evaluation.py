"""Evaluating alerts: active alerts against the newest stored market data and predictions.

One pass (:func:`evaluate_alerts`):

1. reads the newest *fresh* observation per coin (``market_data``; ``predictions`` per horizon,
   newest feature time first, then newest written, i.e. the current champion's answer). Fresh means
   at most ``max_data_age`` older than ``data_now``, the platform clock (the replay clock offline),
   the same rule the prediction service applies to feature vectors. An alert's ``symbol`` maps to a
   coin through ``coins``; when several tracked coins share a ticker, the one with the largest market
   cap in its newest snapshot is meant;
2. for each active alert whose condition holds, *claims the firing* with one conditional UPDATE
   (still active and, for repeating alerts, past the cooldown) and, in the same transaction, writes
   one ``pending`` notification per channel. The claim is what makes a firing happen at most once:
   under concurrent or repeated runs only one UPDATE matches (PostgreSQL re-checks the WHERE clause
   on the row it waited for);
3. delivers those notifications (bounded concurrency, each with its own session), recording each
   outcome; a failure is recorded on its row and never stops the others, and the trigger stays;
4. picks up ``pending`` notifications left by an interrupted run (lease by ``updated_at``);
5. tells the ops channel (the configured Discord webhook) when deliveries failed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.alerts.rules import (
    AlertCondition,
    AlertRule,
    ChangeCondition,
    EmailChannel,
    MarketObservation,
    PredictionObservation,
    PriceCondition,
    check_condition,
    parse_condition,
    read_rule,
)
from api.notifications import service as notifications
from khalsi.db.models import Coin, MarketData, Notification, Prediction, User, UserAlert, as_utc
from khalsi.events import PRIVATE_TOPIC, channel_name, publish_events
from khalsi.notify import DEFAULT_POLICY, Message, Notifier, RetryPolicy
from khalsi.settings import Settings

logger = logging.getLogger(__name__)

ALERT_PAGE_SIZE = 1000
DELIVERY_CONCURRENCY = 8
# A pending notification untouched this long belongs to a run that stopped before delivering it.
STALE_PENDING_AFTER = timedelta(minutes=10)
HORIZONS = ("1d", "7d")


@dataclass
class EvaluationSummary:
    """What one evaluation pass did."""

    checked: int = 0
    triggered: int = 0
    notifications: int = 0
    sent: int = 0
    failed: int = 0
    recovered: int = 0
    already_claimed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    ops_notified: bool = False
    # Each firing as a live event for its owner's WebSockets: (channel, payload).
    live_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        summary = asdict(self)
        summary["skipped"] = dict(self.skipped)
        summary.pop("live_events")
        return summary


@dataclass(frozen=True)
class Observations:
    """The newest fresh observations per alert symbol."""

    market: dict[str, MarketObservation]
    predictions: dict[str, dict[str, PredictionObservation]]


@dataclass(frozen=True)
class _ActiveAlert:
    id: uuid.UUID
    user_id: uuid.UUID
    owner_email: str
    symbol: str
    alert_type: str
    document: dict[str, Any]
    triggered_at: datetime | None


async def load_observations(
    *, session: AsyncSession, symbols: Iterable[str], data_now: datetime, max_data_age: timedelta
) -> Observations:
    """The newest fresh market snapshot and per-horizon prediction of the coin each symbol means."""
    wanted = sorted({symbol.lower() for symbol in symbols})
    if not wanted:
        return Observations(market={}, predictions={})
    since = data_now - max_data_age
    coin_rows = await session.execute(
        sa.select(Coin.coin_id, sa.func.lower(Coin.symbol)).where(sa.func.lower(Coin.symbol).in_(wanted))
    )
    symbol_of = {coin_id: symbol for coin_id, symbol in coin_rows.all()}
    if not symbol_of:
        return Observations(market={}, predictions={})

    newest = (
        sa.select(MarketData.coin_id, sa.func.max(MarketData.timestamp).label("newest"))
        .where(
            MarketData.coin_id.in_(list(symbol_of)),
            MarketData.timestamp >= since,
            MarketData.timestamp <= data_now,
        )
        .group_by(MarketData.coin_id)
        .subquery()
    )
    market_rows = await session.execute(
        sa.select(
            MarketData.coin_id,
            MarketData.price,
            MarketData.price_change_24h,
            MarketData.market_cap,
            MarketData.timestamp,
        ).join(newest, sa.and_(MarketData.coin_id == newest.c.coin_id, MarketData.timestamp == newest.c.newest))
    )
    market: dict[str, MarketObservation] = {}
    chosen_cap: dict[str, tuple[float, str]] = {}
    for coin_id, price, change, cap, timestamp in market_rows.all():
        symbol = symbol_of[coin_id]
        # Tickers are not unique: the biggest coin by market cap is the one people mean.
        rank = (float(cap or 0.0), coin_id)
        if symbol in chosen_cap and chosen_cap[symbol] >= rank:
            continue
        chosen_cap[symbol] = rank
        market[symbol] = MarketObservation(
            coin_id=coin_id, price=float(price), change_24h=change, timestamp=as_utc(timestamp)
        )

    # Predictions follow the coin chosen by market data; a symbol without fresh market data falls
    # back to the single coin of its ticker, if there is only one.
    coin_of: dict[str, str] = {symbol: observation.coin_id for symbol, observation in market.items()}
    by_symbol: dict[str, list[str]] = {}
    for coin_id, symbol in symbol_of.items():
        by_symbol.setdefault(symbol, []).append(coin_id)
    for symbol, coin_ids in by_symbol.items():
        if symbol not in coin_of and len(coin_ids) == 1:
            coin_of[symbol] = coin_ids[0]
    prediction_rows = await session.execute(
        sa.select(
            Prediction.coin_id,
            Prediction.timeframe,
            Prediction.probability_up,
            Prediction.model_version,
            Prediction.feature_timestamp,
        )
        .where(
            Prediction.coin_id.in_(list(coin_of.values())),
            Prediction.timeframe.in_(HORIZONS),
            Prediction.probability_up.is_not(None),
            Prediction.feature_timestamp >= since,
            Prediction.feature_timestamp <= data_now,
        )
        .order_by(Prediction.feature_timestamp.desc(), Prediction.created_at.desc(), Prediction.id)
    )
    symbol_of_chosen = {coin_id: symbol for symbol, coin_id in coin_of.items()}
    predictions: dict[str, dict[str, PredictionObservation]] = {}
    for coin_id, timeframe, probability_up, model_version, feature_timestamp in prediction_rows.all():
        per_horizon = predictions.setdefault(symbol_of_chosen[coin_id], {})
        if timeframe not in per_horizon and probability_up is not None:  # rows come newest first
            per_horizon[timeframe] = PredictionObservation(
                coin_id=coin_id,
                timeframe=timeframe,
                probability_up=float(probability_up),
                model_version=model_version,
                feature_timestamp=as_utc(feature_timestamp),
            )
    return Observations(market=market, predictions=predictions)


# --- messages ---------------------------------------------------------------------------------------


def _number(value: float) -> str:
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.10f}".rstrip("0").rstrip(".") or "0"


def describe(alert_type: str, condition: AlertCondition, currency: str) -> str:
    """The alert's condition in words, e.g. ``price above 50,000.00 USD``."""
    direction = "above" if alert_type.endswith("_above") else "below"
    if isinstance(condition, PriceCondition):
        return f"price {direction} {_number(condition.price)} {currency}"
    if isinstance(condition, ChangeCondition):
        return f"24h change {direction} {condition.percent:+.2f}%"
    return f"probability of a rise within {condition.horizon} {direction} {condition.probability:.0%}"


def render_message(
    *, symbol: str, alert_type: str, condition: AlertCondition, observed: dict[str, Any], currency: str
) -> Message:
    """Subject and text of a firing."""
    ticker = symbol.upper()
    wanted = describe(alert_type, condition, currency)
    as_of = datetime.fromisoformat(observed["as_of"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(condition, PriceCondition):
        now = f"{ticker} is at {_number(observed['price'])} {currency}"
    elif isinstance(condition, ChangeCondition):
        now = f"{ticker} moved {observed['change_24h']:+.2f}% over 24h"
    else:
        now = (
            f"the model (version {observed['model_version']}) gives {ticker} a "
            f"{observed['probability_up']:.1%} probability of a rise within {observed['horizon']}"
        )
    return Message(
        subject=f"Khalsi alert: {ticker} {wanted}",
        text=f"{now} (data of {as_of}). Your alert: {ticker} {wanted}. This is not investment advice.",
    )


# --- one pass -----------------------------------------------------------------------------------------


async def _active_alerts(session: AsyncSession, after: uuid.UUID | None) -> list[_ActiveAlert]:
    query = (
        sa.select(
            UserAlert.id,
            UserAlert.user_id,
            User.email,
            UserAlert.symbol,
            UserAlert.alert_type,
            UserAlert.condition,
            UserAlert.triggered_at,
        )
        .join(User, User.id == UserAlert.user_id)
        .where(UserAlert.is_active.is_(True))
        .order_by(UserAlert.id)
        .limit(ALERT_PAGE_SIZE)
    )
    if after is not None:
        query = query.where(UserAlert.id > after)
    rows = await session.execute(query)
    return [_ActiveAlert(*row) for row in rows.all()]


def _targets(rule: AlertRule, owner_email: str) -> list[tuple[str, str]]:
    targets: list[tuple[str, str]] = []
    for channel in rule.channels:
        if isinstance(channel, EmailChannel):
            targets.append(("email", str(channel.address or owner_email)))
        else:
            targets.append(("webhook", channel.url))
    return list(dict.fromkeys(targets))  # an explicit address equal to the owner's: one e-mail


async def _claim_and_record(
    session: AsyncSession,
    alert: _ActiveAlert,
    rule: AlertRule,
    *,
    fired_at: datetime,
    payload: dict[str, Any],
) -> list[uuid.UUID] | None:
    """Mark the alert fired and write its pending notifications, atomically; None if another run won."""
    claim = sa.update(UserAlert).where(UserAlert.id == alert.id, UserAlert.is_active.is_(True))
    if rule.cooldown_minutes is not None:
        rearmed_before = fired_at - timedelta(minutes=rule.cooldown_minutes)
        claim = claim.where(sa.or_(UserAlert.triggered_at.is_(None), UserAlert.triggered_at <= rearmed_before))
    claimed = await session.scalar(
        claim.values(triggered_at=fired_at, is_active=rule.cooldown_minutes is not None)
        .returning(UserAlert.id)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        await session.rollback()
        return None
    rows = [
        Notification(
            id=uuid.uuid4(),
            user_id=alert.user_id,
            alert_id=alert.id,
            channel=channel,
            target=target,
            payload=payload,
            status="pending",
            attempts=0,
            created_at=fired_at,
            updated_at=fired_at,
        )
        for channel, target in _targets(rule, alert.owner_email)
    ]
    session.add_all(rows)
    await session.commit()
    return [row.id for row in rows]


async def _deliver_ids(
    session_factory: async_sessionmaker[AsyncSession],
    notifier: Notifier,
    ids: list[uuid.UUID],
    summary: EvaluationSummary,
    clock: notifications.Clock,
) -> None:
    gate = asyncio.Semaphore(DELIVERY_CONCURRENCY)

    async def one(notification_id: uuid.UUID) -> None:
        async with gate, session_factory() as session:
            try:
                row = await session.get(Notification, notification_id)
                if row is None or row.status != "pending":
                    return
                delivered = await notifications.deliver(
                    session=session, notifier=notifier, notification=row, clock=clock
                )
            except Exception:  # a database fault on one row must not stop the rest
                logger.exception("could not deliver notification %s", notification_id)
                summary.failed += 1
                return
            if delivered.status == "sent":
                summary.sent += 1
            else:
                summary.failed += 1

    await asyncio.gather(*(one(notification_id) for notification_id in ids))


async def evaluate_alerts(
    *,
    session_factory: async_sessionmaker[AsyncSession],
    notifier: Notifier,
    data_now: datetime,
    max_data_age: timedelta,
    currency: str = "USD",
    clock: notifications.Clock = notifications.wall_clock,
    stale_pending_after: timedelta = STALE_PENDING_AFTER,
) -> EvaluationSummary:
    """Check every active alert once, fire those whose condition holds, deliver, and count."""
    summary = EvaluationSummary()
    fresh_ids: list[uuid.UUID] = []
    after: uuid.UUID | None = None
    async with session_factory() as session:
        symbols = await session.scalars(sa.select(sa.distinct(UserAlert.symbol)).where(UserAlert.is_active.is_(True)))
        observations = await load_observations(
            session=session, symbols=list(symbols), data_now=data_now, max_data_age=max_data_age
        )
        await session.rollback()  # end the read transaction before the per-alert ones
        while page := await _active_alerts(session, after):
            after = page[-1].id
            await session.rollback()
            for alert in page:
                summary.checked += 1
                try:
                    fired = await _evaluate_one(session, alert, observations, summary, currency=currency, clock=clock)
                except Exception:  # one broken alert (or a lost connection mid-claim) never stops the rest
                    logger.exception("could not evaluate alert %s", alert.id)
                    await session.rollback()
                    summary.skipped["error"] += 1
                    continue
                fresh_ids.extend(fired)
    await _deliver_ids(session_factory, notifier, fresh_ids, summary, clock)

    async with session_factory() as session:
        stale = await notifications.claim_stale_pending(session=session, older_than=stale_pending_after, now=clock())
    summary.recovered = len(stale)
    await _deliver_ids(session_factory, notifier, stale, summary, clock)

    if summary.failed and notifier.has_ops_channel:
        result = await notifier.notify_ops(
            Message(
                subject="Khalsi: alert deliveries failed",
                text=f"{summary.failed} of {summary.notifications + summary.recovered} alert deliveries failed in "
                "this evaluation; they are recorded as failed notifications and can be retried.",
            )
        )
        summary.ops_notified = bool(result and result.ok)
    logger.info("alerts evaluated: %s", summary.as_dict())
    return summary


async def _evaluate_one(
    session: AsyncSession,
    alert: _ActiveAlert,
    observations: Observations,
    summary: EvaluationSummary,
    *,
    currency: str,
    clock: notifications.Clock,
) -> list[uuid.UUID]:
    try:
        rule = read_rule(alert.document)
        condition = parse_condition(alert.alert_type, rule.condition)
    except (KeyError, ValueError, ValidationError):
        summary.skipped["invalid_alert"] += 1
        return []
    symbol = alert.symbol.lower()
    check = check_condition(
        alert.alert_type,
        condition,
        market=observations.market.get(symbol),
        predictions=observations.predictions.get(symbol, {}),
    )
    if check.missing is not None:
        summary.skipped[check.missing] += 1
        return []
    if not check.holds or check.observed is None:
        return []
    fired_at = clock()
    if (
        rule.cooldown_minutes is not None
        and alert.triggered_at is not None
        and fired_at - as_utc(alert.triggered_at) < timedelta(minutes=rule.cooldown_minutes)
    ):
        summary.skipped["cooling_down"] += 1
        return []
    message = render_message(
        symbol=symbol, alert_type=alert.alert_type, condition=condition, observed=check.observed, currency=currency
    )
    payload = {
        "subject": message.subject,
        "text": message.text,
        "alert_id": str(alert.id),
        "symbol": symbol,
        "alert_type": alert.alert_type,
        "condition": condition.model_dump(mode="json"),
        "observed": check.observed,
        "fired_at": fired_at.isoformat(),
    }
    ids = await _claim_and_record(session, alert, rule, fired_at=fired_at, payload=payload)
    if ids is None:
        summary.already_claimed += 1
        return []
    summary.triggered += 1
    summary.notifications += len(ids)
    summary.live_events.append((channel_name(PRIVATE_TOPIC, str(alert.user_id)), {"type": "alert", **payload}))
    return ids


async def run_evaluation(
    settings: Settings, *, data_now: datetime | None = None, policy: RetryPolicy = DEFAULT_POLICY
) -> EvaluationSummary:
    """One pass with the configured database, SMTP server and webhooks (what the flow and CLI run)."""
    from khalsi.db.engine import async_session_factory, create_async_db_engine
    from khalsi.ingest.sources import source_clock

    engine = create_async_db_engine(settings)
    try:
        async with httpx.AsyncClient() as http:
            notifier = Notifier(smtp=settings.smtp, webhooks=settings.webhooks, http=http, policy=policy)
            summary = await evaluate_alerts(
                session_factory=async_session_factory(engine),
                notifier=notifier,
                data_now=data_now or source_clock(settings)(),
                max_data_age=timedelta(hours=settings.serving.max_feature_age_hours),
                currency=settings.coingecko.vs_currency.upper(),
            )
        # Best effort, after the firings are stored: the owner's open sockets hear about them at once.
        await asyncio.to_thread(publish_events, settings, summary.live_events)
        return summary
    finally:
        await engine.dispose()
