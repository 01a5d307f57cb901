"""Portfolios over HTTP against a real PostgreSQL: positions CRUD, exact valuation, ownership."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Context, Decimal, localcontext
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.portfolios import service
from api.portfolios.schemas import plain_decimal
from api.portfolios.valuation import percent
from khalsi.db.engine import create_sync_engine
from khalsi.db.models import Coin
from khalsi.settings import Settings
from tests.api_helpers import signed_up
from tests.factories import add_coin, add_prediction
from tests.portfolio_helpers import (
    PORTFOLIO,
    POSITIONS,
    add_position,
    add_price,
    hours_before,
    platform_now,
    portfolio,
    random_id,
    stored_positions,
)


@dataclass
class World:
    engine: sa.Engine
    now: datetime
    headers: dict[str, str]
    user_id: str


@pytest.fixture
def world(api_client: TestClient, api_settings: Settings) -> Iterator[World]:
    """Tracked coins (btc, eth, shib priced; sol tracked without any price) and a signed-up user."""
    engine = create_sync_engine(api_settings)
    now = platform_now(api_settings)
    add_coin(engine, "bitcoin", "btc", "Bitcoin")
    add_coin(engine, "ethereum", "eth", "Ethereum")
    add_coin(engine, "shiba-inu", "shib", "Shiba Inu")
    add_coin(engine, "solana", "sol", "Solana")
    add_price(engine, "bitcoin", "btc", 45000.0, hours_before(now, 26))
    add_price(engine, "bitcoin", "btc", 50000.0, hours_before(now, 2))
    # A row after the platform's "now" is not known yet: it must not price anything.
    add_price(engine, "bitcoin", "btc", 99999.0, now + timedelta(days=1))
    add_price(engine, "ethereum", "eth", 2500.0, hours_before(now, 1))
    add_price(engine, "shiba-inu", "shib", 0.00001234, hours_before(now, 3))
    user, headers = signed_up(api_client)
    yield World(engine, now, headers, user["id"])
    engine.dispose()


def _totals(body: dict[str, Any]) -> dict[str, Any]:
    totals: dict[str, Any] = body["totals"]
    return totals


# --- CRUD -----------------------------------------------------------------------------------


def test_add_read_update_delete_a_position(api_client: TestClient, world: World) -> None:
    entry = (world.now - timedelta(days=30)).isoformat()
    created = add_position(api_client, world.headers, symbol="BTC", quantity="0.5", avg_price="30000", entry_date=entry)
    assert created["coin_id"] == "bitcoin"
    assert created["symbol"] == "btc"
    assert created["name"] == "Bitcoin"
    assert (created["quantity"], created["avg_price"], created["cost_basis"]) == ("0.5", "30000", "15000")
    assert (created["price"], created["market_value"], created["unrealised_pnl"]) == ("50000", "25000", "10000")
    assert created["unrealised_pnl_pct"] == "66.6667"
    assert created["price_status"] == "fresh"
    assert datetime.fromisoformat(created["entry_date"]) == world.now - timedelta(days=30)

    position_url = f"{POSITIONS}/{created['id']}"
    read = api_client.get(position_url, headers=world.headers)
    assert read.status_code == 200
    assert read.json() == created

    patched = api_client.patch(position_url, json={"quantity": "2", "avg_price": "40000.5"}, headers=world.headers)
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["quantity"], body["avg_price"], body["cost_basis"]) == ("2", "40000.5", "80001")
    assert body["market_value"] == "100000"
    assert body["unrealised_pnl"] == "19999"
    assert body["entry_date"] == created["entry_date"]  # not sent, not changed
    [stored] = stored_positions(world.engine)
    assert stored[:4] == (world.user_id, "btc", "2.000000000000000000", "40000.500000000000000000")

    deleted = api_client.delete(position_url, headers=world.headers)
    assert deleted.status_code == 204
    assert api_client.get(position_url, headers=world.headers).status_code == 404
    assert api_client.delete(position_url, headers=world.headers).status_code == 404
    assert stored_positions(world.engine) == []


def test_created_position_has_a_location_and_defaults_its_entry_date_to_the_platform_clock(
    api_client: TestClient, world: World
) -> None:
    response = api_client.post(
        POSITIONS, json={"coin_id": "Ethereum", "quantity": 1, "avg_price": 2000}, headers=world.headers
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"{POSITIONS}/{created['id']}"
    assert api_client.get(response.headers["location"], headers=world.headers).status_code == 200
    assert created["coin_id"] == "ethereum"
    assert datetime.fromisoformat(created["entry_date"]) == world.now


def test_a_second_buy_is_a_separate_lot_and_the_holding_averages_by_weight(
    api_client: TestClient, world: World
) -> None:
    """Hand-checked: BTC 0.5 @ 30,000 and 1.5 @ 40,000, ETH 10 @ 2,000; prices BTC 50,000, ETH 2,500."""
    first = add_position(
        api_client, world.headers, symbol="btc", quantity="0.5", avg_price="30000", entry_date="2024-03-01"
    )
    second = add_position(
        api_client, world.headers, coin_id="bitcoin", quantity="1.5", avg_price="40000", entry_date="2024-06-01"
    )
    eth = add_position(api_client, world.headers, symbol="eth", quantity="10", avg_price="2000")
    assert first["id"] != second["id"]
    assert len(stored_positions(world.engine)) == 3

    body = portfolio(api_client, world.headers)
    by_id = {p["id"]: p for p in body["positions"]}
    assert [by_id[first["id"]][k] for k in ("cost_basis", "market_value", "unrealised_pnl", "allocation_pct")] == [
        "15000",
        "25000",
        "10000",
        "20",  # 25,000 of 125,000
    ]
    assert [by_id[second["id"]][k] for k in ("cost_basis", "market_value", "unrealised_pnl", "allocation_pct")] == [
        "60000",
        "75000",
        "15000",
        "60",
    ]
    assert by_id[eth["id"]]["allocation_pct"] == "20"

    btc, ether = body["holdings"]  # the largest holding first
    assert btc["coin_id"] == "bitcoin"
    assert btc["position_ids"] == [first["id"], second["id"]]
    assert (btc["quantity"], btc["cost_basis"], btc["avg_price"]) == ("2", "75000", "37500")
    assert (btc["market_value"], btc["unrealised_pnl"], btc["unrealised_pnl_pct"]) == ("100000", "25000", "33.3333")
    assert btc["allocation_pct"] == "80"
    assert btc["price"] == "50000"
    assert datetime.fromisoformat(btc["price_at"]) == hours_before(world.now, 2)  # the latest, not the future row
    assert btc["price_age_hours"] == 2.0
    assert (ether["market_value"], ether["unrealised_pnl_pct"], ether["allocation_pct"]) == ("25000", "25", "20")

    totals = _totals(body)
    assert (totals["cost_basis"], totals["market_value"], totals["unrealised_pnl"]) == ("95000", "125000", "30000")
    assert totals["unrealised_pnl_pct"] == "31.5789"  # 30,000 / 95,000 = 31.57894...
    assert (totals["positions"], totals["priced_positions"], totals["unpriced_positions"]) == (3, 3, 0)
    assert totals["complete"] is True
    assert datetime.fromisoformat(body["as_of"]) == world.now
    assert body["currency"] == "usd"


def test_money_maths_is_exact_decimal_and_serialised_as_plain_strings(api_client: TestClient, world: World) -> None:
    add_coin(world.engine, "tenth", "tnth")
    add_price(world.engine, "tenth", "tnth", 0.3, hours_before(world.now, 1))
    # JSON numbers 0.1 and 0.2 (not strings): read through their decimal form, never as binary floats.
    response = api_client.post(
        POSITIONS,
        content='{"symbol": "tnth", "quantity": 0.1, "avg_price": 0.1}',
        headers={**world.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    add_position(api_client, world.headers, symbol="tnth", quantity="0.2", avg_price="0.1")
    big_quantity = "12345678901234567890.123456789012345678"  # 38 digits: no float holds it
    tiny_price = "0.000000012345678901"
    shib = add_position(api_client, world.headers, symbol="shib", quantity=big_quantity, avg_price=tiny_price)

    assert shib["quantity"] == big_quantity
    assert shib["avg_price"] == tiny_price
    # Exact products (48 and 42 significant digits; a float keeps ~16, Decimal's default context 28).
    with localcontext(Context(prec=100)):
        assert Decimal(big_quantity) * Decimal(tiny_price) == Decimal(shib["cost_basis"])
    assert shib["cost_basis"] == "152415787529.492467652949246765294924665403139878"
    assert shib["price"] == "0.00001234"  # no exponent, the decimal CoinGecko sent
    assert shib["market_value"] == "152345677641234.56776412345677641234566652"
    [stored_shib] = [row for row in stored_positions(world.engine) if row[1] == "shib"]
    assert stored_shib[2:4] == ("12345678901234567890.123456789012345678", "0.000000012345678901")

    holding = next(h for h in portfolio(api_client, world.headers)["holdings"] if h["symbol"] == "tnth")
    assert (holding["quantity"], holding["cost_basis"], holding["avg_price"]) == ("0.3", "0.03", "0.1")
    assert (holding["market_value"], holding["unrealised_pnl"], holding["unrealised_pnl_pct"]) == (
        "0.09",
        "0.06",
        "200",
    )


# --- Prices: stale, missing, untracked -------------------------------------------------------


def test_a_stale_price_is_flagged_but_still_values_the_position(
    api_client: TestClient, api_settings: Settings, world: World
) -> None:
    limit = api_settings.serving.max_feature_age_hours
    add_coin(world.engine, "oldcoin", "old")
    add_price(world.engine, "oldcoin", "old", 4.0, hours_before(world.now, limit + 24))
    created = add_position(api_client, world.headers, symbol="old", quantity="3", avg_price="2")
    assert created["price_status"] == "stale"
    assert f"{limit + 24:g} h old" in created["price_note"]
    assert (created["market_value"], created["unrealised_pnl"], created["unrealised_pnl_pct"]) == ("12", "6", "100")

    body = portfolio(api_client, world.headers)
    assert body["max_price_age_hours"] == limit
    assert body["positions"][0]["price_status"] == "stale"
    totals = _totals(body)
    assert (totals["stale_positions"], totals["priced_positions"], totals["complete"]) == (1, 1, True)
    assert totals["market_value"] == "12"


def test_positions_without_a_price_are_listed_with_nulls_and_a_reason(api_client: TestClient, world: World) -> None:
    sol = add_position(api_client, world.headers, symbol="sol", quantity="4", avg_price="25")
    eth = add_position(api_client, world.headers, symbol="eth", quantity="2", avg_price="2000")
    for field in ("price", "price_at", "price_age_hours", "market_value", "unrealised_pnl", "unrealised_pnl_pct"):
        assert sol[field] is None, field
    assert sol["price_status"] == "no_price"
    assert "solana" in sol["price_note"]
    assert sol["cost_basis"] == "100"

    body = portfolio(api_client, world.headers)
    assert {p["id"] for p in body["positions"]} == {sol["id"], eth["id"]}  # never dropped
    unpriced = next(p for p in body["positions"] if p["id"] == sol["id"])
    assert unpriced["allocation_pct"] is None
    assert next(p for p in body["positions"] if p["id"] == eth["id"])["allocation_pct"] == "100"
    assert body["holdings"][-1]["coin_id"] == "solana"  # unpriced holdings come last
    totals = _totals(body)
    assert (totals["cost_basis"], totals["priced_cost_basis"], totals["market_value"]) == ("4100", "4000", "5000")
    assert (totals["unrealised_pnl"], totals["unrealised_pnl_pct"]) == ("1000", "25")
    assert (totals["unpriced_positions"], totals["complete"]) == (1, False)


def test_a_symbol_no_longer_tracked_or_now_ambiguous_is_reported_not_guessed(
    api_client: TestClient, world: World
) -> None:
    add_coin(world.engine, "gone", "gon")
    gone = add_position(api_client, world.headers, symbol="gon", quantity="1", avg_price="1")
    eth = add_position(api_client, world.headers, symbol="eth", quantity="1", avg_price="1000")
    with world.engine.begin() as connection:
        connection.execute(sa.delete(Coin).where(Coin.coin_id == "gone"))
    # A second tracked coin takes the symbol "eth": the stored symbol no longer names one coin.
    add_coin(world.engine, "ethereum-pow-iou", "ETH", "EthereumPoW IOU")

    body = portfolio(api_client, world.headers)
    by_id = {p["id"]: p for p in body["positions"]}
    assert by_id[gone["id"]]["price_status"] == "coin_not_tracked"
    assert by_id[gone["id"]]["coin_id"] is None
    assert by_id[eth["id"]]["price_status"] == "ambiguous_symbol"
    assert "ethereum, ethereum-pow-iou" in by_id[eth["id"]]["price_note"]
    assert by_id[eth["id"]]["market_value"] is None
    assert _totals(body)["unpriced_positions"] == 2
    assert _totals(body)["market_value"] == "0"


# --- Predictions ------------------------------------------------------------------------------


def test_holdings_carry_the_latest_prediction_per_horizon_with_model_and_expiry(
    api_client: TestClient, world: World
) -> None:
    now = world.now
    day = timedelta(days=1)
    common = {"coin_id": "bitcoin", "symbol": "btc"}
    add_prediction(world.engine, **common, timeframe="1d", feature_timestamp=now - 2 * day, model_version="3",
                   probability_up=0.51, created_at=now - 2 * day, expires_at=now - day)  # fmt: skip
    add_prediction(world.engine, **common, timeframe="1d", feature_timestamp=now - day, model_version="3",
                   probability_up=0.55, created_at=now - day, expires_at=now + timedelta(hours=1))  # fmt: skip
    # The same point re-scored by a new champion: the row written last wins.
    add_prediction(world.engine, **common, timeframe="1d", feature_timestamp=now - day, model_version="4",
                   probability_up=0.6, created_at=now - 0.8 * day, expires_at=now + timedelta(hours=1))  # fmt: skip
    add_prediction(world.engine, **common, timeframe="1d", feature_timestamp=now + day, model_version="4",
                   probability_up=0.9, created_at=now, expires_at=now + 2 * day)  # fmt: skip
    add_prediction(world.engine, **common, timeframe="7d", feature_timestamp=now - 8 * day, model_version="2",
                   probability_up=0.4, created_at=now - 8 * day, expires_at=now - 7 * day)  # fmt: skip
    add_prediction(world.engine, **common, timeframe="30d", feature_timestamp=now - day, model_version="1",
                   probability_up=0.7, created_at=now - day, expires_at=now + day)  # fmt: skip
    add_position(api_client, world.headers, symbol="btc", quantity="1", avg_price="40000")
    add_position(api_client, world.headers, symbol="eth", quantity="1", avg_price="2000")

    btc, eth = portfolio(api_client, world.headers)["holdings"]
    assert set(btc["predictions"]) == {"1d", "7d"}  # the served horizons only
    one_day = btc["predictions"]["1d"]
    assert (one_day["model_version"], one_day["probability_up"], one_day["expired"]) == ("4", 0.6, False)
    assert one_day["probability_down"] == 0.4
    assert one_day["model_name"] == "khalsi-direction-1d"
    assert datetime.fromisoformat(one_day["feature_timestamp"]) == now - day
    assert datetime.fromisoformat(one_day["expires_at"]) == now + timedelta(hours=1)
    seven_day = btc["predictions"]["7d"]
    assert (seven_day["model_version"], seven_day["expired"]) == ("2", True)  # old, shown and flagged
    assert eth["predictions"] == {}

    without = portfolio(api_client, world.headers, predictions="false")
    assert all(holding["predictions"] is None for holding in without["holdings"])


# --- Bad input ----------------------------------------------------------------------------------

GOOD = {"symbol": "btc", "quantity": "1", "avg_price": "100"}
DROP = "<leave the field out>"


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"quantity": "-1"}, "greater than 0"),
        ({"quantity": "0"}, "greater than 0"),
        ({"quantity": 0}, "greater than 0"),
        ({"quantity": "NaN"}, "finite number"),
        ({"quantity": "-Infinity"}, "finite number"),
        ({"quantity": "nan"}, "finite number"),
        ({"quantity": "1,5"}, "valid decimal"),
        ({"quantity": "one"}, "valid decimal"),
        ({"quantity": True}, "Decimal input"),
        ({"quantity": "1e400"}, "digits"),
        ({"quantity": "0.0000000000000000001"}, "18 decimal places"),
        ({"quantity": "123456789012345678901"}, "20 digits before the decimal point"),
        ({"avg_price": "0"}, "greater than 0"),
        ({"avg_price": "-30000"}, "greater than 0"),
        ({"avg_price": "1000000001"}, "less than or equal to 1000000000"),
        ({"avg_price": None}, "Decimal input"),
        ({"avg_price": DROP}, "Field required"),
        ({"symbol": "XYZ"}, "tracked symbols: btc, eth, shib, sol"),
        ({"symbol": DROP, "coin_id": "dogecoin"}, "'dogecoin' is not a tracked coin"),
        ({"symbol": ""}, "at least 1 character"),
        ({"symbol": "b\u0000tc"}, "pattern"),
        ({"symbol": "x" * 21}, "at most 20 characters"),
        ({"coin_id": "bitcoin"}, "exactly one of 'symbol' or 'coin_id'"),
        ({"symbol": DROP}, "exactly one of 'symbol' or 'coin_id'"),
        ({"user_id": "00000000-0000-0000-0000-000000000000"}, "Extra inputs"),
        ({"entry_date": "2008-12-31T00:00:00Z"}, "2009-01-03"),
        ({"entry_date": "yesterday"}, "datetime"),
    ],
)
def test_bad_positions_get_a_clear_422_and_store_nothing(
    api_client: TestClient, world: World, changes: dict[str, Any], fragment: str
) -> None:
    body = {key: value for key, value in {**GOOD, **changes}.items() if value is not DROP}
    response = api_client.post(POSITIONS, json=body, headers=world.headers)
    assert response.status_code == 422, response.text
    assert fragment in response.text
    assert stored_positions(world.engine) == []


def test_an_unknown_coin_names_the_field_and_lists_the_tracked_symbols(api_client: TestClient, world: World) -> None:
    response = api_client.post(POSITIONS, json={**GOOD, "symbol": "PEPE"}, headers=world.headers)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "symbol"]
    assert error["type"] == "unknown_coin"
    assert error["ctx"]["tracked_symbols"] == ["btc", "eth", "shib", "sol"]


def test_json_nan_and_a_future_entry_date_are_refused(api_client: TestClient, world: World) -> None:
    raw = api_client.post(
        POSITIONS,
        content='{"symbol": "btc", "quantity": NaN, "avg_price": 1}',
        headers={**world.headers, "Content-Type": "application/json"},
    )
    assert raw.status_code == 422
    assert "finite number" in raw.text
    created = add_position(api_client, world.headers, **GOOD)
    raw_patch = api_client.patch(
        f"{POSITIONS}/{created['id']}",
        content='{"avg_price": -Infinity}',
        headers={**world.headers, "Content-Type": "application/json"},
    )
    assert raw_patch.status_code == 422
    assert "finite number" in raw_patch.text
    api_client.delete(f"{POSITIONS}/{created['id']}", headers=world.headers)

    tomorrow = (world.now + timedelta(days=1)).isoformat()
    future = api_client.post(POSITIONS, json={**GOOD, "entry_date": tomorrow}, headers=world.headers)
    assert future.status_code == 422
    [error] = future.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", "entry_date"], "entry_date_in_future")
    assert stored_positions(world.engine) == []


def test_a_symbol_shared_by_two_tracked_coins_is_refused(api_client: TestClient, world: World) -> None:
    add_coin(world.engine, "usd-coin", "usdc", "USDC")
    add_coin(world.engine, "usd-coin-bridged", "USDC", "Bridged USDC")
    for body in ({**GOOD, "symbol": "usdc"}, {"coin_id": "usd-coin", "quantity": "1", "avg_price": "1"}):
        response = api_client.post(POSITIONS, json=body, headers=world.headers)
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["type"] == "ambiguous_symbol"
        assert error["ctx"]["coin_ids"] == ["usd-coin", "usd-coin-bridged"]
    assert stored_positions(world.engine) == []


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({}, "at least one of"),
        ({"quantity": None}, "quantity cannot be null"),
        ({"entry_date": None, "avg_price": None}, "avg_price, entry_date cannot be null"),
        ({"quantity": "-2"}, "greater than 0"),
        ({"avg_price": "Infinity"}, "finite number"),
        ({"symbol": "eth"}, "Extra inputs"),
        ({"quantity": "2", "user_id": "00000000-0000-0000-0000-000000000000"}, "Extra inputs"),
        ({"entry_date": "2100-01-01T00:00:00Z"}, "after the platform's current time"),
    ],
)
def test_bad_patches_get_a_422_and_change_nothing(
    api_client: TestClient, world: World, patch: dict[str, Any], fragment: str
) -> None:
    created = add_position(api_client, world.headers, **GOOD)
    before = stored_positions(world.engine)
    response = api_client.patch(f"{POSITIONS}/{created['id']}", json=patch, headers=world.headers)
    assert response.status_code == 422, response.text
    assert fragment in response.text
    assert stored_positions(world.engine) == before


def test_a_malformed_position_id_is_a_422(api_client: TestClient, world: World) -> None:
    response = api_client.get(f"{POSITIONS}/not-a-uuid", headers=world.headers)
    assert response.status_code == 422
    assert "position_id" in response.text


def test_the_position_limit_is_a_conflict_and_stores_nothing_more(
    api_client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_POSITIONS_PER_USER", 2)
    add_position(api_client, world.headers, **GOOD)
    add_position(api_client, world.headers, **GOOD)
    third = api_client.post(POSITIONS, json=GOOD, headers=world.headers)
    assert third.status_code == 409
    assert "at most 2 positions" in third.json()["detail"]
    assert len(stored_positions(world.engine)) == 2


# --- Ownership and authentication ---------------------------------------------------------------


def test_another_user_cannot_read_patch_or_delete_a_position_and_totals_stay_apart(
    api_client: TestClient, world: World
) -> None:
    mine = add_position(api_client, world.headers, symbol="btc", quantity="1", avg_price="40000")
    my_totals = _totals(portfolio(api_client, world.headers))
    _, intruder = signed_up(api_client)
    stored_before = stored_positions(world.engine)

    url = f"{POSITIONS}/{mine['id']}"
    unknown = f"{POSITIONS}/{random_id()}"
    for target in (url, unknown):  # someone else's id answers exactly like an id that does not exist
        assert api_client.get(target, headers=intruder).json() == {"detail": "position not found"}
        assert api_client.get(target, headers=intruder).status_code == 404
        assert api_client.patch(target, json={"quantity": "99"}, headers=intruder).status_code == 404
        assert api_client.delete(target, headers=intruder).status_code == 404
    assert stored_positions(world.engine) == stored_before

    theirs = portfolio(api_client, intruder)
    assert theirs["positions"] == []
    assert theirs["holdings"] == []
    assert _totals(theirs)["market_value"] == "0"
    assert _totals(theirs)["unrealised_pnl_pct"] is None

    add_position(api_client, intruder, symbol="btc", quantity="5", avg_price="1")
    assert _totals(portfolio(api_client, world.headers)) == my_totals
    assert [p["id"] for p in portfolio(api_client, world.headers)["positions"]] == [mine["id"]]
    assert _totals(portfolio(api_client, intruder))["market_value"] == "250000"


def test_every_route_needs_a_valid_access_token(api_client: TestClient, world: World) -> None:
    created = add_position(api_client, world.headers, **GOOD)
    url = f"{POSITIONS}/{created['id']}"
    calls = [
        ("GET", PORTFOLIO, None),
        ("POST", POSITIONS, GOOD),
        ("GET", url, None),
        ("PATCH", url, {"quantity": "3"}),
        ("DELETE", url, None),
    ]
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        for method, target, body in calls:
            response = api_client.request(method, target, json=body, headers=headers)
            assert response.status_code == 401, (method, target, headers)
            assert response.headers["www-authenticate"] == "Bearer"
    assert len(stored_positions(world.engine)) == 1


# --- Pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1E+2"), "100"),
        (Decimal("1E-8"), "0.00000001"),
        (Decimal("12.5000"), "12.5"),
        (Decimal("-0.000"), "0"),
        (Decimal("-3.10"), "-3.1"),
        (Decimal("12345678901234567890.123456789012345678"), "12345678901234567890.123456789012345678"),
    ],
)
def test_decimals_serialise_as_plain_strings_without_rounding(value: Decimal, text: str) -> None:
    assert plain_decimal(value) == text


def test_percentages_round_half_even_to_four_decimals() -> None:
    assert percent(Decimal(1), Decimal(3)) == Decimal("33.3333")
    assert percent(Decimal("0.0000125"), Decimal(1)) == Decimal("0.0012")  # half to even
    assert percent(Decimal("0.0000135"), Decimal(1)) == Decimal("0.0014")
    assert percent(Decimal(1), Decimal(0)) is None
