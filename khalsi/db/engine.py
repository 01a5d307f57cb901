"""Engines and sessions for the configured database (SQLite by default, PostgreSQL via psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from khalsi.settings import Settings


def sync_url(url: str) -> str:
    """The URL with the synchronous driver this project uses for its dialect."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {parsed.drivername!r}: use postgresql:// or sqlite://")


def async_url(url: str) -> str:
    """The URL with the asyncio driver this project uses for its dialect."""
    parsed = make_url(sync_url(url))
    driver = "postgresql+psycopg" if parsed.get_backend_name() == "postgresql" else "sqlite+aiosqlite"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _engine_options(settings: Settings, url: str) -> dict[str, Any]:
    if make_url(url).get_backend_name() == "postgresql":
        return {
            "pool_size": settings.database.pool_max,
            "max_overflow": 0,
            "pool_pre_ping": True,
            "echo": settings.database.echo,
        }
    return {"echo": settings.database.echo, "connect_args": {"timeout": 30}}


def _sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the API read while a flow writes; foreign keys are off by default in SQLite.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def create_sync_engine(settings: Settings) -> Engine:
    """A synchronous engine for flows, the CLI and migrations."""
    if not settings.database.url:
        settings.ensure_home()
    url = sync_url(settings.database_url)
    engine = sa.create_engine(url, **_engine_options(settings, url))
    _sqlite_pragmas(engine)
    return engine


def create_async_db_engine(settings: Settings) -> AsyncEngine:
    """An asyncio engine for the API."""
    if not settings.database.url:
        settings.ensure_home()
    url = async_url(settings.database_url)
    engine = create_async_engine(url, **_engine_options(settings, url))
    _sqlite_pragmas(engine.sync_engine)
    return engine


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
