"""The product API (FastAPI): one app, domain routers, shared clients opened once per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from api.alerts.router import router as alerts_router
from api.auth.router import router as auth_router
from api.auth.sessions import REVOKED_CHANNEL, OpenSessions, forget_revoked
from api.errors import install_error_handlers
from api.health.router import router as health_router
from api.live.hub import LiveHub
from api.live.router import router as live_router
from api.market.router import router as market_router
from api.notifications.router import router as notifications_router
from api.portfolios.router import router as portfolios_router
from api.predictions.router import router as predictions_router
from api.ratelimit import RateLimitMiddleware
from api.users.router import router as users_router
from khalsi.db.engine import async_session_factory, create_async_db_engine
from khalsi.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (the process settings by default)."""
    app_settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_db_engine(app_settings)
        app.state.settings = app_settings
        app.state.session_factory = async_session_factory(engine)
        app.state.redis = None
        if app_settings.redis.url:
            import redis.asyncio as redis_asyncio

            password = app_settings.redis.password.get_secret_value() if app_settings.redis.password else None
            app.state.redis = redis_asyncio.Redis.from_url(app_settings.redis.url, password=password)
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(app_settings.ml_service.timeout_seconds))
        app.state.live_hub = LiveHub(app.state.redis)
        app.state.open_sessions = OpenSessions()
        app.state.live_hub.add_handler(REVOKED_CHANNEL, forget_revoked(app.state.open_sessions))
        await app.state.live_hub.start(
            session_factory=app.state.session_factory, sweep_seconds=app_settings.ws.heartbeat_interval / 1000
        )
        try:
            yield
        finally:
            await app.state.live_hub.stop()
            await app.state.http.aclose()
            if app.state.redis is not None:
                await app.state.redis.aclose()
            await engine.dispose()

    app = FastAPI(title="Khalsi API", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(health_router)
    # The product API lives under /api/<version> (the seed's API_VERSION); /health stays at the root.
    api_prefix = f"/api/{app_settings.api_version}"
    for router in (
        auth_router,
        users_router,
        market_router,
        predictions_router,
        portfolios_router,
        alerts_router,
        notifications_router,
        live_router,
    ):
        app.include_router(router, prefix=api_prefix)
    app.add_middleware(RateLimitMiddleware, settings=app_settings, api_prefix=api_prefix)
    return app
