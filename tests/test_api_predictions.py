"""Predictions over HTTP: the real BentoML service live, the score flow's rows when it cannot answer.

The prediction service is the real one (``serving.service.DirectionService``) served by uvicorn on
a loopback port in a process of its own, with a small real champion for 1d only (as in the
project, where 7d has none) over the bundled history. The API talks to it through its pooled
aiohttp session. Faults are real too: a closed port, a listener that never answers, and a local
server answering 503.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from api.main import create_app
from api.predictions.client import ML_CLIENT_STATE, MLServiceClient
from api.predictions.schemas import MAX_BATCH_ITEMS
from khalsi.db.engine import create_sync_engine, session_scope
from khalsi.db.models import Prediction
from khalsi.runtime import stop_process
from khalsi.settings import MLServiceSettings, Settings
from serving.feature_store import publish_latest_features
from tests.api_helpers import API, signed_up
from tests.test_serving import REPO_ROOT, register_model, service_env, train_direction_model, write_bundled_lake

# The replay clock's default "now": the day after the newest bundled snapshot (2024-12-31).
REPLAY_NOW = datetime(2025, 1, 1, tzinfo=UTC)
NEWEST_DAY = datetime(2024, 12, 31, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# The service's ASGI app under uvicorn, in a process of its own: BentoML registers its Prometheus
# metrics in the process-wide registry, so a second in-process app (tests/test_serving.py has one)
# would fail to start in the same pytest run.
SERVE_ASGI = """
import sys, uvicorn
from serving.service import DirectionService
uvicorn.run(DirectionService.to_asgi(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


@pytest.fixture(scope="module")
def ml_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The BentoML service over real HTTP on a free port, with a 1d champion (built once per module)."""
    root = tmp_path_factory.mktemp("predictions-serving")
    settings = Settings(_env_file=None, home=root / "home", environment="test")
    write_bundled_lake(settings)
    publish_latest_features(settings)
    version = register_model(settings, train_direction_model(settings, 1), root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The service reads its settings from the environment, as `bentoml serve` would.
    env = {**os.environ, **service_env(settings), "BENTOML_HOME": str(root / "bentoml")}
    log_path = root / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE_ASGI, str(port)], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 180
            ready = False
            while not ready and process.poll() is None and time.monotonic() < deadline:
                try:
                    ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                except httpx.TransportError:
                    time.sleep(0.2)
            assert ready, log_path.read_text(errors="replace")[-4000:]
            yield {"url": url, "version": version}
        finally:
            stop_process(process)


def with_ml_service(settings: Settings, url: str, *, timeout_seconds: float = 2.0) -> Settings:
    return settings.model_copy(update={"ml_service": MLServiceSettings(url=url, timeout_seconds=timeout_seconds)})


@pytest.fixture
def live(api_settings: Settings, ml_service: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(with_ml_service(api_settings, ml_service["url"]))) as client:
        yield client


@pytest.fixture
def service_down(api_settings: Settings) -> Iterator[TestClient]:
    """The API with the prediction service stopped: nothing listens on its port."""
    with TestClient(create_app(with_ml_service(api_settings, f"http://127.0.0.1:{free_port()}"))) as client:
        yield client


@pytest.fixture
def db(api_settings: Settings) -> Iterator[Engine]:
    engine = create_sync_engine(api_settings)
    yield engine
    engine.dispose()


def store_prediction(
    engine: Engine,
    *,
    coin_id: str = "bitcoin",
    symbol: str = "btc",
    timeframe: str = "1d",
    feature_timestamp: datetime = NEWEST_DAY,
    expires_at: datetime | None = None,
    model_version: str = "7",
    probability_up: float = 0.62,
    created_at: datetime = REPLAY_NOW - timedelta(minutes=5),
) -> dict[str, Any]:
    """A row as ``flows/score.py`` writes it (``serving.predict.prediction_rows``)."""
    price = 93_429.2
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "coin_id": coin_id,
        "symbol": symbol,
        "timeframe": timeframe,
        "probability_up": probability_up,
        "probability_down": round(1 - probability_up, 4),
        "confidence_level": round(abs(probability_up - 0.5) * 2, 4),
        "price_target": price * 1.01,
        "price_target_low": price * 0.95,
        "price_target_high": price * 1.06,
        "model_name": f"khalsi-direction-{timeframe}",
        "model_version": model_version,
        "feature_timestamp": feature_timestamp,
        "created_at": created_at,
        "expires_at": expires_at if expires_at is not None else feature_timestamp + timedelta(days=1),
        "methodology": {
            "source": "batch-score",
            "model_version": model_version,
            "price": price,
            "price_target": {"formula": "price * exp(q)", "quantiles": [0.1, 0.5, 0.9], "interval": 0.8},
        },
    }
    with session_scope(engine) as session:
        session.execute(sa.insert(Prediction), [row])
    return row


def at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# -- live ---------------------------------------------------------------------------------------


def test_a_live_prediction_is_the_services_own_answer(live: TestClient, ml_service: dict[str, Any], db: Engine) -> None:
    # A stored row with other numbers exists: the live answer must not be it.
    store_prediction(db, expires_at=REPLAY_NOW + timedelta(hours=6), probability_up=0.99, model_version="1")
    _, headers = signed_up(live)
    response = live.get(f"{API}/predictions/bitcoin", params={"horizon": "1d"}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    direct = httpx.post(f"{ml_service['url']}/predict", json={"items": [{"coin": "bitcoin", "horizon": "1d"}]})
    (expected,) = direct.json()["results"]
    assert body["source"] == "live"
    assert body["fallback_reason"] is None
    assert body["coin_id"] == "bitcoin"
    assert body["symbol"] == "btc"
    assert body["horizon"] == "1d"
    assert body["model_version"] == ml_service["version"] == expected["model_version"]
    assert body["model_name"] == "khalsi-direction-1d"
    assert body["probability_up"] == expected["probability_up"] != 0.99
    assert body["probability_down"] == expected["probability_down"]
    assert body["confidence"] == expected["confidence"]
    assert body["direction"] == expected["direction"]
    assert body["price"] == expected["price"]
    assert {k: body["price_target"][k] for k in ("median", "low", "high", "interval")} == {
        k: expected["price_target"][k] for k in ("median", "low", "high", "interval")
    }
    assert at(body["feature_timestamp"]) == at(expected["feature_timestamp"]) == NEWEST_DAY
    assert at(body["expires_at"]) == NEWEST_DAY + timedelta(days=1)
    assert at(body["generated_at"]) is not None

    # The default horizon is 1d, and a symbol in any case names the same coin.
    by_symbol = live.get(f"{API}/predictions/BTC", headers=headers).json()
    assert by_symbol["coin_id"] == "bitcoin"
    assert by_symbol["probability_up"] == body["probability_up"]


def test_the_services_item_errors_are_passed_through(live: TestClient, db: Engine) -> None:
    # Even with a stored 7d row, "no champion" is the service's answer, not an outage.
    store_prediction(db, timeframe="7d", expires_at=REPLAY_NOW + timedelta(days=3))
    _, headers = signed_up(live)
    unknown = live.get(f"{API}/predictions/notacoin", headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["detail"]["code"] == "unknown_coin"
    assert "notacoin" in unknown.json()["detail"]["message"]

    no_champion = live.get(f"{API}/predictions/bitcoin", params={"horizon": "7d"}, headers=headers)
    assert no_champion.status_code == 409
    assert no_champion.json()["detail"] == {
        "code": "model_unavailable",
        "message": "no champion model is loaded for horizon 7d",
    }

    # Cardano's bundled history ends on 2024-12-20: too old against the clock to predict from.
    stale = live.get(f"{API}/predictions/cardano", headers=headers)
    assert stale.status_code == 409
    assert stale.json()["detail"]["code"] == "stale_features"


def test_a_batch_answers_each_item_on_its_own(live: TestClient, ml_service: dict[str, Any]) -> None:
    _, headers = signed_up(live)
    items = [
        {"coin": "bitcoin", "horizon": "1d"},
        {"coin": "ETH"},
        {"coin": "notacoin", "horizon": "1d"},
        {"coin": "cardano", "horizon": "1d"},
        {"coin": "solana", "horizon": "7d"},
    ]
    response = live.post(f"{API}/predictions/batch", json={"items": items}, headers=headers)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["coin"], r["horizon"], r["status"]) for r in results] == [
        ("bitcoin", "1d", 200),
        ("ETH", "1d", 200),
        ("notacoin", "1d", 404),
        ("cardano", "1d", 409),
        ("solana", "7d", 409),
    ]
    assert [r["error"]["code"] if r["error"] else None for r in results] == [
        None,
        None,
        "unknown_coin",
        "stale_features",
        "model_unavailable",
    ]
    bitcoin, ethereum = results[0]["prediction"], results[1]["prediction"]
    assert (bitcoin["coin_id"], ethereum["coin_id"]) == ("bitcoin", "ethereum")
    assert bitcoin["source"] == ethereum["source"] == "live"
    assert ethereum["model_version"] == ml_service["version"]
    single = live.get(f"{API}/predictions/bitcoin", headers=headers).json()
    assert single["probability_up"] == bitcoin["probability_up"]


def test_the_aiohttp_session_is_made_once_per_app_and_closed_at_shutdown(
    api_settings: Settings, ml_service: dict[str, Any]
) -> None:
    app = create_app(with_ml_service(api_settings, ml_service["url"]))
    with TestClient(app) as client:
        assert getattr(app.state, ML_CLIENT_STATE, None) is None  # nothing opened before the first prediction
        _, headers = signed_up(client)
        assert client.get(f"{API}/predictions/bitcoin", headers=headers).status_code == 200
        first: MLServiceClient = getattr(app.state, ML_CLIENT_STATE)
        assert client.get(f"{API}/predictions/ethereum", headers=headers).status_code == 200
        assert getattr(app.state, ML_CLIENT_STATE) is first
        assert first.predict_url == f"{ml_service['url']}/predict"
        assert not first.session.closed
    assert first.session.closed
    assert getattr(app.state, ML_CLIENT_STATE) is None


# -- when the service cannot answer -------------------------------------------------------------


def test_a_stopped_service_falls_back_to_the_newest_unexpired_stored_prediction(
    service_down: TestClient, db: Engine
) -> None:
    store_prediction(
        db,
        feature_timestamp=NEWEST_DAY - timedelta(days=1),
        expires_at=REPLAY_NOW + timedelta(hours=6),
        model_version="6",
    )
    newest = store_prediction(db, expires_at=REPLAY_NOW + timedelta(hours=12), probability_up=0.4567)
    # Newer and from another model, but expired: never served.
    store_prediction(
        db,
        feature_timestamp=NEWEST_DAY + timedelta(hours=12),
        expires_at=REPLAY_NOW,
        model_version="8",
        probability_up=0.9,
    )
    _, headers = signed_up(service_down)
    response = service_down.get(f"{API}/predictions/BTC", params={"horizon": "1d"}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "stored"
    assert "unreachable" in body["fallback_reason"]
    assert body["coin_id"] == "bitcoin"
    assert body["model_version"] == newest["model_version"] == "7"
    assert body["probability_up"] == 0.4567
    assert body["probability_down"] == 0.5433
    assert body["confidence"] == pytest.approx(0.0866)
    assert body["direction"] == "down"
    assert body["price"] == 93_429.2
    assert body["price_target"] == {
        "median": pytest.approx(newest["price_target"]),
        "low": pytest.approx(newest["price_target_low"]),
        "high": pytest.approx(newest["price_target_high"]),
        "interval": 0.8,
    }
    assert at(body["feature_timestamp"]) == NEWEST_DAY
    assert at(body["generated_at"]) == newest["created_at"]
    assert at(body["expires_at"]) == REPLAY_NOW + timedelta(hours=12)


def test_nothing_live_and_nothing_stored_is_a_503_that_says_why(service_down: TestClient, db: Engine) -> None:
    # The score flow's own expiry: the feature day plus one day, i.e. exactly the clock's "now".
    store_prediction(db)
    store_prediction(db, coin_id="ethereum", symbol="eth", expires_at=REPLAY_NOW + timedelta(hours=1))
    _, headers = signed_up(service_down)
    response = service_down.get(f"{API}/predictions/bitcoin", headers=headers)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    detail = response.json()["detail"]
    assert detail["code"] == "prediction_unavailable"
    assert "the prediction service is unreachable" in detail["message"]
    assert "no unexpired stored prediction exists for 'bitcoin' over 1d" in detail["message"]

    # A batch: the items that have a stored answer get it, the others a 503 of their own...
    mixed = service_down.post(
        f"{API}/predictions/batch", json={"items": [{"coin": "bitcoin"}, {"coin": "ethereum"}]}, headers=headers
    )
    assert mixed.status_code == 200
    first, second = mixed.json()["results"]
    assert (first["status"], first["error"]["code"]) == (503, "prediction_unavailable")
    assert (second["status"], second["prediction"]["source"]) == (200, "stored")
    # ...and with no item answerable the whole batch is a 503.
    none = service_down.post(
        f"{API}/predictions/batch",
        json={"items": [{"coin": "bitcoin"}, {"coin": "solana", "horizon": "7d"}]},
        headers=headers,
    )
    assert none.status_code == 503
    assert none.json()["detail"]["code"] == "prediction_unavailable"


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


class _Overloaded(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": "overloaded"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def failing_service() -> Iterator[str]:
    """A service that answers every prediction with HTTP 503."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Overloaded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_timeout_or_a_5xx_also_falls_back(
    api_settings: Settings, db: Engine, silent_listener: int, failing_service: str
) -> None:
    store_prediction(db, expires_at=REPLAY_NOW + timedelta(hours=12))
    silent = with_ml_service(api_settings, f"http://127.0.0.1:{silent_listener}", timeout_seconds=0.3)
    cases = {
        "timeout": (silent, "did not answer within 0.3 s"),
        "5xx": (with_ml_service(api_settings, failing_service), 'answered HTTP 503: {"error": "overloaded"}'),
    }
    for case, (settings, reason) in cases.items():
        with TestClient(create_app(settings)) as client:
            _, headers = signed_up(client)
            response = client.get(f"{API}/predictions/bitcoin", headers=headers)
        assert response.status_code == 200, (case, response.text)
        assert response.json()["source"] == "stored", case
        assert reason in response.json()["fallback_reason"], case


# -- input and access ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "loc"),
    [
        ("/predictions/bitcoin", {"horizon": "30d"}, ["query", "horizon"]),
        ("/predictions/bit$coin", {}, ["path", "coin"]),
        ("/predictions/" + "x" * 101, {}, ["path", "coin"]),
    ],
)
def test_bad_questions_are_422_naming_the_field(
    service_down: TestClient, path: str, params: dict[str, str], loc: list[str]
) -> None:
    _, headers = signed_up(service_down)
    response = service_down.get(f"{API}{path}", params=params, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc


@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        ({"items": []}, ["body", "items"], "at least 1"),
        ({"items": [{"coin": "bitcoin"}] * (MAX_BATCH_ITEMS + 1)}, ["body", "items"], f"at most {MAX_BATCH_ITEMS}"),
        ({"items": [{"horizon": "1d"}]}, ["body", "items", 0, "coin"], "Field required"),
        ({"items": [{"coin": "bitcoin", "horizon": "2w"}]}, ["body", "items", 0, "horizon"], "'1d' or '7d'"),
        ({"items": [{"coin": "bitcoin", "colour": "red"}]}, ["body", "items", 0, "colour"], "Extra inputs"),
        ({"coins": ["bitcoin"]}, ["body", "items"], "Field required"),
    ],
)
def test_bad_batches_are_422_naming_the_field(
    service_down: TestClient, db: Engine, body: dict[str, Any], loc: list[Any], fragment: str
) -> None:
    _, headers = signed_up(service_down)
    response = service_down.post(f"{API}/predictions/batch", json=body, headers=headers)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == loc
    assert fragment in error["msg"]


def test_predictions_need_an_access_token(service_down: TestClient, db: Engine) -> None:
    store_prediction(db, expires_at=REPLAY_NOW + timedelta(hours=12))
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        single = service_down.get(f"{API}/predictions/bitcoin", headers=headers)
        batch = service_down.post(f"{API}/predictions/batch", json={"items": [{"coin": "bitcoin"}]}, headers=headers)
        assert single.status_code == batch.status_code == 401
        assert single.headers["www-authenticate"] == "Bearer"
    _, valid = signed_up(service_down)
    assert service_down.get(f"{API}/predictions/bitcoin", headers=valid).status_code == 200
