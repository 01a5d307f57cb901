"""The replay server over real HTTP: recorded bodies, history in CoinGecko's shapes, clock, faults, keys."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl
import pytest

from khalsi.sources.exports import BUNDLED_API_DIR, BUNDLED_DAILY_DIR, COINS_BY_ID, read_coingecko_export
from khalsi.sources.replay import (
    DAY_MS,
    Fault,
    FaultKind,
    KeyMode,
    ReplayClock,
    ReplayServer,
    bundled_replay_data,
    run_replay_server,
)

START = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)  # midday: the current day is "in progress"
START_MS = int(START.timestamp() * 1000)


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with run_replay_server(start=START) as running:
        yield running


@pytest.fixture
def replay(server: ReplayServer) -> Iterator[ReplayServer]:
    yield server
    server.faults.clear()
    server.requests.clear()
    server.clock.reset(start=START, speed=0.0)


@pytest.fixture
def http(replay: ReplayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replay.api_url, timeout=10) as client:
        yield client


def csv_rows(coin_id: str) -> pl.DataFrame:
    coin = COINS_BY_ID[coin_id]
    frame = read_coingecko_export(BUNDLED_DAILY_DIR / f"{coin.symbol}-usd-max.csv", coin)
    return frame.with_columns(ms=pl.col("timestamp").dt.epoch("ms"))


def test_recorded_endpoints_are_served_verbatim(http: httpx.Client) -> None:
    for path, name in [
        ("/ping", "Ping.json"),
        ("/search/trending", "GetTrendingSearches.json"),
        ("/global", "GetGlobalData.json"),
    ]:
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("application/json")
        assert response.content == (BUNDLED_API_DIR / name).read_bytes(), path


def test_coin_detail_is_the_recording_for_bitcoin_and_built_from_history_for_others(http: httpx.Client) -> None:
    recorded = json.loads((BUNDLED_API_DIR / "GetAssetDetails.json").read_bytes())
    bitcoin = http.get("/coins/bitcoin").json()
    assert bitcoin == recorded
    assert "community_data" not in http.get("/coins/bitcoin", params={"community_data": "false"}).json()

    solana = http.get("/coins/solana").json()
    rows = csv_rows("solana").filter(pl.col("ms") <= START_MS)
    assert solana["id"] == "solana"
    assert solana["market_data"]["current_price"]["usd"] == rows.get_column("price")[-1]
    assert set(solana["community_data"]) == set(recorded["community_data"]) | {"twitter_followers"}
    assert http.get("/coins/no-such-coin").json() == {"error": "coin not found"}
    assert http.get("/coins/no-such-coin").status_code == 404


def test_market_chart_max_is_the_csv_up_to_now_plus_a_live_point(http: httpx.Client) -> None:
    chart = http.get("/coins/ethereum/market_chart", params={"vs_currency": "usd", "days": "max"}).json()
    rows = csv_rows("ethereum").filter(pl.col("ms") <= START_MS)
    expected = [[ms, price] for ms, price in zip(rows["ms"], rows["price"], strict=True)]
    assert chart["prices"][:-1] == expected
    assert [point[0] for point in chart["total_volumes"][:-1]] == rows["ms"].to_list()
    # Like CoinGecko, the last point is "now", off the daily grid, carrying the day's latest values.
    assert chart["prices"][-1] == [START_MS, rows["price"][-1]]
    assert len(chart["prices"]) == len(chart["market_caps"]) == len(chart["total_volumes"])


def test_market_chart_days_window_and_no_live_point_at_midnight(http: httpx.Client, replay: ReplayServer) -> None:
    chart = http.get("/coins/bitcoin/market_chart", params={"vs_currency": "usd", "days": "3"}).json()
    days = [point[0] for point in chart["prices"]]
    assert days == [START_MS - 2 * DAY_MS - DAY_MS // 2 + offset * DAY_MS for offset in range(3)] + [START_MS]

    replay.clock.reset(start="2024-06-01")
    midnight = http.get("/coins/bitcoin/market_chart", params={"vs_currency": "usd", "days": "2"}).json()
    assert [point[0] % DAY_MS for point in midnight["prices"]] == [0, 0, 0]


def test_market_chart_range_honours_from_to_and_never_passes_now(http: httpx.Client) -> None:
    start_s = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp())
    end_s = int(datetime(2024, 5, 10, tzinfo=UTC).timestamp())
    chart = http.get(
        "/coins/solana/market_chart/range", params={"vs_currency": "usd", "from": start_s, "to": end_s}
    ).json()
    rows = csv_rows("solana").filter(pl.col("ms").is_between(start_s * 1000, end_s * 1000))
    assert chart["market_caps"] == [[m, c] for m, c in zip(rows["ms"], rows["market_cap"], strict=True)]

    future_end = int(datetime(2024, 12, 31, tzinfo=UTC).timestamp())
    future = http.get(
        "/coins/solana/market_chart/range", params={"vs_currency": "usd", "from": start_s, "to": future_end}
    ).json()
    assert max(point[0] for point in future["prices"]) == START_MS
    assert http.get("/coins/solana/market_chart/range", params={"vs_currency": "usd"}).status_code == 400


def test_only_usd_is_served(http: httpx.Client) -> None:
    for path, params in [
        ("/coins/markets", {"vs_currency": "eur"}),
        ("/simple/price", {"ids": "bitcoin", "vs_currencies": "usd,eur"}),
        ("/coins/bitcoin/market_chart", {"vs_currency": "eur", "days": "1"}),
    ]:
        response = http.get(path, params=params)
        assert response.status_code == 400, path
        assert "error" in response.json()


def test_markets_pages_partition_every_coin_ranked_by_market_cap(http: httpx.Client) -> None:
    pages = [
        http.get("/coins/markets", params={"vs_currency": "usd", "per_page": 4, "page": page}).json()
        for page in range(1, 7)
    ]
    assert [len(page) for page in pages] == [4, 4, 4, 4, 1, 0]
    rows = [row for page in pages for row in page]
    assert len({row["id"] for row in rows}) == len(rows) == 17
    caps = [row["market_cap"] for row in rows]
    assert caps == sorted(caps, reverse=True)
    assert [row["market_cap_rank"] for row in rows[:3]] == [1, 2, 3]

    btc = next(row for row in rows if row["id"] == "bitcoin")
    history = csv_rows("bitcoin").filter(pl.col("ms") <= START_MS)
    assert btc["current_price"] == history["price"][-1]
    assert btc["price_change_24h"] == pytest.approx(history["price"][-1] - history["price"][-2])
    assert btc["ath"] == history["price"].max()
    assert btc["last_updated"] == "2024-06-01T00:00:00.000Z"


def test_markets_ids_and_price_change_windows(http: httpx.Client) -> None:
    rows = http.get(
        "/coins/markets",
        params={"vs_currency": "usd", "ids": "solana,sui", "price_change_percentage": "1h,7d"},
    ).json()
    assert {row["id"] for row in rows} == {"solana", "sui"}
    history = csv_rows("sui").filter(pl.col("ms") <= START_MS)
    sui = next(row for row in rows if row["id"] == "sui")
    week_ago = history.filter(pl.col("ms") == history["ms"][-1] - 7 * DAY_MS)["price"][0]
    assert sui["price_change_percentage_7d_in_currency"] == pytest.approx(
        (history["price"][-1] - week_ago) / week_ago * 100
    )
    assert sui["price_change_percentage_1h_in_currency"] is None


def test_simple_price_matches_the_csv_and_leaves_out_unknown_ids(http: httpx.Client) -> None:
    body = http.get(
        "/simple/price",
        params={
            "ids": "bitcoin,no-such-coin",
            "vs_currencies": "usd",
            "include_market_cap": "true",
            "include_last_updated_at": "true",
        },
    ).json()
    history = csv_rows("bitcoin").filter(pl.col("ms") <= START_MS)
    assert body == {
        "bitcoin": {
            "usd": history["price"][-1],
            "usd_market_cap": history["market_cap"][-1],
            "last_updated_at": history["ms"][-1] // 1000,
        }
    }


def test_coins_list_has_the_recorded_shape(http: httpx.Client) -> None:
    recorded = json.loads((BUNDLED_API_DIR / "GetAssets.json").read_bytes())
    listed = http.get("/coins/list", params={"include_platform": "true"}).json()
    assert {entry["id"] for entry in listed} == set(COINS_BY_ID)
    assert all(set(entry) == set(recorded[0]) for entry in listed)


def test_clock_moves_at_speed_and_stays_frozen_at_zero() -> None:
    wall = [100.0]
    clock = ReplayClock("2024-01-01", speed=3600.0, wall=lambda: wall[0])
    assert clock.now() == datetime(2024, 1, 1, tzinfo=UTC)
    wall[0] += 2.0  # two wall seconds at 3600x are two replayed hours
    assert clock.now() == datetime(2024, 1, 1, 2, tzinfo=UTC)
    clock.reset(speed=0.0)
    wall[0] += 1000.0
    assert clock.now() == datetime(2024, 1, 1, 2, tzinfo=UTC)
    clock.reset(start="2024-03-05T06:00:00Z")
    assert clock.now() == datetime(2024, 3, 5, 6, tzinfo=UTC)
    with pytest.raises(ValueError, match="speed"):
        ReplayClock("2024-01-01", speed=-1)


def test_clock_hides_future_data_until_it_gets_there(http: httpx.Client, replay: ReplayServer) -> None:
    params = {"vs_currency": "usd", "days": "max", "interval": "daily"}
    before = http.get("/coins/bitcoin/market_chart", params=params).json()
    assert max(point[0] for point in before["prices"]) == START_MS
    assert http.get("/coins/sui/market_chart", params=params).status_code == 200

    # Moved back before Sui existed (over the admin endpoint): the coin and later rows vanish.
    with httpx.Client(base_url=replay.base_url) as admin:
        moved = admin.post("/_replay/clock", json={"start": "2023-01-01"}).json()
        assert moved["now"].startswith("2023-01-01")
    early = http.get("/coins/bitcoin/market_chart", params=params).json()
    assert max(point[0] for point in early["prices"]) == int(datetime(2023, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert http.get("/coins/sui/market_chart", params=params).json() == {"error": "coin not found"}
    assert "sui" not in {row["id"] for row in http.get("/coins/markets", params={"vs_currency": "usd"}).json()}


def test_clock_refuses_a_start_outside_the_history() -> None:
    data = bundled_replay_data()
    with pytest.raises(ValueError, match="outside the history"):
        data.clock("2030-01-01")
    assert data.clock().now() == datetime.fromtimestamp(data.last_ms / 1000, UTC)


def test_faults_are_served_in_order_then_normal_answers_resume(http: httpx.Client, replay: ReplayServer) -> None:
    replay.faults.inject(Fault(FaultKind.RATE_LIMIT_TEXT, retry_after="3"))
    replay.faults.inject(Fault(FaultKind.CLOUDFLARE_BLOCK))
    replay.faults.inject(Fault(FaultKind.MALFORMED_BODY))
    first = http.get("/ping")
    assert (first.status_code, first.text, first.headers["retry-after"]) == (
        429,
        "429 Too Many Requests Throttled",
        "3",
    )
    second = http.get("/ping")
    assert second.status_code == 403
    assert "Cloudflare" in second.text
    third = http.get("/ping")
    assert third.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        third.json()
    assert http.get("/ping").json() == {"gecko_says": "(V3) To the Moon!"}
    assert [entry.status for entry in replay.requests.entries("/ping")] == [429, 403, 200, 200]


def test_faults_can_target_a_path_and_be_set_over_http(http: httpx.Client, replay: ReplayServer) -> None:
    with httpx.Client(base_url=replay.base_url) as admin:
        queued = admin.post("/_replay/faults", json={"kind": "unavailable", "times": 2, "path_prefix": "/simple"})
        assert queued.json() == {"pending": 2}
        assert admin.post("/_replay/faults", json={"kind": "no-such-fault"}).status_code == 400
    assert http.get("/ping").status_code == 200  # not the targeted path
    params = {"ids": "bitcoin", "vs_currencies": "usd"}
    assert [http.get("/simple/price", params=params).status_code for _ in range(3)] == [503, 503, 200]
    assert replay.faults.pending() == 0


def test_hourly_interval_is_plan_restricted(http: httpx.Client) -> None:
    response = http.get("/coins/bitcoin/market_chart", params={"vs_currency": "usd", "days": "2", "interval": "hourly"})
    assert response.status_code == 401
    assert response.json()["status"]["error_code"] == 10005


def test_demo_key_mode_checks_keys() -> None:
    with (
        run_replay_server(key_mode=KeyMode.DEMO, api_key="demo-key") as demo,
        httpx.Client(base_url=demo.api_url) as http,
    ):
        assert http.get("/ping").json() == {"status": {"error_code": 10002, "error_message": "Missing API key"}}
        assert http.get("/ping", headers={"x-cg-demo-api-key": "wrong"}).status_code == 401
        assert http.get("/ping", headers={"x-cg-pro-api-key": "pro"}).json()["status"]["error_code"] == 10010
        assert http.get("/ping", headers={"x-cg-demo-api-key": "demo-key"}).status_code == 200
        assert http.get("/ping", params={"x_cg_demo_api_key": "demo-key"}).status_code == 200


def test_pro_key_mode_checks_keys() -> None:
    with (
        run_replay_server(key_mode=KeyMode.PRO, api_key="pro-key") as pro,
        httpx.Client(base_url=pro.api_url) as http,
    ):
        missing = http.get("/ping")
        assert missing.status_code == 401
        assert missing.json()["error"]["status"]["error_code"] == 10002
        assert http.get("/ping", headers={"x-cg-demo-api-key": "d"}).json()["status"]["error_code"] == 10011
        assert http.get("/ping", headers={"x-cg-pro-api-key": "pro-key"}).status_code == 200
    with pytest.raises(ValueError, match="api_key"), run_replay_server(key_mode=KeyMode.PRO):
        pass


def test_server_stops_and_frees_its_port() -> None:
    with run_replay_server(start=START - timedelta(days=1)) as running:
        url = running.api_url
        assert httpx.get(url + "/ping").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/ping")


def test_serve_replay_runs_as_a_long_lived_process() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "from khalsi.sources.replay import serve_replay; "
        f"serve_replay(port={port}, start='2024-01-01', speed=0, log_level='warning')"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/api/v3/simple/price",
                    params={"ids": "bitcoin", "vs_currencies": "usd", "include_last_updated_at": "true"},
                )
                break
            except httpx.ConnectError:
                assert process.poll() is None, "serve_replay exited"
                assert time.monotonic() < deadline, "serve_replay did not start"
                time.sleep(0.1)
        assert response.json()["bitcoin"]["last_updated_at"] == int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
    finally:
        process.terminate()
        process.wait(timeout=15)
