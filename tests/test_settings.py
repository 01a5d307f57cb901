"""Settings: the environment and ``.env`` reach the nested sections, unsafe values are refused, KHALSI_HOME isolates."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from flows.ingest_market import ingest_market
from khalsi.db.engine import create_sync_engine
from khalsi.db.models import IngestionRun, MarketData, as_utc
from khalsi.settings import DEV_SECRET, CoinGeckoPlan, Environment, MarketSource, Settings, get_settings
from tests import conftest
from tests.factories import isolated_khalsi_env, utc

REAL_SECRET = "s3cr3t-" + "x" * 40


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No KHALSI_* variable from outside, and a working directory without a .env."""
    monkeypatch.chdir(tmp_path)
    isolated_khalsi_env(monkeypatch)
    yield monkeypatch
    get_settings.cache_clear()


def test_environment_reaches_nested_sections(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        "KHALSI_HOME": str(tmp_path / "home"),
        "KHALSI_DATABASE_URL": "postgresql://khalsi@db:5432/khalsi",
        "KHALSI_DATABASE_POOL_MAX": "7",
        "KHALSI_REDIS_URL": "redis://cache:6379/2",
        "KHALSI_COINGECKO_API_KEY": "CG-demo-key",
        "KHALSI_COINGECKO_PLAN": "demo",
        "KHALSI_COINGECKO_CALLS_PER_MINUTE": "30",
        "KHALSI_MARKET_SOURCE": "coingecko",
        "KHALSI_LOG_LEVEL": "debug",
        "KHALSI_JWT_SECRET": REAL_SECRET,
        "DATABASE_URL": "postgresql://not-ours@elsewhere/db",  # no prefix: not ours
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert settings.home == tmp_path / "home"
    assert settings.database.url == settings.database_url == "postgresql://khalsi@db:5432/khalsi"
    assert settings.database.pool_max == 7
    assert settings.redis.url == "redis://cache:6379/2"
    assert settings.coingecko.api_key is not None
    assert settings.coingecko.api_key.get_secret_value() == "CG-demo-key"
    assert settings.coingecko.plan is CoinGeckoPlan.DEMO
    assert settings.coingecko.calls_per_minute == 30
    assert settings.market_source is MarketSource.COINGECKO
    assert settings.log_level == "debug"
    assert settings.jwt.secret.get_secret_value() == REAL_SECRET
    assert "CG-demo-key" not in repr(settings)  # secrets never print


def test_defaults_are_the_embedded_platform(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.environment is Environment.DEVELOPMENT
    assert settings.database_url == f"sqlite:///{(Path('var') / 'khalsi.db').resolve()}"
    assert settings.redis.url == ""
    assert settings.market_source is MarketSource.REPLAY
    assert settings.coingecko.base_url == "https://api.coingecko.com/api/v3"


def test_dotenv_file_is_read_and_the_environment_wins(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "KHALSI_REDIS_URL=redis://from-dotenv:6379/0\n"
        "KHALSI_COINGECKO_CALLS_PER_MINUTE=12\n"
        "KHALSI_DATABASE_URL=sqlite:///from-dotenv.db\n",
        encoding="utf-8",
    )
    clean_env.setenv("KHALSI_DATABASE_URL", "sqlite:///from-env.db")
    settings = Settings()
    assert settings.redis.url == "redis://from-dotenv:6379/0"
    assert settings.coingecko.calls_per_minute == 12
    assert settings.database.url == "sqlite:///from-env.db"


def test_get_settings_reads_once_until_cleared(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KHALSI_PORT", "9001")
    first = get_settings()
    clean_env.setenv("KHALSI_PORT", "9002")
    assert get_settings() is first
    assert first.port == 9001
    get_settings.cache_clear()
    assert get_settings().port == 9002


@pytest.mark.parametrize(
    ("jwt", "refresh", "refused"),
    [
        (None, None, "KHALSI_JWT_SECRET"),  # the placeholders
        (DEV_SECRET + "-but-longer-than-32-characters", REAL_SECRET, "KHALSI_JWT_SECRET"),
        (REAL_SECRET, "too-short", "KHALSI_JWT_REFRESH_TOKEN_SECRET"),
    ],
)
def test_production_refuses_placeholder_secrets(
    clean_env: pytest.MonkeyPatch, jwt: str | None, refresh: str | None, refused: str
) -> None:
    clean_env.setenv("KHALSI_ENVIRONMENT", "production")
    if jwt is not None:
        clean_env.setenv("KHALSI_JWT_SECRET", jwt)
    if refresh is not None:
        clean_env.setenv("KHALSI_JWT_REFRESH_TOKEN_SECRET", refresh)
    with pytest.raises(ValidationError, match=refused):
        Settings()


def test_production_starts_with_real_secrets_and_development_with_placeholders(
    clean_env: pytest.MonkeyPatch,
) -> None:
    assert Settings().jwt.secret.get_secret_value().startswith(DEV_SECRET)
    clean_env.setenv("KHALSI_ENVIRONMENT", "production")
    clean_env.setenv("KHALSI_JWT_SECRET", REAL_SECRET)
    clean_env.setenv("KHALSI_JWT_REFRESH_TOKEN_SECRET", REAL_SECRET + "-refresh")
    assert Settings().environment is Environment.PRODUCTION


@pytest.mark.parametrize("plan", ["demo", "pro"])
def test_a_paid_plan_needs_a_key(clean_env: pytest.MonkeyPatch, plan: str) -> None:
    clean_env.setenv("KHALSI_COINGECKO_PLAN", plan)
    with pytest.raises(ValidationError, match=f"KHALSI_COINGECKO_PLAN={plan} needs KHALSI_COINGECKO_API_KEY"):
        Settings()
    clean_env.setenv("KHALSI_COINGECKO_API_KEY", "CG-key")
    settings = Settings()
    expected_host = "https://pro-api.coingecko.com/api/v3" if plan == "pro" else "https://api.coingecko.com/api/v3"
    assert settings.coingecko.base_url == expected_host


def test_an_empty_key_is_no_key(clean_env: pytest.MonkeyPatch) -> None:
    # `KHALSI_COINGECKO_API_KEY=` is what .env.example and docker-compose.yml pass when unset.
    clean_env.setenv("KHALSI_COINGECKO_PLAN", "demo")
    clean_env.setenv("KHALSI_COINGECKO_API_KEY", "")
    with pytest.raises(ValidationError, match="needs KHALSI_COINGECKO_API_KEY"):
        Settings()


def test_a_missing_service_fails_in_ci_and_everywhere_else(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (os.environ.get("CI", "").lower() in {"1", "true", "yes"}) == conftest.IN_CI
    error = ConnectionRefusedError("connection refused")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=r"PostgreSQL is not reachable .*CI=true requires it"):
        conftest.service_missing("PostgreSQL", error)
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.fail.Exception, match=r"Redis is not reachable .*start it"):
        conftest.service_missing("Redis", error)


# --- KHALSI_HOME isolates everything a run writes -------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
async def test_two_homes_never_mix(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    homes = {"a": (tmp_path / "home-a", utc(2024, 6, 1)), "b": (tmp_path / "home-b", utc(2024, 7, 1))}
    for home, clock in homes.values():
        isolated_khalsi_env(clean_env, HOME=str(home), ENVIRONMENT="test", REPLAY_START=clock.date().isoformat())
        await ingest_market(coins=["sui"])
    get_settings.cache_clear()
    check_homes_are_separate(homes, tmp_path)


def check_homes_are_separate(homes: dict[str, tuple[Path, datetime]], cwd: Path) -> None:
    seen_runs: list[set[str]] = []
    for home, clock in homes.values():
        settings = Settings(_env_file=None, home=home)
        assert (home / "khalsi.db").is_file()
        engine = create_sync_engine(settings)
        try:
            with engine.connect() as connection:
                newest = connection.execute(sa.select(sa.func.max(MarketData.timestamp))).scalar_one()
                runs = connection.execute(sa.select(IngestionRun.id, IngestionRun.raw_path)).all()
        finally:
            engine.dispose()
        assert as_utc(newest) == clock  # each database holds its own run's data only
        assert len(runs) == 1
        assert Path(str(runs[0][1])).is_relative_to(settings.raw_dir)
        assert [p.name for p in (settings.raw_dir / "market_daily").iterdir()] == [str(runs[0][0])]
        assert (settings.lake_dir / "market_daily" / "coin_id=sui" / "data.parquet").is_file()
        seen_runs.append({str(runs[0][0])})
    assert seen_runs[0].isdisjoint(seen_runs[1])
    assert not (cwd / "var").exists()  # the default home was never touched
