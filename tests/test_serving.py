"""The prediction service: serving logic against DirectionModel, per-item errors, champion swaps, HTTP.

Champions are small real models: XGBoost trained on the bundled history's real features and labels
(few trees, so the suite stays fast), logged as ``training.model.DirectionPyfunc`` and registered
with the ``champion`` alias in a temporary MLflow store. The helpers here are reused by the score
flow and bento build tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import mlflow
import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from features import FEATURE_COLUMNS, load_feature_frame
from features.bundled import bundled_fear_greed_frame, bundled_market_frame, bundled_social_daily_frame
from khalsi import lake
from khalsi.runtime import stop_process
from khalsi.settings import ServingSettings, Settings, get_settings
from serving.feature_store import FeatureSnapshot, FileFeatureStore, publish_latest_features, read_feature_snapshot
from serving.model_loader import ServingRuntime, champion_versions, load_champion, model_name
from serving.predict import predict_items
from serving.schemas import ErrorCode, PredictionItem
from training.config import CalibrationMethod
from training.labels import FWD_RETURN, LABEL, add_labels
from training.model import Calibrator, DirectionModel
from training.registry import CHAMPION, configure_mlflow, register_direction_model

REPO_ROOT = Path(__file__).resolve().parent.parent
ALPHAS = [0.1, 0.5, 0.9]


# -- helpers shared with the other serving tests ------------------------------------------------


def write_bundled_lake(settings: Settings) -> None:
    """The bundled real history, written to the lake as ingestion writes it."""
    settings.ensure_home()
    market = bundled_market_frame()
    for (coin_id,), part in market.group_by("coin_id"):
        lake.write_market_partition(settings.lake_dir, str(coin_id), part)
    lake.write_fear_greed(settings.lake_dir, bundled_fear_greed_frame())
    lake.write_social_daily(settings.lake_dir, bundled_social_daily_frame())


def train_direction_model(
    settings: Settings, horizon_days: int, *, trees: int = 8, depth: int = 3, seed: int = 0, rows: int = 6000
) -> DirectionModel:
    """A real (small) DirectionModel: boosters fitted on the lake's latest labelled feature rows."""
    frame = (
        add_labels(load_feature_frame(settings.lake_dir), horizon_days)
        .filter(pl.col(LABEL).is_not_null())
        .sort("timestamp")
        .collect()
        .tail(rows)
    )
    features = frame.select(FEATURE_COLUMNS).to_numpy().astype(np.float64)
    params = {"max_depth": depth, "nthread": 1, "seed": seed, "eta": 0.3}
    classifier = xgb.train(
        {**params, "objective": "binary:logistic"},
        xgb.DMatrix(features, label=frame.get_column(LABEL).to_numpy(), feature_names=FEATURE_COLUMNS),
        trees,
    )
    quantile_model = xgb.train(
        {**params, "objective": "reg:quantileerror", "quantile_alpha": ALPHAS},
        xgb.DMatrix(features, label=frame.get_column(FWD_RETURN).to_numpy(), feature_names=FEATURE_COLUMNS),
        trees,
    )
    return DirectionModel(
        horizon_days=horizon_days,
        feature_names=list(FEATURE_COLUMNS),
        classifier=classifier,
        # A real, non-identity map, so a path that skipped calibration would give other numbers.
        calibrator=Calibrator(method=CalibrationMethod.SIGMOID, a=0.8, b=0.05),
        quantile_model=quantile_model,
        alphas=ALPHAS,
        metadata={"purpose": "serving tests"},
    )


def register_model(settings: Settings, model: DirectionModel, tmp_dir: Path, *, champion: bool = True) -> str:
    """Log ``model`` as a DirectionPyfunc, register it under training's name, optionally as champion."""
    client = configure_mlflow(settings)
    name = model_name(model.horizon_days)
    return register_direction_model(
        client,
        model,
        tmp_dir / f"model-{model.horizon_days}d-{time.monotonic_ns()}",
        model_name=name,
        champion=champion,
    )


def service_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``get_settings()`` in a service process read these settings."""
    env = {
        "KHALSI_HOME": str(settings.home),
        "KHALSI_ENVIRONMENT": "test",
        "KHALSI_REDIS_URL": settings.redis.url,
        "KHALSI_REPLAY_START": settings.replay_start,
    }
    return {key: value for key, value in env.items() if value}


@pytest.fixture(autouse=True)
def no_leaked_mlflow_run() -> Iterator[None]:
    yield
    leaked = mlflow.active_run()
    if leaked is not None:
        mlflow.end_run()
        pytest.fail(f"test left MLflow run {leaked.info.run_id} active")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A home with the bundled lake, published features and a champion per horizon (built once)."""
    root = tmp_path_factory.mktemp("serving")
    settings = Settings(_env_file=None, home=root / "home", environment="test")
    write_bundled_lake(settings)
    publish_latest_features(settings)
    models = {days: train_direction_model(settings, days) for days in (1, 7)}
    versions = {days: register_model(settings, model, root) for days, model in models.items()}
    return {"settings": settings, "models": models, "versions": versions, "root": root}


