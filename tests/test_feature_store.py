"""The online feature store on real Redis and on its file fallback: what the pipeline writes is what serving reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features import FEATURE_COLUMNS, latest_feature_vectors
from features.bundled import bundled_fear_greed_frame, bundled_market_frame, bundled_social_daily_frame
from khalsi.settings import Settings
from serving.feature_store import (
    COIN_KEY_PREFIX,
    META_KEY,
    UPDATES_CHANNEL,
    FeatureStoreError,
    FileFeatureStore,
    RedisFeatureStore,
    open_feature_store,
    publish_latest_features,
    read_feature_snapshot,
    rows_from_frame,
)
from tests.test_serving import write_bundled_lake

AS_OF_EARLY = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundled_latest() -> pl.DataFrame:
    return latest_feature_vectors(
        bundled_market_frame().lazy(), bundled_fear_greed_frame().lazy(), bundled_social_daily_frame().lazy()
    )


@pytest.fixture
def lake_settings(settings: Settings) -> Settings:
    write_bundled_lake(settings)
    return settings


@pytest.fixture
def redis_settings(lake_settings: Settings, redis_url: str) -> Settings:
    return lake_settings.model_copy(update={"redis": lake_settings.redis.model_copy(update={"url": redis_url})})


def assert_snapshot_equals_frame(settings: Settings, frame: pl.DataFrame) -> None:
    snapshot = read_feature_snapshot(settings)
    assert snapshot is not None
    assert snapshot.feature_names == tuple(FEATURE_COLUMNS)
    assert list(snapshot.coin_ids) == frame.get_column("coin_id").to_list()
    assert list(snapshot.symbols) == frame.get_column("symbol").to_list()
    assert list(snapshot.timestamps) == frame.get_column("timestamp").to_list()
    np.testing.assert_array_equal(snapshot.prices, frame.get_column("price").to_numpy())
    # Bit for bit, nulls as NaN: the stored text must not round a single float.
    np.testing.assert_array_equal(snapshot.matrix, frame.select(FEATURE_COLUMNS).to_numpy().astype(np.float64))


def test_file_fallback_round_trips_the_latest_vectors(lake_settings: Settings, bundled_latest: pl.DataFrame) -> None:
    result = publish_latest_features(lake_settings)
    assert result.backend == "file"
    assert result.version == 1
    assert result.changed
    assert result.coins == 17
    assert result.newest_timestamp == datetime(2024, 12, 31, tzinfo=UTC)
    assert (lake_settings.home / "online" / "features.json").exists()
    assert_snapshot_equals_frame(lake_settings, bundled_latest)


def test_redis_round_trips_the_latest_vectors(redis_settings: Settings, bundled_latest: pl.DataFrame) -> None:
    import redis

    client = redis.Redis.from_url(redis_settings.redis.url, decode_responses=True)
    pubsub = client.pubsub()
    pubsub.subscribe(UPDATES_CHANNEL)
    pubsub.get_message(timeout=2)  # the subscription confirmation
    result = publish_latest_features(redis_settings)
    assert result.backend == "redis"
    assert result.version == 1
    assert_snapshot_equals_frame(redis_settings, bundled_latest)
    # A hash per coin, readable by anything that speaks Redis.
    stored = client.hgetall(COIN_KEY_PREFIX + "bitcoin")
    assert stored["symbol"] == "btc"
    assert stored["timestamp"].startswith("2024-12-31")
    assert len(json.loads(stored["features"])) == len(FEATURE_COLUMNS)
    message = pubsub.get_message(timeout=5)
    assert message is not None
    assert message["data"] == "1"
    pubsub.close()
    client.close()
    # No file is written when Redis is configured.
    assert not (redis_settings.home / "online").exists()


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_version_moves_only_when_the_vectors_change(
    backend: str, lake_settings: Settings, request: pytest.FixtureRequest
) -> None:
    settings = lake_settings if backend == "file" else request.getfixturevalue("redis_settings")
    store = open_feature_store(settings)
    assert store.backend == backend
    assert store.version() == 0
    assert store.read() is None
    first = publish_latest_features(settings, as_of=AS_OF_EARLY)
    assert (first.version, first.changed) == (1, True)
    again = publish_latest_features(settings, as_of=AS_OF_EARLY)
    assert (again.version, again.changed) == (1, False)
    assert store.version() == 1
    newer = publish_latest_features(settings)
    assert (newer.version, newer.changed) == (2, True)
    assert store.version() == 2
    snapshot = store.read()
    assert snapshot is not None
    assert snapshot.version == 2
    assert max(snapshot.timestamps) == datetime(2024, 12, 31, tzinfo=UTC)
    store.close()


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_coin_that_disappears_is_removed(
    backend: str, lake_settings: Settings, bundled_latest: pl.DataFrame, request: pytest.FixtureRequest
) -> None:
    settings = lake_settings if backend == "file" else request.getfixturevalue("redis_settings")
    store = open_feature_store(settings)
    now = datetime.now(UTC)
    store.write(
        rows_from_frame(bundled_latest, FEATURE_COLUMNS), feature_names=tuple(FEATURE_COLUMNS), published_at=now
    )
    fewer = bundled_latest.filter(pl.col("coin_id") != "dogecoin")
    result = store.write(
        rows_from_frame(fewer, FEATURE_COLUMNS), feature_names=tuple(FEATURE_COLUMNS), published_at=now
    )
    assert result.version == 2
    snapshot = store.read()
    assert snapshot is not None
    assert "dogecoin" not in snapshot.coin_ids
    assert snapshot.row_of("doge") is None
    assert len(snapshot.coin_ids) == 16
    if isinstance(store, RedisFeatureStore):
        import redis

        client = redis.Redis.from_url(settings.redis.url)
        assert not client.exists(COIN_KEY_PREFIX + "dogecoin")
        assert json.loads(client.hget(META_KEY, "coins") or b"[]") == list(snapshot.coin_ids)
        client.close()
    store.close()


def test_symbols_are_keys_only_where_unique(bundled_latest: pl.DataFrame, tmp_path: Path) -> None:
    store = FileFeatureStore(tmp_path / "features.json")
    rows = rows_from_frame(bundled_latest, FEATURE_COLUMNS)
    clash = rows_from_frame(bundled_latest.filter(pl.col("coin_id") == "ethereum"), FEATURE_COLUMNS)[0]
    from dataclasses import replace

    rows.append(replace(clash, coin_id="ethereum-clone"))
    store.write(rows, feature_names=tuple(FEATURE_COLUMNS), published_at=datetime.now(UTC))
    snapshot = store.read()
    assert snapshot is not None
    assert snapshot.row_of("BTC") == snapshot.row_of("bitcoin")
    # Two coins share "eth": the symbol is ambiguous, the ids still work.
    assert snapshot.row_of("eth") is None
    assert snapshot.row_of("ethereum") is not None
    assert snapshot.row_of("ethereum-clone") is not None


def test_a_damaged_file_is_a_clear_error_and_a_republish_repairs_it(lake_settings: Settings) -> None:
    publish_latest_features(lake_settings)
    path = lake_settings.home / "online" / "features.json"
    path.write_text('{"version": 3}', encoding="utf-8")
    with pytest.raises(FeatureStoreError, match="lacks"):
        FileFeatureStore(path).read()
    path.write_text("{", encoding="utf-8")
    with pytest.raises(FeatureStoreError, match="not valid JSON"):
        FileFeatureStore(path).read()
    path.unlink()
    assert publish_latest_features(lake_settings).version == 1
    assert read_feature_snapshot(lake_settings) is not None


def test_an_empty_lake_publishes_no_coins(settings: Settings) -> None:
    settings.ensure_home()
    result = publish_latest_features(settings)
    assert result.coins == 0
    assert result.newest_timestamp is None
    snapshot = read_feature_snapshot(settings)
    assert snapshot is not None
    assert snapshot.coin_ids == ()
    assert snapshot.matrix.shape == (0, len(FEATURE_COLUMNS))
