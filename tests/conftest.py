"""Shared fixtures: real PostgreSQL and Redis, a fresh KHALSI_HOME per test, Prefect's harness.

PostgreSQL and Redis run on this machine and in CI. A missing service fails the tests that need it,
never skips them, so no run can go green without having talked to both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from khalsi.db.migrate import upgrade
from khalsi.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN_URL = os.environ.get("KHALSI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("KHALSI_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def service_missing(what: str, error: Exception) -> None:
    """Fail, never skip: a test that needs a service proves nothing without it."""
    where = "CI=true requires it" if IN_CI else "start it (PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379)"
    pytest.fail(f"{what} is not reachable ({error}); {where}")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    engine = sa.create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as error:
        service_missing("PostgreSQL", error)
    finally:
        engine.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def pg_database_url(pg_server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"khalsi_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as error:
        service_missing("Redis", error)
    client.flushdb()
    try:
        yield REDIS_TEST_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "khalsi-home"


@pytest.fixture
def settings(home: Path) -> Settings:
    """Embedded defaults (SQLite, local stores) under a fresh KHALSI_HOME."""
    return Settings(_env_file=None, home=home, environment="test")  # type: ignore[call-arg]


@pytest.fixture
def pg_settings(home: Path, pg_database_url: str) -> Settings:
    """The same platform on a real, fresh PostgreSQL database."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None, home=home, environment="test", database={"url": pg_database_url}
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    from khalsi.db.engine import create_sync_engine

    db_engine = create_sync_engine(settings)
    upgrade(db_engine)
    yield db_engine
    db_engine.dispose()


@pytest.fixture
def pg_engine(pg_settings: Settings) -> Iterator[Engine]:
    from khalsi.db.engine import create_sync_engine

    db_engine = create_sync_engine(pg_settings)
    upgrade(db_engine)
    yield db_engine
    db_engine.dispose()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (starting one costs seconds)."""
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # The harness's own SQLite must not be contended by Prefect's telemetry job.
    with (
        temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


@pytest.fixture
def api_settings(home: Path, pg_database_url: str, redis_url: str) -> Settings:
    """The product API on a fresh PostgreSQL database and real Redis, migrated."""
    from khalsi.db.engine import create_sync_engine

    api = Settings(  # type: ignore[call-arg]
        _env_file=None,
        home=home,
        environment="test",
        database={"url": pg_database_url},
        redis={"url": redis_url},
        # Domain tests make many calls from one address; tests/test_api_ratelimit.py tests the limits.
        rate_limit={"max": 100_000, "auth_max": 100_000},
    )
    db_engine = create_sync_engine(api)
    upgrade(db_engine)
    db_engine.dispose()
    return api


@pytest.fixture
def api_client(api_settings: Settings) -> Iterator[TestClient]:
    """The API app, its lifespan running, over the in-process HTTP transport."""
    from api.main import create_app

    with TestClient(create_app(api_settings)) as client:
        yield client
