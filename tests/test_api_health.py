"""The seed's health check, against real PostgreSQL and Redis, and with dependencies down."""

from __future__ import annotations

import socket
from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from khalsi.db.engine import create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.settings import Settings
from khalsi.sources.replay import run_replay_server


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _settings(home: Path, **sections: object) -> Settings:
    return Settings(_env_file=None, home=home, environment="test", **sections)  # type: ignore[call-arg,arg-type]


def test_health_reports_each_dependency_on_real_services(home: Path, pg_database_url: str, redis_url: str) -> None:
    with run_replay_server() as replay:
        settings = _settings(
            home,
            database={"url": pg_database_url},
            redis={"url": redis_url},
            market_source="coingecko",
            coingecko={"api_url": replay.api_url},
            ml_service={"url": f"http://127.0.0.1:{_closed_port()}"},
        )
        upgrade(create_sync_engine(settings))
        with TestClient(create_app(settings)) as client:
            response = client.get("/health")
    body = response.json()
    assert response.status_code == 200
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["database"]["detail"] == "postgresql"
    assert body["checks"]["redis"]["status"] == "up"
    assert body["checks"]["coingecko"]["status"] == "up"
    assert body["checks"]["coingecko"]["detail"] == "(V3) To the Moon!"
    # Nothing serves predictions here: the API stays up and says so.
    assert body["checks"]["ml_service"]["status"] == "down"
    assert body["status"] == "degraded"


def test_health_without_optional_services_on_embedded_defaults(home: Path) -> None:
    settings = _settings(home, ml_service={"url": f"http://127.0.0.1:{_closed_port()}"})
    with TestClient(create_app(settings)) as client:
        body = client.get("/health").json()
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["database"]["detail"] == "sqlite"
    assert body["checks"]["redis"]["status"] == "disabled"
    assert body["checks"]["coingecko"]["status"] == "disabled"


def test_health_is_503_when_the_database_is_down(home: Path) -> None:
    settings = _settings(
        home,
        database={"url": f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing"},
        redis={"url": f"redis://127.0.0.1:{_closed_port()}/0"},
        ml_service={"url": f"http://127.0.0.1:{_closed_port()}"},
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"]["status"] == "down"
    assert body["checks"]["redis"]["status"] == "down"
