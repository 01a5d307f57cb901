"""The seed's health check: database, Redis, CoinGecko and the ML service, each timed, none fatal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from api.health.schemas import CheckPublic, HealthPublic
from khalsi.settings import MarketSource, Settings

CHECK_TIMEOUT_SECONDS = 2.0


async def _timed(probe: Callable[[], Awaitable[str | None]]) -> CheckPublic:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(probe(), timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as error:  # a failing dependency is a finding, not a crash of the health check
        return CheckPublic(
            status="down",
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            detail=f"{type(error).__name__}: {error}"[:300],
        )
    return CheckPublic(status="up", latency_ms=round((time.perf_counter() - started) * 1000, 2), detail=detail)


async def check_health(
    *, session: AsyncSession, redis: Any | None, http: httpx.AsyncClient, settings: Settings
) -> HealthPublic:
    """Probe every dependency concurrently; the database is essential, the rest degrade the status."""

    async def database() -> str:
        await session.execute(sa.text("SELECT 1"))
        return session.get_bind().dialect.name

    async def redis_ping() -> str:
        assert redis is not None
        await redis.ping()
        return "pong"

    async def coingecko() -> str:
        response = await http.get(f"{settings.coingecko.base_url.rstrip('/')}/ping")
        response.raise_for_status()
        return str(response.json().get("gecko_says", "ok"))

    async def ml_service() -> str:
        response = await http.get(f"{settings.ml_service.url.rstrip('/')}/readyz")
        response.raise_for_status()
        return "ready"

    disabled = CheckPublic(status="disabled")
    replay = CheckPublic(status="disabled", detail="market source is the bundled replay (no network)")
    results = await asyncio.gather(
        _timed(database),
        _timed(redis_ping) if redis is not None else _disabled(disabled),
        _timed(coingecko) if settings.market_source is MarketSource.COINGECKO else _disabled(replay),
        _timed(ml_service),
    )
    checks = dict(zip(("database", "redis", "coingecko", "ml_service"), results, strict=True))
    if checks["database"].status == "down":
        status = "unhealthy"
    elif any(check.status == "down" for check in checks.values()):
        status = "degraded"
    else:
        status = "healthy"
    return HealthPublic(status=status, timestamp=datetime.now(UTC), checks=checks)


async def _disabled(check: CheckPublic) -> CheckPublic:
    return check
