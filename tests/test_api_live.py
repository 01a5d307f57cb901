"""Live updates over WebSocket: real Redis pub/sub from publisher to socket, heartbeats, auth."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from api.main import create_app
from khalsi.db.engine import create_sync_engine
from khalsi.events import publish_events
from khalsi.settings import Settings
from tests.api_helpers import API, bearer, login, register, signed_up

WS = f"{API}/ws"


def _with_heartbeat(settings: Settings, interval_ms: int, timeout_ms: int) -> Settings:
    return settings.model_copy(
        update={
            "ws": settings.ws.model_copy(update={"heartbeat_interval": interval_ms, "heartbeat_timeout": timeout_ms})
        }
    )


@pytest.fixture
def live_client(api_settings: Settings) -> Iterator[TestClient]:
    # A long heartbeat: these tests are about events, not pings.
    with TestClient(create_app(_with_heartbeat(api_settings, 60_000, 5_000))) as client:
        assert client.portal is not None
        assert client.portal.call(client.app.state.live_hub.wait_until_live, 5.0)  # type: ignore[attr-defined]
        yield client


def _receive_until(ws: Any, kind: str) -> dict[str, Any]:
    for _ in range(20):
        message: dict[str, Any] = ws.receive_json()
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind!r} message")


def test_a_subscriber_gets_its_coins_and_only_its_own_alerts(live_client: TestClient, api_settings: Settings) -> None:
    user, headers = signed_up(live_client)
    other_user_id = str(uuid.uuid4())
    with live_client.websocket_connect(WS, headers=headers) as ws:
        welcome = ws.receive_json()
        assert welcome["type"] == "welcome"
        assert welcome["user_id"] == user["id"]
        assert welcome["live"] is True
        ws.send_json({"type": "subscribe", "channels": ["prices:bitcoin", "alerts"]})
        assert ws.receive_json() == {"type": "subscribed", "channels": ["alerts:" + user["id"], "prices:bitcoin"]}
        sent = publish_events(
            api_settings,
            [
                ("prices:ethereum", {"type": "price", "coin_id": "ethereum", "price": 3000.0}),
                (f"alerts:{other_user_id}", {"type": "alert", "detail": "someone else's"}),
                ("prices:bitcoin", {"type": "price", "coin_id": "bitcoin", "price": 97000.5}),
                (f"alerts:{user['id']}", {"type": "alert", "detail": "yours"}),
            ],
        )
        assert sent == 4
        first, second = ws.receive_json(), ws.receive_json()
    assert first == {"type": "price", "coin_id": "bitcoin", "price": 97000.5, "channel": "prices:bitcoin"}
    assert second == {"type": "alert", "detail": "yours", "channel": f"alerts:{user['id']}"}


def test_a_wildcard_follows_every_coin_and_unsubscribe_stops_it(
    live_client: TestClient, api_settings: Settings
) -> None:
    _, headers = signed_up(live_client)
    with live_client.websocket_connect(WS, headers=headers) as ws:
        ws.receive_json()
        ws.send_json({"type": "subscribe", "channels": ["predictions:*", "predictions:solana"]})
        ws.receive_json()
        publish_events(api_settings, [("predictions:solana", {"type": "prediction", "probability_up": 0.52})])
        assert ws.receive_json()["probability_up"] == 0.52  # once, though two subscriptions match
        ws.send_json({"type": "unsubscribe", "channels": ["predictions:*", "predictions:solana"]})
        assert ws.receive_json() == {"type": "unsubscribed", "channels": []}
        publish_events(api_settings, [("predictions:solana", {"type": "prediction", "probability_up": 0.4})])
        ws.send_json({"type": "subscribe", "channels": ["prices:bitcoin"]})
        assert ws.receive_json()["type"] == "subscribed"  # nothing from solana came before it


def test_browsers_authenticate_with_a_first_message_and_bad_messages_get_errors(live_client: TestClient) -> None:
    user = register(live_client)
    tokens = login(live_client, email=user["email"])
    with live_client.websocket_connect(WS) as ws:
        ws.send_json({"type": "auth", "token": tokens["access_token"]})
        assert ws.receive_json()["type"] == "welcome"
        ws.send_text("not json")
        assert ws.receive_json() == {"type": "error", "detail": "messages must be JSON objects"}
        ws.send_json({"type": "subscribe", "channels": ["alerts:" + str(uuid.uuid4())]})
        assert "unknown channel" in ws.receive_json()["detail"]  # nobody reads another user's alerts
        ws.send_json({"type": "subscribe", "channels": ["prices:../../etc"]})
        assert "unknown channel" in ws.receive_json()["detail"]
        ws.send_json({"type": "subscribe", "channels": ["prices:bitcoin"], "pad": "x" * 5000})
        assert "4096 bytes" in ws.receive_json()["detail"]
        ws.send_json({"type": "dance"})
        assert "unknown message type" in ws.receive_json()["detail"]


@pytest.mark.parametrize(
    "first_message", [None, {"type": "auth", "token": "forged"}, {"type": "subscribe", "channels": ["alerts"]}]
)
def test_unauthenticated_sockets_are_closed(api_settings: Settings, first_message: dict[str, Any] | None) -> None:
    with (
        TestClient(create_app(_with_heartbeat(api_settings, 60_000, 300))) as client,
        client.websocket_connect(WS) as ws,
    ):
        if first_message is not None:
            ws.send_json(first_message)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4401


def test_a_client_that_stops_answering_pings_is_dropped(api_settings: Settings) -> None:
    with TestClient(create_app(_with_heartbeat(api_settings, 150, 150))) as client:
        _, headers = signed_up(client)
        with client.websocket_connect(WS, headers=headers) as ws:
            ws.receive_json()
            for _ in range(3):  # answered pings keep it open
                assert _receive_until(ws, "ping")["type"] == "ping"
                ws.send_json({"type": "pong"})
            _receive_until(ws, "ping")
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
    assert closed.value.code == 4000


def test_logging_out_closes_the_socket_and_the_session_records_it(api_settings: Settings) -> None:
    engine = create_sync_engine(api_settings)
    with TestClient(create_app(_with_heartbeat(api_settings, 150, 2_000))) as client:
        user = register(client)
        tokens = login(client, email=user["email"])
        with client.websocket_connect(WS, headers=bearer(tokens)) as ws:
            socket_id = ws.receive_json()["socket_id"]
            with engine.connect() as connection:
                stored = connection.execute(sa.text("SELECT socket_id FROM user_sessions")).scalar_one()
            assert stored == socket_id
            assert client.post(f"{API}/auth/logout", headers=bearer(tokens)).status_code == 204
            with engine.connect() as connection:
                assert connection.execute(sa.text("SELECT socket_id FROM user_sessions")).scalar_one() is None
            with pytest.raises(WebSocketDisconnect) as closed:
                _answer_pings_until_closed(ws)
        assert closed.value.code == 4401
    engine.dispose()


def _answer_pings_until_closed(ws: Any) -> None:
    for _ in range(20):
        if ws.receive_json()["type"] == "ping":
            ws.send_json({"type": "pong"})


def test_a_closed_socket_is_cleared_from_its_session(api_settings: Settings) -> None:
    engine = create_sync_engine(api_settings)
    with TestClient(create_app(api_settings)) as client:
        _, headers = signed_up(client)
        with client.websocket_connect(WS, headers=headers) as ws:
            assert ws.receive_json()["type"] == "welcome"
        cleared = None
        for _ in range(50):  # the server notices the close asynchronously
            with engine.connect() as connection:
                cleared = connection.execute(sa.text("SELECT socket_id FROM user_sessions")).scalar_one()
            if cleared is None:
                break
            client.portal.call(anyio.sleep, 0.05)  # type: ignore[union-attr]
        assert cleared is None
    engine.dispose()


def test_without_redis_the_socket_works_and_says_events_cannot_arrive(
    api_settings: Settings,
) -> None:
    settings = api_settings.model_copy(update={"redis": api_settings.redis.model_copy(update={"url": ""})})
    with TestClient(create_app(settings)) as client:
        _, headers = signed_up(client)
        with client.websocket_connect(WS, headers=headers) as ws:
            welcome = ws.receive_json()
    assert welcome["live"] is False
    assert "Redis is not configured" in welcome["reason"]


def test_publishing_never_fails_the_publisher(api_settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    down = api_settings.model_copy(
        update={"redis": api_settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{closed_port}/0"})}
    )
    assert publish_events(down, [("prices:bitcoin", {"type": "price"})]) == 0
    unset = api_settings.model_copy(update={"redis": api_settings.redis.model_copy(update={"url": ""})})
    assert publish_events(unset, [("prices:bitcoin", {"type": "price"})]) == 0