def row_index(snapshot: FeatureSnapshot, coin: str) -> int:
    row = snapshot.row_of(coin)
    assert row is not None, coin
    return row


def runtime_for(settings: Settings, **options: Any) -> ServingRuntime:
    runtime = ServingRuntime(settings, options=ServingSettings(**options))
    runtime.load()
    return runtime


# -- serving logic -------------------------------------------------------------------------------


def test_serving_path_gives_the_direction_models_own_numbers(served: dict[str, Any]) -> None:
    runtime = runtime_for(served["settings"])
    snapshot = runtime.snapshot
    assert snapshot is not None
    coins = ["bitcoin", "ethereum", "solana"]
    results = runtime.predict([PredictionItem(coin=c, horizon="7d") for c in coins])
    model: DirectionModel = served["models"][7]
    rows = [row_index(snapshot, c) for c in coins]
    features = snapshot.matrix[rows][:, snapshot.columns_for(tuple(model.feature_names))]
    expected_p = model.probability(features)
    expected_q = model.return_quantiles(features)
    for i, result in enumerate(results):
        assert result.error is None
        assert result.probability_up == pytest.approx(expected_p[i], abs=1e-7)
        assert result.probability_down == pytest.approx(1 - expected_p[i], abs=1e-7)
        assert result.confidence == pytest.approx(abs(expected_p[i] - 0.5) * 2, abs=1e-7)
        assert result.direction == ("up" if expected_p[i] >= 0.5 else "down")
        price = float(snapshot.prices[rows[i]])
        assert result.price == price
        assert result.price_target is not None
        assert result.price_target.low == pytest.approx(price * np.exp(expected_q[i, 0]), rel=1e-6)
        assert result.price_target.median == pytest.approx(price * np.exp(expected_q[i, 1]), rel=1e-6)
        assert result.price_target.high == pytest.approx(price * np.exp(expected_q[i, 2]), rel=1e-6)
        assert result.price_target.low <= result.price_target.median <= result.price_target.high
        assert result.price_target.interval == pytest.approx(0.8)
        assert result.model_name == "khalsi-direction-7d"
        assert result.model_version == served["versions"][7]
        assert result.feature_timestamp == snapshot.timestamps[rows[i]]
        assert result.expires_at == snapshot.timestamps[rows[i]] + timedelta(days=1)
        assert result.contributions is None


def test_served_vectors_are_the_training_rows(served: dict[str, Any]) -> None:
    settings: Settings = served["settings"]
    snapshot = read_feature_snapshot(settings)
    assert snapshot is not None
    training = load_feature_frame(settings.lake_dir).collect()
    for coin_id in ("bitcoin", "dogecoin", "bitcoin-cash"):
        row = row_index(snapshot, coin_id)
        expected = training.filter(
            (pl.col("coin_id") == coin_id) & (pl.col("timestamp") == snapshot.timestamps[row])
        ).select(FEATURE_COLUMNS)
        stored = snapshot.matrix[row]
        np.testing.assert_array_equal(stored, expected.to_numpy().astype(np.float64)[0])


def test_per_item_errors_leave_the_other_items_answered(served: dict[str, Any]) -> None:
    runtime = runtime_for(served["settings"], horizons=[1, 7, 30])
    items = [
        PredictionItem(coin="bitcoin", horizon="1d"),
        PredictionItem(coin="no-such-coin", horizon="1d"),
        PredictionItem(coin="bitcoin", horizon="2d"),
        PredictionItem(coin="bitcoin", horizon="soon"),
        PredictionItem(coin="bitcoin", horizon="30d"),
        # Bitcoin Cash's bundled history ends on 2023-11-30: its newest vector is far too old.
        PredictionItem(coin="bitcoin-cash", horizon="7d"),
        PredictionItem(coin="BTC", horizon=7),
        # An unknown coin is said to be unknown even where no champion serves the horizon.
        PredictionItem(coin="no-such-coin", horizon="30d"),
    ]
    results = runtime.predict(items)
    assert [r.coin for r in results] == [i.coin for i in items]
    codes = [r.error.code if r.error else None for r in results]
    assert codes == [
        None,
        ErrorCode.UNKNOWN_COIN,
        ErrorCode.UNKNOWN_HORIZON,
        ErrorCode.UNKNOWN_HORIZON,
        ErrorCode.MODEL_UNAVAILABLE,
        ErrorCode.STALE_FEATURES,
        None,
        ErrorCode.UNKNOWN_COIN,
    ]
    assert results[0].probability_up is not None
    assert results[1].probability_up is None
    assert results[1].error is not None
    assert "no-such-coin" in results[1].error.message
    assert "2023-11-30" in results[5].error.message  # type: ignore[union-attr]
    # A unique symbol is accepted and answered as its coin.
    assert results[6].coin_id == "bitcoin"
    assert results[6].horizon == "7d"


