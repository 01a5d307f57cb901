"""Market data over HTTP: tracked coins, history, trending and sentiment on real PostgreSQL and Redis.

The rows are written the way ingestion writes them (the tables of ``khalsi.db.models``), then read
through the API. The platform clock is the replay's default "now", 2025-01-01T00:00Z, frozen.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from api.main import create_app
from api.market.cache import CACHE_HEADER, KEY_PREFIX, TTL_SECONDS
from khalsi.db.engine import create_sync_engine, session_scope
from khalsi.db.models import Coin, FearGreed, MarketData, SocialDaily, TrendingToken
from khalsi.settings import RedisSettings, Settings
from tests.api_helpers import API

REPLAY_NOW = datetime(2025, 1, 1, tzinfo=UTC)
DECEMBER = [datetime(2024, 12, day, tzinfo=UTC) for day in range(1, 32)]


def at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def db(api_settings: Settings) -> Iterator[Engine]:
    engine = create_sync_engine(api_settings)
    yield engine
    engine.dispose()


def bitcoin_price(day: datetime) -> float:
    return 90_000.0 + 100.0 * day.day


def add_coin(
    engine: Engine, coin_id: str, symbol: str, days: list[datetime], *, price: float = 1.0, cap: float | None = None
) -> None:
    with session_scope(engine) as session:
        session.add(Coin(coin_id=coin_id, symbol=symbol, name=coin_id.replace("-", " ").title()))
        for index, day in enumerate(days):
            session.add(
                MarketData(
                    coin_id=coin_id,
                    symbol=symbol,
                    timestamp=day,
                    price=price + index,
                    volume_24h=1_000.0 * (index + 1),
                    market_cap=cap,
                    price_change_24h=None if index == 0 else 1.0,
                    source="coingecko",
                )
            )


@pytest.fixture
def market(db: Engine) -> Engine:
    """Bitcoin and Ethereum up to date, one coin stale, one never priced, a symbol shared by two coins."""
    with session_scope(db) as session:
        session.add(Coin(coin_id="bitcoin", symbol="btc", name="Bitcoin"))
        for index, day in enumerate(DECEMBER):
            session.add(
                MarketData(
                    coin_id="bitcoin",
                    symbol="btc",
                    timestamp=day,
                    price=bitcoin_price(day),
                    volume_24h=30e9 + index,
                    # CoinGecko had no cap for the first day: stored as NULL.
                    market_cap=None if index == 0 else 1.8e12 + index,
                    price_change_24h=None if index == 0 else 100.0 * 100.0 / bitcoin_price(DECEMBER[index - 1]),
                )
            )
    add_coin(db, "ethereum", "eth", DECEMBER[-12:], price=3_300.0, cap=4e11)
    # Its newest snapshot is 72 h before the clock: past the 48 h bound.
    add_coin(db, "fading-coin", "fad", DECEMBER[:28], price=0.5, cap=1e6)
    add_coin(db, "empty-coin", "emp", [])
    add_coin(db, "dup-one", "dup", [])
    add_coin(db, "dup-two", "dup", [])
    return db


# -- coins --------------------------------------------------------------------------------------


def test_coins_list_the_newest_snapshot_of_every_tracked_coin_with_a_stale_flag(
    api_client: TestClient, market: Engine
) -> None:
    response = api_client.get(f"{API}/market/coins")
    assert response.status_code == 200, response.text
    body = response.json()
    assert at(body["as_of"]) == REPLAY_NOW
    assert body["stale_after_hours"] == 48
    items = body["items"]
    # Largest market cap first; coins without one last, by id.
    assert [c["coin_id"] for c in items] == ["bitcoin", "ethereum", "fading-coin", "dup-one", "dup-two", "empty-coin"]
    bitcoin = items[0]
    newest = DECEMBER[-1]
    assert bitcoin["symbol"] == "btc"
    assert bitcoin["name"] == "Bitcoin"
    assert bitcoin["price"] == bitcoin_price(newest)
    assert bitcoin["price_change_24h_percent"] == pytest.approx(100.0 * 100.0 / bitcoin_price(DECEMBER[-2]))
    assert bitcoin["volume_24h"] == 30e9 + 30
    assert bitcoin["market_cap"] == 1.8e12 + 30
    assert at(bitcoin["last_timestamp"]) == newest
    assert bitcoin["stale"] is False
    fading = items[2]
    assert at(fading["last_timestamp"]) == DECEMBER[27]
    assert fading["stale"] is True
    empty = items[-1]
    assert empty["price"] is None
    assert empty["last_timestamp"] is None
    assert empty["stale"] is True


def test_coins_are_public_data(api_client: TestClient, market: Engine) -> None:
    for path in ("/coins", "/coins/bitcoin", "/coins/bitcoin/history", "/trending", "/sentiment"):
        assert api_client.get(f"{API}/market{path}").status_code == 200, path


def test_coins_list_is_empty_before_the_first_ingestion(api_client: TestClient) -> None:
    response = api_client.get(f"{API}/market/coins")
    assert response.status_code == 200
    assert response.json()["items"] == []


@pytest.mark.parametrize("asked", ["bitcoin", "Bitcoin", "BTC", "btc"])
def test_a_coin_by_id_or_symbol_in_any_case(api_client: TestClient, market: Engine, asked: str) -> None:
    response = api_client.get(f"{API}/market/coins/{asked}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["coin_id"] == "bitcoin"
    assert body["price"] == bitcoin_price(DECEMBER[-1])
    assert at(body["first_timestamp"]) == DECEMBER[0]
    assert at(body["last_timestamp"]) == DECEMBER[-1]
    assert body["points"] == 31
    assert body["stale"] is False


def test_unknown_ambiguous_and_malformed_coins(api_client: TestClient, market: Engine) -> None:
    unknown = api_client.get(f"{API}/market/coins/notacoin")
    assert unknown.status_code == 404
    assert "unknown coin 'notacoin'" in unknown.json()["detail"]
    assert api_client.get(f"{API}/market/coins/notacoin/history").status_code == 404

    shared = api_client.get(f"{API}/market/coins/DUP")
    assert shared.status_code == 409
    assert "dup-one, dup-two" in shared.json()["detail"]
    # By id each of them is found.
    assert api_client.get(f"{API}/market/coins/dup-two").json()["coin_id"] == "dup-two"

    malformed = api_client.get(f"{API}/market/coins/bit$coin")
    assert malformed.status_code == 422
    assert "coin" in malformed.text


# -- history ------------------------------------------------------------------------------------


def test_history_is_newest_first_by_default(api_client: TestClient, market: Engine) -> None:
    response = api_client.get(f"{API}/market/coins/BTC/history")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["coin_id"] == "bitcoin"
    assert body["order"] == "desc"
    assert body["limit"] == 365
    assert body["has_more"] is False
    assert [at(p["timestamp"]) for p in body["items"]] == DECEMBER[::-1]
    assert body["items"][0]["price"] == bitcoin_price(DECEMBER[-1])
    assert body["items"][-1]["market_cap"] is None
    assert body["items"][-1]["price_change_24h_percent"] is None


def test_history_pages_oldest_first_within_an_inclusive_range(api_client: TestClient, market: Engine) -> None:
    first = api_client.get(f"{API}/market/coins/bitcoin/history", params={"order": "asc", "limit": 10}).json()
    assert [at(p["timestamp"]) for p in first["items"]] == DECEMBER[:10]
    assert first["has_more"] is True
    # The next page starts past the last item, as the field's documentation says.
    after = (DECEMBER[9] + timedelta(microseconds=1)).isoformat()
    second = api_client.get(
        f"{API}/market/coins/bitcoin/history", params={"order": "asc", "limit": 10, "start": after}
    ).json()
    assert [at(p["timestamp"]) for p in second["items"]] == DECEMBER[10:20]

    # Dates without a zone are UTC; both ends are inclusive.
    ranged = api_client.get(f"{API}/market/coins/bitcoin/history", params={"start": "2024-12-10", "end": "2024-12-12"})
    assert [at(p["timestamp"]) for p in ranged.json()["items"]] == DECEMBER[11:8:-1]
    # An offset is honoured: 01:00+02:00 on the 12th is 23:00 UTC on the 11th.
    offset = api_client.get(
        f"{API}/market/coins/bitcoin/history",
        params={"start": "2024-12-10T00:00:00Z", "end": "2024-12-12T01:00:00+02:00", "order": "asc"},
    ).json()
    assert [at(p["timestamp"]) for p in offset["items"]] == DECEMBER[9:11]
    assert at(offset["end"]) == datetime(2024, 12, 11, 23, tzinfo=UTC)
    # A range with nothing in it is an empty page, not an error.
    empty = api_client.get(f"{API}/market/coins/bitcoin/history", params={"start": "2023-01-01", "end": "2023-02-01"})
    assert empty.status_code == 200
    assert empty.json()["items"] == []


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        ({"start": "2024-12-20", "end": "2024-12-10"}, "start", "is after end"),
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"limit": 1001}, "limit", "less than or equal to 1000"),
        ({"order": "sideways"}, "order", "'desc' or 'asc'"),
        ({"start": "last tuesday"}, "start", "datetime"),
    ],
)
def test_bad_history_queries_are_422_naming_the_field(
    api_client: TestClient, market: Engine, params: dict[str, Any], field: str, fragment: str
) -> None:
    response = api_client.get(f"{API}/market/coins/bitcoin/history", params=params)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["query", field]
    assert fragment in detail[0]["msg"]


# -- trending and sentiment ---------------------------------------------------------------------


def test_trending_and_sentiment_are_empty_before_the_first_ingestion(api_client: TestClient) -> None:
    trending = api_client.get(f"{API}/market/trending")
    assert trending.status_code == 200
    assert trending.json() == {"timestamp": None, "items": []}
    sentiment = api_client.get(f"{API}/market/sentiment")
    assert sentiment.status_code == 200
    assert sentiment.json() == {"as_of": "2025-01-01T00:00:00Z", "fear_greed": None, "social": None}


def test_trending_is_the_newest_snapshot_in_rank_order(api_client: TestClient, db: Engine) -> None:
    older, newer = datetime(2024, 12, 31, 12, tzinfo=UTC), datetime(2024, 12, 31, 18, tzinfo=UTC)
    with session_scope(db) as session:
        session.add(TrendingToken(coin_id="pepe", symbol="pepe", name="Pepe", rank=1, timestamp=older))
        for rank, (coin_id, mentions) in enumerate([("solana", 120), ("bonk", None), ("bitcoin", 3400)], start=1):
            session.add(
                TrendingToken(
                    coin_id=coin_id,
                    symbol=coin_id[:3],
                    name=coin_id.title(),
                    volume_24h=1e6 * rank,
                    price_change_24h=-1.5 * rank,
                    # Stored out of order: the answer is in rank order all the same.
                    rank=4 - rank,
                    category="coingecko-trending",
                    social_mentions=mentions,
                    timestamp=newer,
                )
            )
    body = api_client.get(f"{API}/market/trending").json()
    assert at(body["timestamp"]) == newer
    assert [(t["rank"], t["coin_id"], t["social_mentions"]) for t in body["items"]] == [
        (1, "bitcoin", 3400),
        (2, "bonk", None),
        (3, "solana", 120),
    ]
    assert body["items"][0]["category"] == "coingecko-trending"
    assert body["items"][0]["price_change_24h_percent"] == -4.5
    assert body["items"][0]["volume_24h"] == 3e6


def test_sentiment_is_the_newest_value_and_complete_social_day_known_at_the_clock(
    api_client: TestClient, db: Engine
) -> None:
    def midnight(day: date) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    with session_scope(db) as session:
        for day, value, label in [
            (date(2024, 12, 31), 70, "Greed"),
            (date(2025, 1, 1), 76, "Extreme Greed"),
            # Published after the clock: not known yet.
            (date(2025, 1, 2), 20, "Extreme Fear"),
        ]:
            session.add(FearGreed(day=day, value=value, classification=label, available_at=midnight(day)))
        for day in (date(2024, 12, 30), date(2024, 12, 31), date(2025, 1, 1)):
            # A day's aggregate is complete at the end of the day; 2025-01-01 is still being counted.
            available = midnight(day) + timedelta(days=1)
            for coin_id, mentions, mean in [("_market", 900, 0.12), ("bitcoin", 500, 0.2), ("ethereum", 650, -0.1)]:
                session.add(
                    SocialDaily(
                        id=uuid.uuid4(),
                        day=day,
                        coin_id=coin_id,
                        mean_sentiment=mean + day.day / 1000,
                        mention_count=mentions + day.day,
                        post_count=mentions // 2,
                        fear_greed=None,
                        available_at=available,
                    )
                )
    body = api_client.get(f"{API}/market/sentiment").json()
    assert at(body["as_of"]) == REPLAY_NOW
    assert body["fear_greed"] == {
        "day": "2025-01-01",
        "value": 76,
        "classification": "Extreme Greed",
        "available_at": "2025-01-01T00:00:00Z",
    }
    social = body["social"]
    assert social["day"] == "2024-12-31"
    assert at(social["available_at"]) == REPLAY_NOW
    assert social["market"] == {
        "coin_id": "_market",
        "mean_sentiment": pytest.approx(0.151),
        "mention_count": 931,
        "post_count": 450,
    }
    assert [(c["coin_id"], c["mention_count"]) for c in social["coins"]] == [("ethereum", 681), ("bitcoin", 531)]


# -- the Redis cache ----------------------------------------------------------------------------


def test_a_hot_read_is_served_from_redis_for_its_ttl(api_client: TestClient, market: Engine, redis_url: str) -> None:
    first = api_client.get(f"{API}/market/coins")
    assert first.headers[CACHE_HEADER] == "miss"
    # Ingestion lands a new price: the cached answer stands until its TTL runs out...
    with market.begin() as connection:
        connection.execute(
            sa.update(MarketData)
            .where(MarketData.coin_id == "bitcoin", MarketData.timestamp == DECEMBER[-1])
            .values(price=1.0)
        )
    second = api_client.get(f"{API}/market/coins")
    assert second.headers[CACHE_HEADER] == "hit"
    assert second.content == first.content
    assert second.json()["items"][0]["price"] == bitcoin_price(DECEMBER[-1])

    client = redis.Redis.from_url(redis_url)
    try:
        key = f"{KEY_PREFIX}coins"
        assert 0 < client.ttl(key) <= TTL_SECONDS
        # ...which is what deleting the key stands in for (no sleeping in tests).
        client.delete(key)
    finally:
        client.close()
    third = api_client.get(f"{API}/market/coins")
    assert third.headers[CACHE_HEADER] == "miss"
    assert third.json()["items"][0]["price"] == 1.0


def test_cached_answers_are_per_question(api_client: TestClient, market: Engine) -> None:
    by_id = api_client.get(f"{API}/market/coins/bitcoin/history", params={"limit": 2})
    other_limit = api_client.get(f"{API}/market/coins/bitcoin/history", params={"limit": 3})
    assert by_id.headers[CACHE_HEADER] == other_limit.headers[CACHE_HEADER] == "miss"
    assert len(by_id.json()["items"]) == 2
    assert len(other_limit.json()["items"]) == 3
    assert api_client.get(f"{API}/market/coins/bitcoin/history", params={"limit": 2}).headers[CACHE_HEADER] == "hit"
    # Errors are not cached: a coin added after a 404 is found at once.
    assert api_client.get(f"{API}/market/coins/late-coin").status_code == 404
    add_coin(market, "late-coin", "late", DECEMBER[-2:], price=2.0, cap=5.0)
    late = api_client.get(f"{API}/market/coins/late-coin")
    assert late.status_code == 200
    assert late.json()["price"] == 3.0


def test_a_redis_outage_degrades_to_the_database_visibly(api_settings: Settings, market: Engine) -> None:
    down = api_settings.model_copy(update={"redis": RedisSettings(url=f"redis://127.0.0.1:{closed_port()}/0")})
    with TestClient(create_app(down)) as client:
        for _ in range(2):
            response = client.get(f"{API}/market/coins")
            assert response.status_code == 200
            assert response.headers[CACHE_HEADER] == "unavailable"
            assert response.json()["items"][0]["price"] == bitcoin_price(DECEMBER[-1])
        history = client.get(f"{API}/market/coins/eth/history", params={"limit": 1})
        assert history.status_code == 200
        assert history.headers[CACHE_HEADER] == "unavailable"
        assert history.json()["items"][0]["price"] == 3_311.0


def test_without_redis_configured_every_read_comes_from_the_database(api_settings: Settings, market: Engine) -> None:
    no_redis = api_settings.model_copy(update={"redis": RedisSettings(url="")})
    with TestClient(create_app(no_redis)) as client:
        response = client.get(f"{API}/market/coins/fad")
    assert response.status_code == 200
    assert response.headers[CACHE_HEADER] == "disabled"
    assert response.json()["stale"] is True
