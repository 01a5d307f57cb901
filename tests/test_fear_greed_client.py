"""The Fear & Greed client against the replay server over real HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import httpx
import polars as pl
import pytest

from khalsi.settings import Settings
from khalsi.sources.exports import read_fear_greed_csv
from khalsi.sources.fear_greed import (
    BUNDLED_FEAR_GREED_CSV,
    FEAR_GREED_NAME,
    FaultPlan,
    FearGreedClient,
    FearGreedHTTPError,
    FearGreedResponseError,
    FearGreedUnavailableError,
    PlannedFault,
    fear_greed_replay_server,
)

FAR_FUTURE = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = FAR_FUTURE

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Replay:
    url: str
    clock: Clock
    faults: FaultPlan


@pytest.fixture(scope="module")
def server() -> Iterator[Replay]:
    clock, faults = Clock(), FaultPlan()
    with fear_greed_replay_server(BUNDLED_FEAR_GREED_CSV, clock_now=clock, faults=faults) as url:
        yield Replay(url, clock, faults)


@pytest.fixture
def replay(server: Replay) -> Iterator[Replay]:
    server.faults.clear()
    server.clock.now = FAR_FUTURE
    yield server
    server.faults.clear()


@pytest.fixture(scope="module")
def history() -> pl.DataFrame:
    """The bundled CSV read independently of the server, newest first."""
    return read_fear_greed_csv(BUNDLED_FEAR_GREED_CSV).sort("day", descending=True)


class SleepLog:
    """Records back-off delays without waiting them out (the retry logic, not the wall clock, is tested)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client(url: str, **options: object) -> FearGreedClient:
    defaults: dict[str, object] = {"timeout_seconds": 5.0, "max_retries": 3, "backoff_initial_seconds": 0.01}
    return FearGreedClient(base_url=url, **{**defaults, **options})  # type: ignore[arg-type]


