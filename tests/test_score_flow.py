"""The ``score`` flow under Prefect: every coin and horizon predicted, written once, never overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flows.score import score
from khalsi.db.engine import create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.db.models import Prediction
from khalsi.settings import Settings, get_settings
from serving.feature_store import read_feature_snapshot
from serving.model_loader import model_name
from tests.test_serving import register_model, service_env, train_direction_model, write_bundled_lake
from training.registry import CHAMPION, configure_mlflow

# The replay clock's default "now": the day after the newest bundled snapshot (2024-12-31).
REPLAY_NOW = datetime(2025, 1, 1, tzinfo=UTC)
MAX_AGE = timedelta(hours=48)


@pytest.fixture(params=["sqlite", "postgresql"])
def score_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "sqlite":
        return settings
    pg: Settings = request.getfixturevalue("pg_settings")
    return pg


@pytest.fixture
def flow_env(score_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The flow reads its settings from the environment, as under ``make run``."""
    for key, value in service_env(score_settings).items():
        monkeypatch.setenv(key, value)
    if score_settings.database.url:
        monkeypatch.setenv("KHALSI_DATABASE_URL", score_settings.database.url)
    get_settings.cache_clear()
    yield score_settings
    get_settings.cache_clear()


def stored_predictions(settings: Settings) -> list[dict[str, Any]]:
    engine = create_sync_engine(settings)
    upgrade(engine)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(Prediction.__table__)).mappings().all()
            return sorted((dict(row) for row in rows), key=lambda r: (r["coin_id"], r["timeframe"], r["model_version"]))
    finally:
        engine.dispose()


def test_score_writes_every_fresh_coin_and_horizon_once(
    prefect_harness: None, flow_env: Settings, tmp_path: Path
) -> None:
    settings = flow_env
    write_bundled_lake(settings)
    versions = {days: register_model(settings, train_direction_model(settings, days), tmp_path) for days in (1, 7)}

    first = score()
    snapshot = read_feature_snapshot(settings)
    assert snapshot is not None
    fresh = [c for c, ts in zip(snapshot.coin_ids, snapshot.timestamps, strict=True) if REPLAY_NOW - ts <= MAX_AGE]
    stale = set(snapshot.coin_ids) - set(fresh)
    assert {"bitcoin-cash", "tron", "cardano"} <= stale  # their bundled histories end earlier
    assert first["predicted"] == first["written"] == 2 * len(fresh)
    assert first["skipped"] == {"stale_features": 2 * len(stale)}
    assert first["models"] == {"1d": f"khalsi-direction-1d@{versions[1]}", "7d": f"khalsi-direction-7d@{versions[7]}"}

    rows = stored_predictions(settings)
    assert len(rows) == 2 * len(fresh)
    assert {(r["coin_id"], r["timeframe"]) for r in rows} == {(c, h) for c in fresh for h in ("1d", "7d")}
    for row in rows:
        assert row["model_version"] == versions[int(row["timeframe"][:-1])]
        assert row["model_name"] == model_name(int(row["timeframe"][:-1]))
        assert row["probability_up"] + row["probability_down"] == pytest.approx(1.0, abs=2e-4)
        assert row["confidence_level"] == pytest.approx(abs(row["probability_up"] - 0.5) * 2, abs=2e-4)
        assert row["price_target_low"] <= row["price_target"] <= row["price_target_high"]
        feature_ts = row["feature_timestamp"].astimezone(UTC)
        assert row["expires_at"].astimezone(UTC) == feature_ts + timedelta(days=1)
        methodology = row["methodology"]
        assert methodology["model_version"] == row["model_version"]
        assert methodology["feature_timestamp"] == feature_ts.isoformat()
        assert len(methodology["feature_set"]["names"]) == len(snapshot.feature_names)
        assert methodology["price_target"]["quantiles"] == [0.1, 0.5, 0.9]
        i = snapshot.row_of(row["coin_id"])
        assert i is not None
        assert feature_ts == snapshot.timestamps[i]
        assert methodology["price"] == float(snapshot.prices[i])

    # Same data, same champions: nothing new, nothing rewritten.
    second = score()
    assert second["predicted"] == first["predicted"]
    assert second["written"] == 0
    assert stored_predictions(settings) == rows

    # A new champion for 1d adds its own rows beside the old ones; 7d writes nothing.
    challenger = train_direction_model(settings, 1, trees=12, seed=3)
    new_version = register_model(settings, challenger, tmp_path)
    third = score()
    assert third["written"] == len(fresh)
    after = stored_predictions(settings)
    assert len(after) == 3 * len(fresh)
    assert [r for r in after if r["id"] in {old["id"] for old in rows}] == rows
    assert {r["model_version"] for r in after if r["timeframe"] == "1d"} == {versions[1], new_version}
    configure_mlflow(settings).delete_registered_model_alias(model_name(1), CHAMPION)


def test_score_without_a_champion_writes_nothing_and_says_why(prefect_harness: None, flow_env: Settings) -> None:
    settings = flow_env
    write_bundled_lake(settings)
    summary = score()
    assert summary["written"] == 0
    assert summary["predicted"] == 0
    assert set(summary["errors"]) == {"model:1d", "model:7d"}
    assert summary["skipped"]["model_unavailable"] == 2 * summary["published"]["coins"]
    # The features were still published for the service.
    assert summary["feature_version"] == 1
    assert stored_predictions(settings) == []


def test_score_announces_each_new_prediction_once(
    prefect_harness: None, settings: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import json

    import redis

    for key, value in service_env(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KHALSI_REDIS_URL", redis_url)
    get_settings.cache_clear()
    write_bundled_lake(settings)
    register_model(settings, train_direction_model(settings, 1), tmp_path)
    listener = redis.Redis.from_url(redis_url).pubsub()
    listener.psubscribe("khalsi:events:predictions:*")
    listener.get_message(timeout=1)  # the subscription confirmation
    try:
        first = score(horizons=[1])
        second = score(horizons=[1])  # nothing new: nothing announced
        events = []
        while (message := listener.get_message(timeout=0.5)) is not None:
            if message["type"] == "pmessage":
                events.append((message["channel"].decode(), json.loads(message["data"])))
    finally:
        listener.close()
        get_settings.cache_clear()
    assert first["announced"] == first["written"] > 0
    assert "announced" not in second
    assert len(events) == first["written"]
    channel, event = events[0]
    assert channel == f"khalsi:events:predictions:{event['coin_id']}"
    assert event["type"] == "prediction"
    assert event["timeframe"] == "1d"
    assert 0 < event["probability_up"] < 1
