"""Rate limiting: the seed's window and maximum, shared through real Redis, degraded without it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
from fastapi.testclient import TestClient

from api.main import create_app
from api.ratelimit import MemoryCounters, RateLimiter, seconds_until_allowed, weighted_count
from khalsi.db.engine import create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.settings import Settings
from tests.api_helpers import API, PASSWORD, bearer, login, register


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _limited_settings(home: Path, database_url: str, redis_url: str, **limits: int) -> Settings:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        home=home,
        environment="test",
        database={"url": database_url},
        redis={"url": redis_url},
        rate_limit={"window": 15, "max": 5, "auth_max": 3, **limits},
    )
    engine = create_sync_engine(settings)
    upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture
def limited(home: Path, pg_database_url: str, redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(_limited_settings(home, pg_database_url, redis_url))) as client:
        yield client


# --- the arithmetic ------------------------------------------------------------------------------------


def test_the_previous_window_weighs_by_its_overlap() -> None:
    assert weighted_count(current=2, previous=10, window=100, elapsed=25) == pytest.approx(9.5)
    assert weighted_count(current=2, previous=10, window=100, elapsed=100) == pytest.approx(2)


def test_retry_after_is_when_one_more_request_fits() -> None:
    # 4 now + 10 weighted: at elapsed e the total is 10 * (100 - e) / 100 + 4; one more fits at 5 once
    # that is <= 4, i.e. e >= 100: the previous window must slide out completely.
    assert seconds_until_allowed(limit=5, window=100, elapsed=40, current=4, previous=10) == pytest.approx(60)
    # 2 now + 10 weighted, limit 5: fits when 10 * (100 - e) / 100 <= 2, at e = 80.
    assert seconds_until_allowed(limit=5, window=100, elapsed=50, current=2, previous=10) == pytest.approx(30)
    # This window alone is full (5 of 5): after it ends, 5 * (100 - x) / 100 <= 4 at x = 20.
    assert seconds_until_allowed(limit=5, window=100, elapsed=90, current=5, previous=0) == pytest.approx(10 + 20)
    assert seconds_until_allowed(limit=5, window=100, elapsed=90, current=1, previous=1) == 0


def test_memory_counters_forget_old_windows() -> None:
    counters = MemoryCounters()
    for client in range(100):
        counters.hit(f"c{client}", window_index=1, limit=5, window=60, elapsed=1)
    counters.hit("late", window_index=3, limit=5, window=60, elapsed=1)
    assert len(counters) == 1


async def test_refused_requests_are_not_counted_and_the_budget_slides_back(
    api_settings: Settings, redis_url: str
) -> None:
    settings = api_settings.model_copy(update={"rate_limit": api_settings.rate_limit.model_copy(update={"max": 3})})
    limiter = RateLimiter(settings)
    client = redis_asyncio.Redis.from_url(redis_url)
    window = limiter.window_seconds
    start = 1000 * window  # the start of a window
    try:
        verdicts = [await limiter.check(client, bucket="api", client="ip:1", now=start + i) for i in range(5)]
        assert [v.allowed for v in verdicts] == [True, True, True, False, False]
        assert [v.remaining for v in verdicts[:3]] == [2, 1, 0]
        assert all(v.store == "redis" for v in verdicts)
        # Early in the next window the previous one still weighs almost fully: refused.
        early = await limiter.check(client, bucket="api", client="ip:1", now=start + window + 1)
        assert not early.allowed
        # Its Retry-After is honest: waiting that long is enough.
        later = await limiter.check(
            client, bucket="api", client="ip:1", now=start + window + 1 + early.retry_after_seconds
        )
        assert later.allowed
        assert (await limiter.check(client, bucket="api", client="ip:2", now=start + 4)).allowed
    finally:
        await client.aclose()


# --- over HTTP ------------------------------------------------------------------------------------------


def test_the_sixth_request_in_the_window_gets_429_with_retry_after(limited: TestClient) -> None:
    answers = [limited.get(f"{API}/users/me") for _ in range(6)]
    assert [a.status_code for a in answers] == [401] * 5 + [429]
    assert [a.headers["ratelimit-remaining"] for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    refused = answers[-1]
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["ratelimit-policy"] == "5;w=900"
    assert refused.headers["x-ratelimit-store"] == "redis"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["detail"] == "too many requests; slow down"
    # Health checks and docs are never limited.
    assert limited.get("/health").status_code in (200, 503)
    assert "ratelimit-limit" not in limited.get("/health").headers


def test_api_processes_share_one_budget_through_redis(home: Path, pg_database_url: str, redis_url: str) -> None:
    settings = _limited_settings(home, pg_database_url, redis_url)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        statuses = [client.get(f"{API}/users/me").status_code for client in (first, second, first, second, first)]
        assert statuses == [401] * 5
        assert second.get(f"{API}/users/me").status_code == 429


def test_each_user_has_a_budget_and_login_has_its_own(limited: TestClient) -> None:
    alice, bob = register(limited), register(limited)  # 2 of the address's 3 auth calls
    alice_headers = bearer(login(limited, email=alice["email"]))  # the 3rd
    refused_login = limited.post(f"{API}/auth/login", json={"email": bob["email"], "password": PASSWORD})
    assert refused_login.status_code == 429
    assert refused_login.headers["ratelimit-limit"] == "3"
    # The API budget is separate and per user: Alice spends hers, the address still has its own.
    assert [limited.get(f"{API}/users/me", headers=alice_headers).status_code for _ in range(6)] == [200] * 5 + [429]
    assert limited.get(f"{API}/users/me").status_code == 401  # anonymous: the address's budget, untouched
    # A forged token does not buy a fresh budget: it counts against the address.
    forged = {"Authorization": "Bearer not-a-token"}
    assert [limited.get(f"{API}/users/me", headers=forged).status_code for _ in range(5)] == [401] * 4 + [429]


def test_without_redis_each_process_still_limits_and_says_so(home: Path, pg_database_url: str) -> None:
    settings = _limited_settings(home, pg_database_url, f"redis://127.0.0.1:{_closed_port()}/0")
    with TestClient(create_app(settings)) as client:
        answers = [client.get(f"{API}/users/me") for _ in range(6)]
    assert [a.status_code for a in answers] == [401] * 5 + [429]
    assert {a.headers["x-ratelimit-store"] for a in answers} == {"memory"}


def test_behind_the_proxy_the_address_it_appended_counts_not_the_clients_claim(
    home: Path, pg_database_url: str, redis_url: str
) -> None:
    settings = _limited_settings(home, pg_database_url, redis_url)
    settings = settings.model_copy(
        update={"rate_limit": settings.rate_limit.model_copy(update={"trust_forwarded_for": True})}
    )
    with TestClient(create_app(settings)) as client:
        # A client rotating a fake first entry is still one address to the limiter.
        statuses = [
            client.get(f"{API}/users/me", headers={"X-Forwarded-For": f"10.0.0.{i}, 203.0.113.7"}).status_code
            for i in range(6)
        ]
        assert statuses == [401] * 5 + [429]
        other = client.get(f"{API}/users/me", headers={"X-Forwarded-For": "203.0.113.8"})
        assert other.status_code == 401