async def test_replay_answers_in_the_api_shape(replay: Replay, history: pl.DataFrame) -> None:
    replay.clock.now = datetime(2020, 3, 15, 18, 0, tzinfo=UTC)
    async with httpx.AsyncClient(base_url=replay.url) as http:
        response = await http.get("/fng/", params={"limit": "3", "format": "json"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"name", "data", "metadata"}
    assert body["name"] == FEAR_GREED_NAME
    assert body["metadata"] == {"error": None}
    first, *rest = body["data"]
    assert set(first) == {"value", "value_classification", "timestamp", "time_until_update"}
    # Today's entry says when tomorrow's value comes: six hours after 18:00.
    assert first["time_until_update"] == str(6 * 3600)
    assert all(set(entry) == {"value", "value_classification", "timestamp"} for entry in rest)
    assert all(isinstance(value, str) for entry in body["data"] for value in entry.values())
    stamps = [int(entry["timestamp"]) for entry in body["data"]]
    assert stamps == sorted(stamps, reverse=True)
    assert all(stamp % 86_400 == 0 for stamp in stamps)
    expected = history.filter(pl.col("day") <= date(2020, 3, 15)).head(3)
    assert [int(entry["value"]) for entry in body["data"]] == expected.get_column("value").to_list()


async def test_fetch_all_returns_the_whole_history_newest_first(replay: Replay, history: pl.DataFrame) -> None:
    async with client(replay.url) as fng:
        points = await fng.fetch(limit=0)
    assert len(points) == history.height
    assert [p.day for p in points] == history.get_column("day").to_list()
    assert [p.value for p in points] == history.get_column("value").to_list()
    assert [p.classification for p in points] == history.get_column("classification").to_list()
    assert points[0].available_at == datetime.combine(points[0].day, datetime.min.time(), tzinfo=UTC)


async def test_limit_returns_the_newest_days(replay: Replay, history: pl.DataFrame) -> None:
    async with client(replay.url) as fng:
        points = await fng.fetch(limit=7)
        frame = await fng.fetch_frame(limit=7)
    assert [p.day for p in points] == history.get_column("day").head(7).to_list()
    assert frame.get_column("day").to_list() == sorted(p.day for p in points)
    assert frame.get_column("available_at").to_list() == [p.available_at for p in sorted(points, key=lambda p: p.day)]


async def test_clock_hides_days_not_yet_published(replay: Replay, history: pl.DataFrame) -> None:
    # 2018-04-14..16 are missing in the data: at 2018-04-15 the newest known day is the 13th.
    replay.clock.now = datetime(2018, 4, 15, 23, 59, tzinfo=UTC)
    async with client(replay.url) as fng:
        during_gap = await fng.fetch(limit=2)
        replay.clock.now = datetime(2020, 3, 15, 0, 0, tzinfo=UTC)
        everything = await fng.fetch(limit=0)
    assert [p.day for p in during_gap] == [date(2018, 4, 13), date(2018, 4, 12)]
    # At 00:00 the day's value is out; nothing later is.
    assert everything[0].day == date(2020, 3, 15)
    assert len(everything) == history.filter(pl.col("day") <= date(2020, 3, 15)).height


async def test_retries_after_429_and_503_then_succeeds(replay: Replay, history: pl.DataFrame) -> None:
    replay.faults.add(
        PlannedFault(429, '{"status":{"error_code":429}}', "application/json", headers={"retry-after": "0.25"}),
        PlannedFault(503, "<html><body>Service Unavailable</body></html>", "text/html"),
    )
    sleeps = SleepLog()
    async with client(replay.url, sleep=sleeps) as fng:
        points = await fng.fetch(limit=1)
    assert [p.day for p in points] == history.get_column("day").head(1).to_list()
    assert replay.faults.requests_seen == 3
    # Retry-After honoured for the 429; exponential back-off with jitter after the 503.
    assert sleeps.delays[0] == 0.25
    assert 0.01 <= sleeps.delays[1] <= 0.02


async def test_retries_after_a_timeout(replay: Replay) -> None:
    replay.faults.add(PlannedFault(200, "late", delay_seconds=1.5))
    async with client(replay.url, timeout_seconds=0.3) as fng:
        points = await fng.fetch(limit=2)
    assert len(points) == 2
    assert replay.faults.requests_seen == 2


async def test_gives_up_with_a_clear_error_after_the_last_retry(replay: Replay) -> None:
    replay.faults.add(*[PlannedFault(503, "upstream is down for maintenance")] * 3)
    sleeps = SleepLog()
    async with client(replay.url, max_retries=2, sleep=sleeps) as fng:
        with pytest.raises(FearGreedUnavailableError) as caught:
            await fng.fetch(limit=1)
    assert caught.value.status_code == 503
    assert "after 3 attempts" in str(caught.value)
    assert "upstream is down for maintenance" in str(caught.value)
    assert replay.faults.requests_seen == 3
    assert len(sleeps.delays) == 2


async def test_client_error_is_not_retried_and_html_body_is_reported(replay: Replay) -> None:
    replay.faults.add(PlannedFault(404, "<html><h1>404 Not Found</h1></html>", "text/html"))
    async with client(replay.url) as fng:
        with pytest.raises(FearGreedHTTPError) as caught:
            await fng.fetch(limit=1)
    assert caught.value.status_code == 404
    assert "404 Not Found" in str(caught.value)
    assert replay.faults.requests_seen == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<html>Cloudflare: checking your browser</html>", "not JSON"),
        ('["not", "an", "object"]', "not a JSON object"),
        ('{"name": "Fear and Greed Index", "data": "none"}', "no 'data' list"),
        ('{"data": [{"value": "forty", "value_classification": "Fear", "timestamp": "1551157200"}]}', "entry 0"),
        ('{"data": [{"value": "40", "timestamp": "1551157200"}]}', "entry 0"),
        ('{"data": [], "metadata": {"error": "Limit exceeded"}}', "Limit exceeded"),
    ],
)
async def test_malformed_success_bodies_raise_a_clear_error(replay: Replay, body: str, message: str) -> None:
    replay.faults.add(PlannedFault(200, body, "application/json"))
    async with client(replay.url) as fng:
        with pytest.raises(FearGreedResponseError, match=message):
            await fng.fetch(limit=1)
    assert replay.faults.requests_seen == 1


async def test_replay_reports_bad_parameters_like_the_api(replay: Replay) -> None:
    async with httpx.AsyncClient(base_url=replay.url) as http:
        body = (await http.get("/fng/", params={"limit": "many"})).json()
    assert body["data"] == []
    assert "limit" in body["metadata"]["error"]


async def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    sleeps = SleepLog()
    async with client(f"http://127.0.0.1:{closed_port}", max_retries=1, sleep=sleeps) as fng:
        with pytest.raises(FearGreedUnavailableError, match="connection failed"):
            await fng.fetch(limit=1)
    assert len(sleeps.delays) == 1


async def test_negative_limit_is_refused_before_any_request(replay: Replay) -> None:
    async with client(replay.url) as fng:
        with pytest.raises(ValueError, match="limit"):
            await fng.fetch(limit=-1)
    assert replay.faults.requests_seen == 0


async def test_client_from_settings_uses_the_configured_host(replay: Replay, history: pl.DataFrame) -> None:
    settings = Settings(_env_file=None, environment="test", social={"fear_greed_url": replay.url + "/"})
    async with FearGreedClient.from_settings(settings, max_retries=0) as fng:
        points = await fng.fetch(limit=1)
    assert fng.base_url == replay.url
    assert [p.day for p in points] == history.get_column("day").head(1).to_list()
