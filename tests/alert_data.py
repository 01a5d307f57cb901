"""Rows the alert evaluation reads (coins, market snapshots, predictions) and accounts, written directly.

Coins and predictions come from :mod:`tests.factories`, shared with the portfolio tests.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from khalsi.db.models import MarketData, Notification, User, UserAlert
from tests.factories import add_coin


def add_market(
    engine: Engine,
    *,
    coin_id: str,
    symbol: str,
    price: float,
    at: datetime,
    change_24h: float | None = None,
    market_cap: float | None = 1e9,
) -> None:
    """A coin (if new) and one market snapshot of it."""
    add_coin(engine, coin_id=coin_id, symbol=symbol)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(MarketData).values(
                id=uuid.uuid4(),
                coin_id=coin_id,
                symbol=symbol,
                price=price,
                price_change_24h=change_24h,
                market_cap=market_cap,
                volume_24h=1e7,
                timestamp=at,
            )
        )


def add_user(engine: Engine, *, email: str | None = None) -> tuple[uuid.UUID, str]:
    """An account (no usable password: these tests never log in)."""
    user_id = uuid.uuid4()
    address = email or f"user-{user_id.hex[:8]}@example.com"
    with engine.begin() as connection:
        connection.execute(sa.insert(User).values(id=user_id, email=address, password_hash="!", role="user"))
    return user_id, address


def add_alert(
    engine: Engine,
    *,
    user_id: uuid.UUID,
    symbol: str,
    alert_type: str,
    condition: dict[str, Any],
    channels: list[dict[str, Any]] | None = None,
    cooldown_minutes: int | None = None,
) -> uuid.UUID:
    """An active alert stored the way the API stores it (condition fields + channels + cooldown)."""
    alert_id = uuid.uuid4()
    document = {
        **condition,
        "channels": channels or [{"type": "email", "address": None}],
        "cooldown_minutes": cooldown_minutes,
    }
    with engine.begin() as connection:
        connection.execute(
            sa.insert(UserAlert).values(
                id=alert_id, user_id=user_id, symbol=symbol, alert_type=alert_type, condition=document, is_active=True
            )
        )
    return alert_id


def alert_row(engine: Engine, alert_id: uuid.UUID) -> dict[str, Any]:
    with engine.connect() as connection:
        row = connection.execute(sa.select(UserAlert.__table__).where(UserAlert.id == alert_id)).mappings().one()
    return dict(row)


def notifications_of(engine: Engine, alert_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    query = sa.select(Notification.__table__).order_by(Notification.created_at, Notification.channel)
    if alert_id is not None:
        query = query.where(Notification.alert_id == alert_id)
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings().all()]