def test_max_age_follows_the_platform_clock(served: dict[str, Any]) -> None:
    runtime = ServingRuntime(
        served["settings"],
        options=ServingSettings(max_feature_age_hours=48),
        clock=lambda: datetime(2025, 3, 1, tzinfo=UTC),
    )
    runtime.load()
    (result,) = runtime.predict([PredictionItem(coin="bitcoin", horizon="1d")])
    assert result.error is not None
    assert result.error.code is ErrorCode.STALE_FEATURES
    runtime.stop()


def test_contributions_only_when_asked_and_consistent_with_the_log_odds(served: dict[str, Any]) -> None:
    runtime = runtime_for(served["settings"])
    snapshot = runtime.snapshot
    assert snapshot is not None
    asked, plain = runtime.predict(
        [
            PredictionItem(coin="ethereum", horizon="1d", contributions=True, top_k=3),
            PredictionItem(coin="solana", horizon="1d"),
        ]
    )
    assert plain.contributions is None
    assert asked.contributions is not None
    assert len(asked.contributions) == 3
    model: DirectionModel = served["models"][1]
    row = row_index(snapshot, "ethereum")
    features = snapshot.matrix[[row]][:, snapshot.columns_for(tuple(model.feature_names))]
    full = model.contributions(features)[0]
    # TreeSHAP is exact: contributions plus bias add up to the raw log-odds.
    raw = model.raw_probability(features)[0]
    assert full.sum() == pytest.approx(np.log(raw / (1 - raw)), abs=1e-4)
    magnitudes = [abs(c.contribution) for c in asked.contributions]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert magnitudes[0] == pytest.approx(np.abs(full[:-1]).max(), rel=1e-6)
    for contribution in asked.contributions:
        j = model.feature_names.index(contribution.feature)
        assert contribution.contribution == pytest.approx(full[j], rel=1e-6)
        value = features[0, j]
        assert contribution.value == (None if np.isnan(value) else pytest.approx(value))


def test_nothing_published_or_no_champion_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path / "empty", environment="test")
    runtime = runtime_for(settings)
    assert not runtime.ready
    (result,) = runtime.predict([PredictionItem(coin="bitcoin", horizon="1d")])
    assert result.error is not None
    # Nothing is published either; that is reported before the missing champion.
    assert result.error.code is ErrorCode.FEATURES_UNAVAILABLE
    status = runtime.status()
    assert status.missing_horizons == ["1d", "7d"]
    assert "model:1d" in status.last_errors
    assert "features" in status.last_errors
    runtime.stop()


def test_a_moved_alias_is_served_without_restart(served: dict[str, Any], tmp_path: Path) -> None:
    settings: Settings = served["settings"]
    runtime = runtime_for(settings, model_poll_seconds=0.2, feature_poll_seconds=0.1)
    old_version = runtime.models[1].version
    runtime.start_polling()
    try:
        challenger = train_direction_model(settings, 1, trees=12, seed=7)
        new_version = register_model(settings, challenger, tmp_path)
        deadline = time.monotonic() + 60
        while runtime.models[1].version != new_version and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runtime.models[1].version == new_version != old_version
        (result,) = runtime.predict([PredictionItem(coin="bitcoin", horizon="1d")])
        assert result.model_version == new_version
        snapshot = runtime.snapshot
        assert snapshot is not None
        row = row_index(snapshot, "bitcoin")
        features = snapshot.matrix[[row]][:, snapshot.columns_for(tuple(challenger.feature_names))]
        assert result.probability_up == pytest.approx(challenger.probability(features)[0], abs=1e-7)
        assert runtime.status().models[0].model_version == new_version
    finally:
        runtime.stop()
        # Put the module's champion back for the tests that follow.
        configure_mlflow(settings).set_registered_model_alias(model_name(1), CHAMPION, served["versions"][1])
    assert champion_versions(settings, [1]) == {1: served["versions"][1]}


