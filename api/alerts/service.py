"""Alert services: keyword-only functions over an ``AsyncSession``, always scoped to one owner."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from api.alerts.exceptions import AlertLimitReachedError, UnknownSymbolError
from api.alerts.rules import AlertRule
from api.alerts.schemas import AlertCreateIn
from khalsi.db.models import Coin, User, UserAlert

# Each active alert costs a check per evaluation and possibly a delivery per firing: a fixed
# ceiling per account keeps one account from making evaluation slow for everyone.
MAX_ALERTS_PER_USER = 50


async def is_tracked_symbol(*, session: AsyncSession, symbol: str) -> bool:
    """Whether a tracked coin (``coins``) has this ticker, whatever its case."""
    found = await session.scalar(sa.select(Coin.coin_id).where(sa.func.lower(Coin.symbol) == symbol.lower()).limit(1))
    return found is not None


async def create_alert(*, session: AsyncSession, user_id: uuid.UUID, alert_in: AlertCreateIn) -> UserAlert:
    """A new active alert; raise if the symbol is unknown or the account is at its limit."""
    if not await is_tracked_symbol(session=session, symbol=alert_in.symbol):
        raise UnknownSymbolError(alert_in.symbol)
    # Locking the owner's row serialises concurrent creations by the same account, so two requests
    # racing at 49 alerts cannot both pass the count below.
    await session.execute(sa.select(User.id).where(User.id == user_id).with_for_update())
    count = await session.scalar(sa.select(sa.func.count()).select_from(UserAlert).where(UserAlert.user_id == user_id))
    if (count or 0) >= MAX_ALERTS_PER_USER:
        await session.rollback()
        raise AlertLimitReachedError(MAX_ALERTS_PER_USER)
    rule = AlertRule(
        condition=alert_in.condition.model_dump(mode="json"),
        channels=list(alert_in.channels),
        cooldown_minutes=alert_in.cooldown_minutes,
    )
    alert = UserAlert(
        user_id=user_id,
        symbol=alert_in.symbol,
        alert_type=alert_in.alert_type,
        condition=rule.to_document(),
        is_active=True,
    )
    session.add(alert)
    await session.commit()
    await session.refresh(alert)
    return alert


async def get_alert(*, session: AsyncSession, user_id: uuid.UUID, alert_id: uuid.UUID) -> UserAlert | None:
    """The alert if it exists and belongs to ``user_id`` (None otherwise: ids of others do not leak)."""
    alert: UserAlert | None = await session.scalar(
        sa.select(UserAlert).where(UserAlert.id == alert_id, UserAlert.user_id == user_id)
    )
    return alert


async def list_alerts(
    *, session: AsyncSession, user_id: uuid.UUID, offset: int, limit: int, active: bool | None = None
) -> tuple[list[UserAlert], int]:
    """The owner's alerts, newest first, and how many there are in all."""
    where = [UserAlert.user_id == user_id]
    if active is not None:
        where.append(UserAlert.is_active.is_(active))
    total = await session.scalar(sa.select(sa.func.count()).select_from(UserAlert).where(*where)) or 0
    rows = await session.scalars(
        sa.select(UserAlert)
        .where(*where)
        .order_by(UserAlert.created_at.desc(), UserAlert.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(rows), int(total)


async def update_alert(
    *, session: AsyncSession, alert: UserAlert, rule: AlertRule, is_active: bool | None
) -> UserAlert:
    """Store a new rule (condition, channels, cooldown) and, if given, the active flag (re-arm or pause)."""
    alert.condition = rule.to_document()
    if is_active is not None:
        alert.is_active = is_active
    await session.commit()
    await session.refresh(alert)
    return alert


async def delete_alert(*, session: AsyncSession, alert: UserAlert) -> None:
    """Delete the alert; its notifications stay (their ``alert_id`` becomes null)."""
    await session.delete(alert)
    await session.commit()
