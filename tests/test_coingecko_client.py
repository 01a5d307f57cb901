"""The CoinGecko client over real HTTP against the replay server: parsing, paging, retries, errors, budget."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import SecretStr

from khalsi.settings import CoinGeckoPlan, CoinGeckoSettings, Settings
from khalsi.sources.coingecko import (
    AuthError,
    BadRequestError,
    CoinGeckoClient,
    InvalidResponseError,
    MarketChart,
    NotFoundError,
    PlanRestrictedError,
    RateLimitedError,
    RawResponse,
    UpstreamUnavailableError,
    WrongKeyTypeError,
    error_from_response,
    market_chart_to_frame,
    parse_error_body,
    retry_after_seconds,
)
from khalsi.sources.exports import BUNDLED_API_DIR, BUNDLED_DAILY_DIR, COINS_BY_ID, read_coingecko_export
from khalsi.sources.ratelimit import (
    RedisFixedWindowLimiter,
    SlidingWindowLimiter,
    limiter_for,
    reset_limiters,
)
from khalsi.sources.replay import Fault, FaultKind, KeyMode, ReplayServer, run_replay_server

START = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
MAX_RETRIES = 3


def fast_settings(**overrides: object) -> CoinGeckoSettings:
    """Tiny back-off so retry tests take milliseconds, a budget that never gets in the way."""
    values: dict[str, object] = {
        "calls_per_minute": 100_000,
        "max_retries": MAX_RETRIES,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 5.0,
        "timeout_seconds": 5.0,
    }
    values.update(overrides)
    return CoinGeckoSettings.model_validate(values)


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with run_replay_server(start=START) as running:
        yield running


@pytest.fixture
def replay(server: ReplayServer) -> Iterator[ReplayServer]:
    server.faults.clear()
    server.requests.clear()
    yield server
    server.faults.clear()
    server.requests.clear()


@pytest.fixture
async def client(replay: ReplayServer) -> AsyncIterator[CoinGeckoClient]:
    async with CoinGeckoClient(fast_settings(), base_url=replay.api_url) as cg:
        yield cg


def export_rows(coin_id: str) -> pl.DataFrame:
    coin = COINS_BY_ID[coin_id]
    return read_coingecko_export(BUNDLED_DAILY_DIR / f"{coin.symbol}-usd-max.csv", coin)


# --- every endpoint parses --------------------------------------------------------------------------


async def test_every_endpoint_parses(client: CoinGeckoClient) -> None:
    assert (await client.ping()).gecko_says == "(V3) To the Moon!"

    trending = await client.trending()
    assert len(trending.coins) == 15
    assert trending.coins[0].item.id == "qubic-network"
    assert trending.categories[0].name == "ChainGPT Launchpad"

    bitcoin = await client.coin("bitcoin")
    assert bitcoin.community_data is not None
    assert bitcoin.community_data.reddit_subscribers == 0
    assert bitcoin.market_data is not None
    assert bitcoin.market_data.current_price["usd"] == 69840

    listed = await client.coins_list()
    assert {entry.id for entry in listed} == set(COINS_BY_ID)
    assert (await client.global_market()).data.active_cryptocurrencies == 17111

    prices = await client.simple_price(
        ["bitcoin", "ethereum"],
        include_market_cap=True,
        include_24hr_vol=True,
        include_24hr_change=True,
        include_last_updated_at=True,
    )
    eth = export_rows("ethereum").filter(pl.col("timestamp") <= START)
    assert prices["ethereum"]["usd"] == eth["price"][-1]
    assert prices["ethereum"]["usd_24h_vol"] == eth["total_volume"][-1]
    assert prices["ethereum"]["last_updated_at"] == eth["timestamp"][-1].timestamp()
    assert set(prices["bitcoin"]) == {"usd", "usd_market_cap", "usd_24h_vol", "usd_24h_change", "last_updated_at"}


async def test_raw_bodies_are_kept(replay: ReplayServer) -> None:
    seen: list[RawResponse] = []
    async with CoinGeckoClient(fast_settings(), base_url=replay.api_url, on_raw=seen.append) as client:
        await client.ping()
        assert client.last_raw is not None
        assert client.last_raw.body == (BUNDLED_API_DIR / "Ping.json").read_bytes()
        await client.markets(per_page=10)
    assert [raw.params.get("page") for raw in seen] == [None, "1", "2"]
    assert all(raw.status_code == 200 and raw.body for raw in seen)


# --- paging -----------------------------------------------------------------------------------------


async def test_markets_follows_pages_until_a_short_page(client: CoinGeckoClient, replay: ReplayServer) -> None:
    rows = await client.markets(vs_currency="usd", per_page=5)
    assert len(rows) == len({row.id for row in rows}) == 17
    assert [entry.query.split("page=")[-1] for entry in replay.requests.entries("/coins/markets")] == [
        "1",
        "2",
        "3",
        "4",
    ]
    caps = [row.market_cap or 0.0 for row in rows]
    assert caps == sorted(caps, reverse=True)
    assert rows[0].id == "bitcoin"
    assert rows[0].last_updated == datetime(2024, 6, 1, tzinfo=UTC)


async def test_markets_max_pages_and_ids(client: CoinGeckoClient, replay: ReplayServer) -> None:
    assert len(await client.markets(per_page=5, max_pages=2)) == 10
    assert len(replay.requests.entries("/coins/markets")) == 2
    some = await client.markets(ids=["sui", "aptos"], price_change_percentage=["24h"])
    assert {row.id for row in some} == {"sui", "aptos"}
    assert all(row.model_extra and "price_change_percentage_24h_in_currency" in row.model_extra for row in some)
    with pytest.raises(ValueError, match="per_page"):
        await client.markets(per_page=251)


# --- market charts as export rows -------------------------------------------------------------------


async def test_market_chart_equals_the_bundled_csv_rows(client: CoinGeckoClient) -> None:
    chart = await client.market_chart("ethereum", days="max", interval="daily")
    assert chart.prices[-1][0] == int(START.timestamp() * 1000)  # the live "now" point
    frame = market_chart_to_frame(chart, COINS_BY_ID["ethereum"])
    expected = export_rows("ethereum").filter(pl.col("timestamp") <= START)
    assert_frame_equal(frame, expected)

    live = market_chart_to_frame(chart, COINS_BY_ID["ethereum"], keep_live_point=True)
    assert live.height == expected.height + 1
    assert live["timestamp"][-1] == START


async def test_market_chart_range_equals_the_csv_window(client: CoinGeckoClient) -> None:
    start, end = datetime(2023, 12, 1, tzinfo=UTC), datetime(2024, 1, 31, tzinfo=UTC)
    chart = await client.market_chart_range("aptos", start=start, end=int(end.timestamp()))
    frame = market_chart_to_frame(chart, COINS_BY_ID["aptos"])
    expected = export_rows("aptos").filter(pl.col("timestamp").is_between(start, end))
    assert_frame_equal(frame, expected)
    with pytest.raises(ValueError, match="before start"):
        await client.market_chart_range("aptos", start=end, end=start)


def test_chart_frame_matches_arrays_of_different_lengths_on_timestamp() -> None:
    day = 86_400_000
    chart = MarketChart(
        prices=[(0, 1.0), (day, 2.0), (2 * day, 3.0), (2 * day + 5_000, 3.5)],
        market_caps=[(day, 20.0), (2 * day, 30.0)],
        total_volumes=[(0, 100.0), (0, 101.0), (2 * day, 300.0), (2 * day + 5_000, 350.0)],
    )
    frame = market_chart_to_frame(chart, COINS_BY_ID["bitcoin"])
    assert frame.schema == export_rows("bitcoin").schema
    assert frame.to_dicts() == [
        {
            "coin_id": "bitcoin",
            "symbol": "btc",
            "timestamp": datetime(1970, 1, 1 + i, tzinfo=UTC),
            "price": price,
            "market_cap": cap,
            "total_volume": volume,
        }
        for i, (price, cap, volume) in enumerate([(1.0, None, 101.0), (2.0, 20.0, None), (3.0, 30.0, 300.0)])
    ]
    # An hourly series has no daily grid: nothing is dropped.
    hourly = MarketChart(prices=[(3_600_123, 1.0), (7_200_456, 2.0)], market_caps=[], total_volumes=[])
    assert market_chart_to_frame(hourly, COINS_BY_ID["bitcoin"]).height == 2


# --- retries, back-off and Retry-After --------------------------------------------------------------


async def test_retries_succeed_after_rate_limits_and_outages(client: CoinGeckoClient, replay: ReplayServer) -> None:
    replay.faults.inject(Fault(FaultKind.RATE_LIMIT_JSON))
    replay.faults.inject(Fault(FaultKind.UNAVAILABLE))
    replay.faults.inject(Fault(FaultKind.SERVER_ERROR))
    assert (await client.ping()).gecko_says
    assert [entry.status for entry in replay.requests.entries("/ping")] == [429, 503, 500, 200]


@pytest.mark.parametrize(
    ("fault", "expected_wait"),
    [
        (Fault(FaultKind.RATE_LIMIT_JSON, retry_after="1"), 1.0),
        (Fault(FaultKind.RATE_LIMIT_TEXT, retry_after_ms="400"), 0.4),
        (Fault(FaultKind.UNAVAILABLE, retry_after="1"), 1.0),
    ],
)
async def test_retry_after_is_honoured(
    client: CoinGeckoClient, replay: ReplayServer, fault: Fault, expected_wait: float
) -> None:
    replay.faults.inject(fault)
    began = time.monotonic()
    await client.ping()
    # A behaviour check (the client waited as told), not a speed assertion.
    assert time.monotonic() - began >= expected_wait
    assert len(replay.requests.entries("/ping")) == 2


async def test_retry_after_is_capped_by_backoff_max(replay: ReplayServer) -> None:
    replay.faults.inject(Fault(FaultKind.RATE_LIMIT_JSON, retry_after="3600"))
    settings = fast_settings(backoff_max_seconds=0.05)
    async with CoinGeckoClient(settings, base_url=replay.api_url) as client:
        await client.ping()
    assert [entry.status for entry in replay.requests.entries("/ping")] == [429, 200]


async def test_gives_up_after_max_retries_with_the_right_error(client: CoinGeckoClient, replay: ReplayServer) -> None:
    replay.faults.inject(Fault(FaultKind.RATE_LIMIT_TEXT), times=MAX_RETRIES + 1)
    with pytest.raises(RateLimitedError) as limited:
        await client.ping()
    assert limited.value.status_code == 429
    assert "429 Too Many Requests Throttled" in str(limited.value)
    assert len(replay.requests.entries("/ping")) == MAX_RETRIES + 1

    replay.requests.clear()
    replay.faults.inject(Fault(FaultKind.UNAVAILABLE), times=MAX_RETRIES + 1)
    with pytest.raises(UpstreamUnavailableError) as unavailable:
        await client.ping()
    assert unavailable.value.status_code == 503
    assert len(replay.requests.entries("/ping")) == MAX_RETRIES + 1


async def test_a_cloudflare_block_is_an_upstream_error_with_code_1020(
    client: CoinGeckoClient, replay: ReplayServer
) -> None:
    replay.faults.inject(Fault(FaultKind.CLOUDFLARE_BLOCK), times=MAX_RETRIES + 1)
    with pytest.raises(UpstreamUnavailableError) as blocked:
        await client.ping()
    assert (blocked.value.status_code, blocked.value.error_code) == (403, 1020)
    assert "Access denied" in blocked.value.message


async def test_timeouts_are_retried_then_reported(replay: ReplayServer) -> None:
    settings = fast_settings(timeout_seconds=0.2, max_retries=1)
    # The abandoned slow requests finish on the server later; /global keeps them out of other counts.
    slow = Fault(FaultKind.SLOW, delay_seconds=1.0, path_prefix="/global")
    async with CoinGeckoClient(settings, base_url=replay.api_url) as client:
        replay.faults.inject(slow)
        assert (await client.global_market()).data.markets
        replay.faults.inject(slow, times=2)
        with pytest.raises(UpstreamUnavailableError, match="timed out after 2 attempt"):
            await client.global_market()


async def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with CoinGeckoClient(fast_settings(), base_url=f"http://127.0.0.1:{closed_port}/api/v3") as client:
        with pytest.raises(UpstreamUnavailableError, match="connection failed after 4 attempt"):
            await client.ping()


# --- errors that are not retried --------------------------------------------------------------------


async def test_invalid_200_bodies_are_clear_errors_and_not_retried(
    client: CoinGeckoClient, replay: ReplayServer
) -> None:
    replay.faults.inject(Fault(FaultKind.MALFORMED_BODY))
    with pytest.raises(InvalidResponseError, match="not JSON"):
        await client.market_chart("bitcoin", days=1)
    replay.faults.inject(Fault(FaultKind.WRONG_SHAPE))
    with pytest.raises(InvalidResponseError, match="documented shape"):
        await client.market_chart("bitcoin", days=1)
    replay.faults.inject(Fault(FaultKind.WRONG_SHAPE))
    with pytest.raises(InvalidResponseError):
        await client.markets()
    assert len(replay.requests.entries("/coins")) == 3


async def test_bad_requests_and_unknown_coins(client: CoinGeckoClient) -> None:
    with pytest.raises(BadRequestError, match="invalid vs_currency"):
        await client.markets(vs_currency="eur")
    with pytest.raises(NotFoundError, match="coin not found") as missing:
        await client.market_chart("no-such-coin", days=7)
    assert missing.value.status_code == 404
    with pytest.raises(PlanRestrictedError) as restricted:
        await client.market_chart("bitcoin", days=2, interval="hourly")  # type: ignore[arg-type]
    assert restricted.value.error_code == 10005


@pytest.fixture(scope="module")
def demo_server() -> Iterator[ReplayServer]:
    with run_replay_server(start=START, key_mode=KeyMode.DEMO, api_key="demo-key") as running:
        yield running


@pytest.fixture(scope="module")
def pro_server() -> Iterator[ReplayServer]:
    with run_replay_server(start=START, key_mode=KeyMode.PRO, api_key="pro-key") as running:
        yield running


async def test_keys_go_in_the_plans_header(demo_server: ReplayServer, pro_server: ReplayServer) -> None:
    demo = fast_settings(plan=CoinGeckoPlan.DEMO, api_key=SecretStr("demo-key"))
    async with CoinGeckoClient(demo, base_url=demo_server.api_url) as client:
        assert (await client.ping()).gecko_says
    pro = fast_settings(plan=CoinGeckoPlan.PRO, api_key=SecretStr("pro-key"))
    assert pro.base_url == "https://pro-api.coingecko.com/api/v3"
    async with CoinGeckoClient(pro, base_url=pro_server.api_url) as client:
        assert (await client.ping()).gecko_says


async def test_missing_wrong_and_mismatched_keys(demo_server: ReplayServer, pro_server: ReplayServer) -> None:
    async with CoinGeckoClient(fast_settings(), base_url=demo_server.api_url) as keyless:
        with pytest.raises(AuthError) as missing:
            await keyless.ping()
    assert (missing.value.status_code, missing.value.error_code) == (401, 10002)

    wrong = fast_settings(plan=CoinGeckoPlan.PRO, api_key=SecretStr("nope"))
    async with CoinGeckoClient(wrong, base_url=pro_server.api_url) as client:
        with pytest.raises(AuthError) as nested:  # the {"error":{"status":{...}}} shape
            await client.ping()
    assert nested.value.error_code == 10002
    assert not isinstance(nested.value, WrongKeyTypeError)

    pro_on_public = fast_settings(plan=CoinGeckoPlan.PRO, api_key=SecretStr("pro-key"))
    async with CoinGeckoClient(pro_on_public, base_url=demo_server.api_url) as client:
        with pytest.raises(WrongKeyTypeError) as mismatched:
            await client.ping()
    assert mismatched.value.error_code == 10010
    demo_on_pro = fast_settings(plan=CoinGeckoPlan.DEMO, api_key=SecretStr("demo-key"))
    async with CoinGeckoClient(demo_on_pro, base_url=pro_server.api_url) as client:
        with pytest.raises(WrongKeyTypeError) as mismatched:
            await client.ping()
    assert mismatched.value.error_code == 10011
    assert len(demo_server.requests.entries()) == 3  # auth errors are not retried


# --- error bodies and hints (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"status":{"error_code":429,"error_message":"You\'ve exceeded the Rate Limit."}}', (429, "You've")),
        (b'{"error":{"status":{"error_code":10002,"error_message":"API Key Missing"}}}', (10002, "API Key")),
        (b'{"error":"coin not found"}', (None, "coin not found")),
        (b"429 Too Many Requests Throttled", (None, "429 Too Many")),
        (b"<html><title>Access denied | x</title><b>Error code 1020</b></html>", (1020, "Access denied")),
        (b"\xff\xfe not utf-8", (None, "")),
    ],
)
def test_error_bodies_in_every_shape(body: bytes, expected: tuple[int | None, str]) -> None:
    code, message = parse_error_body(body)
    assert code == expected[0]
    assert message.startswith(expected[1])


def test_error_codes_map_to_exceptions() -> None:
    def error(status: int, code: int) -> Exception:
        return error_from_response(httpx.Response(status, json={"status": {"error_code": code, "error_message": "m"}}))

    assert isinstance(error(401, 10005), PlanRestrictedError)
    assert isinstance(error(401, 10010), WrongKeyTypeError)
    assert isinstance(error(401, 10011), WrongKeyTypeError)
    assert isinstance(error(401, 10002), AuthError)
    assert isinstance(error(429, 429), RateLimitedError)
    assert isinstance(error(502, 0), UpstreamUnavailableError)
    assert isinstance(error(408, 0), UpstreamUnavailableError)


def test_retry_after_forms() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds(httpx.Headers({"retry-after": "7"}), now=now) == 7.0
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "250", "retry-after": "7"}), now=now) == 0.25
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(httpx.Headers({"retry-after": date}), now=now) == 30.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "soon"}), now=now) is None
    assert retry_after_seconds(httpx.Headers({}), now=now) is None


# --- the shared rate budget -------------------------------------------------------------------------


def test_sliding_window_books_slots_a_period_apart() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(3, period_seconds=10.0, clock=lambda: now[0])
    assert [limiter.reserve() for _ in range(7)] == [0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 20.0]
    now[0] = 25.0  # slots at 0 and 10 have left the window; the one at 20 still counts
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 5.0]


async def test_the_budget_spaces_real_calls(replay: ReplayServer) -> None:
    limiter = SlidingWindowLimiter(2, period_seconds=0.5)
    async with CoinGeckoClient(fast_settings(), base_url=replay.api_url, limiter=limiter) as client:
        began = time.monotonic()
        for _ in range(5):
            await client.ping()
        elapsed = time.monotonic() - began
    # Five calls at two per half second need at least two full periods: a behaviour check.
    assert elapsed >= 1.0
    assert len(replay.requests.entries("/ping")) == 5


def test_limiter_for_shares_one_limiter_per_host_and_budget() -> None:
    reset_limiters()
    first = limiter_for("https://api.coingecko.com/api/v3", 30)
    assert limiter_for("https://API.coingecko.com/api/v3/ping", 30) is first
    assert limiter_for("https://pro-api.coingecko.com/api/v3", 30) is not first
    with pytest.raises(ValueError, match="absolute URL"):
        limiter_for("api.coingecko.com", 30)
    reset_limiters()


async def test_redis_budget_is_shared_between_limiters(redis_url: str) -> None:
    # Two limiters on one key stand for two processes. An hour-long window so no boundary passes.
    one = RedisFixedWindowLimiter(2, redis_url=redis_url, key="test:shared", period_seconds=3600)
    two = RedisFixedWindowLimiter(2, redis_url=redis_url, key="test:shared", period_seconds=3600)
    try:
        assert await one.try_acquire() == 0.0
        assert await two.try_acquire() == 0.0
        assert await one.try_acquire() > 0.0
        assert await two.try_acquire() > 0.0
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_budget_makes_callers_wait(redis_url: str) -> None:
    limiter = RedisFixedWindowLimiter(1, redis_url=redis_url, key="test:wait", period_seconds=0.3)
    try:
        began = time.monotonic()
        for _ in range(3):
            await limiter.acquire()
        # One call per window: the third lands two windows after the first, so >= one period later.
        assert time.monotonic() - began >= 0.3
    finally:
        await limiter.aclose()


async def test_client_from_settings_shares_its_budget_through_redis(
    replay: ReplayServer, redis_url: str, settings: Settings
) -> None:
    import redis

    configured = settings.model_copy(
        update={"redis": settings.redis.model_copy(update={"url": redis_url}), "coingecko": fast_settings()}
    )
    reset_limiters()
    client = CoinGeckoClient.from_settings(configured, base_url=replay.api_url)
    limiter = client.limiter
    assert isinstance(limiter, RedisFixedWindowLimiter)
    try:
        await client.ping()
        await client.ping()
    finally:
        await client.aclose()
        await limiter.aclose()
        reset_limiters()
    host = replay.base_url.removeprefix("http://")
    counter = redis.Redis.from_url(redis_url)
    try:
        # One key per minute window (two if the calls straddled a minute boundary).
        keys = counter.keys(f"khalsi:ratelimit:{host}:*")
        assert sum(int(counter.get(key) or 0) for key in keys) == 2
    finally:
        counter.close()