def test_new_features_are_picked_up_and_a_bad_store_keeps_the_old_snapshot(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path / "home", environment="test")
    write_bundled_lake(settings)
    publish_latest_features(settings, as_of=datetime(2024, 6, 1, tzinfo=UTC))
    runtime = ServingRuntime(settings, options=ServingSettings(horizons=[1]), clock=lambda: datetime.now(UTC))
    runtime.refresh_features()
    first = runtime.snapshot
    assert first is not None
    assert max(first.timestamps) == datetime(2024, 6, 1, tzinfo=UTC)
    assert not runtime.refresh_features()  # same version: nothing reloaded
    publish_latest_features(settings)
    assert runtime.refresh_features()
    second = runtime.snapshot
    assert second is not None
    assert second.version == first.version + 1
    assert max(second.timestamps) == datetime(2024, 12, 31, tzinfo=UTC)
    path = settings.home / "online" / "features.json"
    path.write_text("{not json", encoding="utf-8")
    assert not runtime.refresh_features()
    assert runtime.snapshot is second
    assert "features" in runtime.status().last_errors
    runtime.stop()


def test_runtime_follows_the_redis_store(served: dict[str, Any], redis_url: str) -> None:
    base: Settings = served["settings"]
    settings = base.model_copy(update={"redis": base.redis.model_copy(update={"url": redis_url})})
    publish_latest_features(settings, as_of=datetime(2024, 6, 1, tzinfo=UTC))
    runtime = runtime_for(settings, feature_poll_seconds=0.1)
    assert runtime.status().feature_backend == "redis"
    assert runtime.snapshot is not None
    first_version = runtime.snapshot.version
    runtime.start_polling()
    try:
        publish_latest_features(settings)
        deadline = time.monotonic() + 30
        while runtime.snapshot.version == first_version and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runtime.snapshot.version == first_version + 1
        (result,) = runtime.predict([PredictionItem(coin="bitcoin", horizon="1d")])
        assert result.feature_timestamp == datetime(2024, 12, 31, tzinfo=UTC)
        assert result.error is None
    finally:
        runtime.stop()


def test_in_process_predict_over_the_models_matches_a_direct_call(served: dict[str, Any]) -> None:
    # predict_items is what batch scoring calls: same answers as the runtime for the same inputs.
    runtime = runtime_for(served["settings"])
    items = [PredictionItem(coin=c, horizon=h) for c in ("bitcoin", "ripple") for h in ("1d", "7d")]
    direct = predict_items(
        items, models=runtime.models, snapshot=runtime.snapshot, now=runtime.clock(), max_age=runtime.max_age
    )
    assert [r.model_dump() for r in direct] == [r.model_dump() for r in runtime.predict(items)]


def test_precomputed_answers_equal_per_row_booster_calls(served: dict[str, Any]) -> None:
    runtime = runtime_for(served["settings"])
    state = runtime.state
    assert state.answers is not None
    assert state.snapshot is not None
    for days, served_model in state.models.items():
        columns = state.snapshot.columns_for(served_model.feature_names)
        for row in range(len(state.snapshot.coin_ids)):
            one_row = np.ascontiguousarray(state.snapshot.matrix[[row]][:, columns])
            assert state.answers.p_up[days][row] == served_model.probability(one_row)[0]
            np.testing.assert_array_equal(state.answers.quantiles[days][row], served_model.quantiles(one_row)[0])
    # Answers made from another snapshot are never used for this one.
    other = read_feature_snapshot(served["settings"])
    assert other is not None
    assert state.answers.for_horizon(1, other, state.models[1]) is None
    assert state.answers.for_horizon(1, state.snapshot, state.models[1]) is not None


def test_load_champion_reports_the_alias_version(served: dict[str, Any]) -> None:
    loaded = load_champion(served["settings"], 7)
    assert loaded.version == served["versions"][7]
    assert loaded.name == "khalsi-direction-7d"
    assert isinstance(FileFeatureStore(served["settings"].home / "online" / "features.json").version(), int)


# -- the BentoML service over HTTP (in process) --------------------------------------------------


@pytest.fixture(scope="module")
def service_client(served: dict[str, Any]) -> Iterator[Any]:
    """One in-process app per module: BentoML registers its Prometheus metrics once per process."""
    from starlette.testclient import TestClient

    from serving.service import DirectionService

    with pytest.MonkeyPatch.context() as patch:
        for key, value in service_env(served["settings"]).items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        try:
            with TestClient(cast(Any, DirectionService).to_asgi()) as client:
                yield client
        finally:
            get_settings.cache_clear()


