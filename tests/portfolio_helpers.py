"""Data builders for the portfolio API tests: coins, market rows and predictions written directly."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from khalsi.db.models import MarketData
from khalsi.ingest.sources import source_clock
from khalsi.settings import Settings
from tests.api_helpers import API

PORTFOLIO = f"{API}/portfolio"
POSITIONS = f"{PORTFOLIO}/positions"


def platform_now(settings: Settings) -> datetime:
    """The clock the API values against (the replay's frozen "now" under the test settings)."""
    return source_clock(settings)()


def add_price(engine: sa.Engine, coin_id: str, symbol: str, price: float, at: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(sa.insert(MarketData).values(coin_id=coin_id, symbol=symbol, price=price, timestamp=at))


def stored_positions(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """Every stored position as (user_id, symbol, quantity, avg_price, entry_date), numbers as exact text."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT user_id::text, symbol, quantity::text, avg_price::text, entry_date FROM portfolios "
                "ORDER BY entry_date, id"
            )
        )
        return [tuple(row) for row in rows]


def add_position(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(POSITIONS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def portfolio(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get(PORTFOLIO, headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def hours_before(now: datetime, hours: float) -> datetime:
    return now - timedelta(hours=hours)


def random_id() -> str:
    return str(uuid.uuid4())