def test_service_predicts_one_or_many_items(service_client: Any, served: dict[str, Any]) -> None:
    one = service_client.post("/predict", json={"items": [{"coin": "bitcoin", "horizon": "1d"}]})
    assert one.status_code == 200, one.text
    (result,) = one.json()["results"]
    assert result["model_version"] == served["versions"][1]
    assert result["error"] is None
    assert 0 < result["probability_up"] < 1

    items: list[dict[str, Any]] = [
        {"coin": c, "horizon": h} for c in ("bitcoin", "ethereum", "cardano", "nope") for h in ("1d", "7d")
    ]
    items[0]["contributions"] = True
    many = service_client.post("/predict", json={"items": items})
    assert many.status_code == 200, many.text
    results = many.json()["results"]
    assert len(results) == 8
    assert len(results[0]["contributions"]) == 5
    # Cardano's bundled history ends on 2024-12-20: stale against the replay clock (2025-01-01).
    assert {r["error"]["code"] for r in results[4:6]} == {"stale_features"}
    assert {r["error"]["code"] for r in results[6:]} == {"unknown_coin"}
    assert all(r["error"] is None for r in results[:4])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"items": []}, "items"),
        ({"items": [{"horizon": "1d"}]}, "coin"),
        ({"items": [{"coin": "bitcoin", "horizon": "1d", "colour": "red"}]}, "colour"),
        ({"items": [{"coin": "bitcoin", "top_k": 0}]}, "top_k"),
        ({"coins": ["bitcoin"]}, "items"),
    ],
)
def test_service_refuses_a_bad_body_with_a_4xx(service_client: Any, body: dict[str, Any], needle: str) -> None:
    response = service_client.post("/predict", json=body)
    assert 400 <= response.status_code < 500
    assert needle in response.text


def test_service_health_and_readiness_report_versions(service_client: Any, served: dict[str, Any]) -> None:
    health = service_client.get("/status/health")
    assert health.status_code == 200
    status = health.json()
    assert status["ready"] is True
    assert {m["horizon"]: m["model_version"] for m in status["models"]} == {
        "1d": served["versions"][1],
        "7d": served["versions"][7],
    }
    assert status["feature_backend"] == "file"
    assert status["coins"] == 17
    ready = service_client.get("/status/ready")
    assert ready.status_code == 200
    assert ready.json()["models"] == status["models"]
    assert service_client.get("/readyz").status_code == 200


async def test_service_without_a_champion_is_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.service import DirectionService

    monkeypatch.setenv("KHALSI_HOME", str(tmp_path / "empty-home"))
    get_settings.cache_clear()
    service = cast(Any, DirectionService).inner()
    try:
        assert service.__is_ready__() is False
        ready = await service.ready()
        assert ready.status_code == 503
        assert b'"missing_horizons":["1d","7d"]' in ready.body
        response = await service.predict(items=[PredictionItem(coin="bitcoin")])
        assert response.results[0].error is not None
        assert response.results[0].error.code is ErrorCode.FEATURES_UNAVAILABLE
    finally:
        service.shutdown()
        get_settings.cache_clear()


# -- the real thing: `bentoml serve` in its own process -----------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_bentoml_serve_process_answers_over_http(served: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **service_env(served["settings"]), "BENTOML_HOME": str(tmp_path / "bentoml")}
    command = [
        sys.executable, "-m", "bentoml", "serve", "serving.service:DirectionService",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready:
                break
            time.sleep(0.5)
        assert ready, (tmp_path / "serve.log").read_text(errors="replace")[-4000:]
        response = httpx.post(
            f"{base}/predict", json={"items": [{"coin": "ethereum", "horizon": "7d"}, {"coin": "x", "horizon": "1d"}]}
        )
        assert response.status_code == 200, response.text
        first, second = response.json()["results"]
        assert first["model_version"] == served["versions"][7]
        assert first["coin_id"] == "ethereum"
        assert second["error"]["code"] == "unknown_coin"
        health = httpx.get(f"{base}/status/health").json()
        assert [m["model_version"] for m in health["models"]] == [served["versions"][1], served["versions"][7]]
        # BentoML's Prometheus endpoint (needs the real server's metrics set-up, hence checked here).
        metrics = httpx.get(f"{base}/metrics")
        assert metrics.status_code == 200
        assert "bentoml_service_request_duration_seconds" in metrics.text
    finally:
        stop_process(process)
        log.close()
