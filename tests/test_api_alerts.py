"""Alerts and notifications over HTTP: real PostgreSQL, real SMTP and webhook servers on this machine."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.alerts.evaluation import EvaluationSummary, run_evaluation
from api.alerts.service import MAX_ALERTS_PER_USER
from api.deps import HttpDep, SettingsDep
from api.main import create_app
from api.notifications.deps import get_notifier
from khalsi.db.engine import create_sync_engine
from khalsi.db.models import Notification, UserAlert
from khalsi.notify import Notifier, RetryPolicy
from khalsi.settings import Settings
from tests.alert_data import add_market
from tests.api_helpers import API, signed_up
from tests.factories import add_coin
from tests.notify_servers import Mailbox, Reply, WebhookReceiver, smtp_server, smtp_settings, webhook_receiver

NOW = datetime(2025, 1, 1, tzinfo=UTC)
FAST = RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01, max_backoff_seconds=0.05, timeout_seconds=2.0)
PRICE_ALERT = {"symbol": "BTC", "alert_type": "price_above", "condition": {"price": 50_000}}


def stored(settings: Settings, model: type[UserAlert] | type[Notification]) -> list[dict[str, Any]]:
    engine = create_sync_engine(settings)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sa.select(model.__table__)).mappings().all()]
    finally:
        engine.dispose()


def with_coins(settings: Settings) -> None:
    engine = create_sync_engine(settings)
    try:
        add_coin(engine, coin_id="bitcoin", symbol="btc", name="Bitcoin")
        add_coin(engine, coin_id="ethereum", symbol="eth", name="Ethereum")
    finally:
        engine.dispose()


@pytest.fixture
def servers() -> Iterator[tuple[Mailbox, WebhookReceiver]]:
    with smtp_server() as mailbox, webhook_receiver() as hooks:
        yield mailbox, hooks


@pytest.fixture
def notify_settings(api_settings: Settings, servers: tuple[Mailbox, WebhookReceiver]) -> Settings:
    """The API's settings with the local SMTP server, and webhooks to this machine allowed."""
    mailbox, _ = servers
    settings = api_settings.model_copy(
        update={
            "smtp": api_settings.smtp.model_validate(smtp_settings(mailbox)),
            "webhooks": api_settings.webhooks.model_validate({"allow_private_targets": True}),
        }
    )
    with_coins(settings)
    return settings


@pytest.fixture
def client(notify_settings: Settings) -> Iterator[TestClient]:
    app = create_app(notify_settings)

    def fast_notifier(settings: SettingsDep, http: HttpDep) -> Notifier:
        return Notifier(smtp=settings.smtp, webhooks=settings.webhooks, http=http, policy=FAST)

    # Same senders, shorter back-off: retrying through the API stays quick when the target keeps failing.
    app.dependency_overrides[get_notifier] = fast_notifier
    with TestClient(app) as test_client:
        yield test_client


def evaluate(settings: Settings) -> EvaluationSummary:
    return asyncio.run(run_evaluation(settings, data_now=NOW, policy=FAST))


def market(settings: Settings, *, btc: float) -> None:
    engine = create_sync_engine(settings)
    try:
        add_market(engine, coin_id="bitcoin", symbol="btc", price=btc, at=NOW - timedelta(hours=1), change_24h=1.0)
    finally:
        engine.dispose()


# --- alerts CRUD ---------------------------------------------------------------------------------------


def test_create_read_list_update_and_delete_an_alert(client: TestClient, notify_settings: Settings) -> None:
    user, headers = signed_up(client)
    created = client.post(f"{API}/alerts", json=PRICE_ALERT, headers=headers)
    assert created.status_code == 201, created.text
    alert = created.json()
    assert alert["symbol"] == "btc"
    assert alert["alert_type"] == "price_above"
    assert alert["condition"] == {"price": 50_000.0}
    assert alert["channels"] == [{"type": "email", "address": None}]  # the account's own address
    assert alert["cooldown_minutes"] is None
    assert alert["is_active"] is True
    assert alert["triggered_at"] is None
    [row] = stored(notify_settings, UserAlert)
    assert row["condition"] == {
        "price": 50_000.0,
        "channels": [{"type": "email", "address": None}],
        "cooldown_minutes": None,
    }

    second = client.post(
        f"{API}/alerts",
        json={
            "symbol": "eth",
            "alert_type": "probability_up_below",
            "condition": {"horizon": "7d", "probability": 0.3},
            "channels": [
                {"type": "webhook", "url": "https://hooks.example.org/a"},
                {"type": "email", "address": user["email"].upper()},  # the account's own, any case
            ],
            "cooldown_minutes": 120,
        },
        headers=headers,
    ).json()
    listing = client.get(f"{API}/alerts", headers=headers).json()
    assert [item["id"] for item in listing["items"]] == [second["id"], alert["id"]]  # newest first
    assert listing["total"] == 2
    page = client.get(f"{API}/alerts", params={"limit": 1, "offset": 1}, headers=headers).json()
    assert [item["id"] for item in page["items"]] == [alert["id"]]
    assert client.get(f"{API}/alerts/{alert['id']}", headers=headers).json() == alert

    patched = client.patch(
        f"{API}/alerts/{alert['id']}",
        json={"condition": {"price": 60_000}, "cooldown_minutes": 30, "is_active": False},
        headers=headers,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["condition"] == {"price": 60_000.0}
    assert patched.json()["cooldown_minutes"] == 30
    assert patched.json()["is_active"] is False
    assert patched.json()["channels"] == alert["channels"]  # left out: kept
    inactive = client.get(f"{API}/alerts", params={"active": "false"}, headers=headers).json()
    assert [item["id"] for item in inactive["items"]] == [alert["id"]]

    assert client.delete(f"{API}/alerts/{alert['id']}", headers=headers).status_code == 204
    assert client.get(f"{API}/alerts/{alert['id']}", headers=headers).status_code == 404
    assert [row["id"] for row in stored(notify_settings, UserAlert)] == [uuid.UUID(second["id"])]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({**PRICE_ALERT, "alert_type": "moon_soon"}, "price_above"),
        ({**PRICE_ALERT, "condition": {"price": 0}}, "greater than 0"),
        ({**PRICE_ALERT, "condition": {"price": -5}}, "greater than 0"),
        ({**PRICE_ALERT, "condition": {"price": "lots"}}, "valid number"),
        ({**PRICE_ALERT, "condition": {"percent": 5}}, "price"),
        ({**PRICE_ALERT, "condition": {"price": 5, "percent": 5}}, "Extra inputs"),
        ({**PRICE_ALERT, "condition": {}}, "Field required"),
        (
            {**PRICE_ALERT, "alert_type": "change_24h_above", "condition": {"percent": -150}},
            "greater than or equal to -100",
        ),
        (
            {**PRICE_ALERT, "alert_type": "probability_up_above", "condition": {"horizon": "1d", "probability": 1}},
            "less than 1",
        ),
        (
            {**PRICE_ALERT, "alert_type": "probability_up_above", "condition": {"horizon": "30d", "probability": 0.6}},
            "'1d' or '7d'",
        ),
        ({**PRICE_ALERT, "symbol": "BT C"}, "pattern"),
        ({**PRICE_ALERT, "symbol": "NOPE"}, "no tracked coin has the symbol 'NOPE'"),
        ({**PRICE_ALERT, "channels": []}, "at least 1 item"),
        ({**PRICE_ALERT, "channels": [{"type": "sms", "number": "123"}]}, "'email', 'webhook'"),
        ({**PRICE_ALERT, "channels": [{"type": "email", "address": "not-an-email"}]}, "email address"),
        ({**PRICE_ALERT, "channels": [{"type": "webhook", "url": "ftp://example.com/x"}]}, "http:// or https://"),
        ({**PRICE_ALERT, "channels": [{"type": "email"}, {"type": "email"}]}, "listed twice"),
        ({**PRICE_ALERT, "channels": [{"type": "email"}] * 6}, "at most 5 items"),
        ({**PRICE_ALERT, "cooldown_minutes": 1}, "greater than or equal to 5"),
        ({**PRICE_ALERT, "is_active": False, "user_id": str(uuid.uuid4())}, "Extra inputs"),
    ],
)
def test_bad_alerts_get_a_clear_422_and_store_nothing(
    client: TestClient, notify_settings: Settings, body: dict[str, Any], fragment: str
) -> None:
    _, headers = signed_up(client)
    response = client.post(f"{API}/alerts", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert fragment in response.text
    assert stored(notify_settings, UserAlert) == []


def test_an_unknown_symbol_names_the_field(client: TestClient) -> None:
    _, headers = signed_up(client)
    response = client.post(f"{API}/alerts", json={**PRICE_ALERT, "symbol": "zzz"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "symbol"]


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"condition": {"horizon": "1d", "probability": 0.5}}, "Extra inputs"),  # not a price condition
        ({"condition": {"price": -1}}, "greater than 0"),
        ({"condition": None}, "cannot be null"),
        ({"channels": []}, "at least 1 item"),
        ({"alert_type": "price_below"}, "Extra inputs"),
        ({"symbol": "eth"}, "Extra inputs"),
        ({"cooldown_minutes": 10**6}, "less than or equal to"),
    ],
)
def test_updates_are_checked_against_the_alerts_own_type_and_change_nothing_when_bad(
    client: TestClient, notify_settings: Settings, patch: dict[str, Any], fragment: str
) -> None:
    _, headers = signed_up(client)
    alert = client.post(f"{API}/alerts", json=PRICE_ALERT, headers=headers).json()
    before = stored(notify_settings, UserAlert)
    response = client.patch(f"{API}/alerts/{alert['id']}", json=patch, headers=headers)
    assert response.status_code == 422, response.text
    assert fragment in response.text
    if patch.get("condition"):
        assert response.json()["detail"][0]["loc"][:2] == ["body", "condition"]
    assert stored(notify_settings, UserAlert) == before


def test_someone_elses_alert_is_a_404_and_stays_untouched(client: TestClient, notify_settings: Settings) -> None:
    _, owner = signed_up(client)
    _, intruder = signed_up(client)
    alert = client.post(f"{API}/alerts", json=PRICE_ALERT, headers=owner).json()
    before = stored(notify_settings, UserAlert)
    url = f"{API}/alerts/{alert['id']}"
    for response in (
        client.get(url, headers=intruder),
        client.patch(url, json={"is_active": False}, headers=intruder),
        client.delete(url, headers=intruder),
    ):
        assert response.status_code == 404
        assert response.json() == {"detail": "alert not found"}
    assert client.get(f"{API}/alerts/{uuid.uuid4()}", headers=owner).status_code == 404  # same answer as a stranger's
    assert client.get(f"{API}/alerts", headers=intruder).json()["items"] == []
    assert stored(notify_settings, UserAlert) == before
    assert client.get(f"{API}/alerts/not-a-uuid", headers=owner).status_code == 422


def test_alerts_and_notifications_need_a_token(client: TestClient) -> None:
    for method, path in (
        ("GET", "/alerts"),
        ("POST", "/alerts"),
        ("GET", "/notifications"),
        ("POST", f"/notifications/{uuid.uuid4()}/retry"),
    ):
        assert client.request(method, f"{API}{path}", json=PRICE_ALERT).status_code == 401


def test_an_account_holds_a_bounded_number_of_alerts(client: TestClient, notify_settings: Settings) -> None:
    _, headers = signed_up(client)
    for index in range(MAX_ALERTS_PER_USER):
        body = {**PRICE_ALERT, "condition": {"price": 1000 + index}}
        assert client.post(f"{API}/alerts", json=body, headers=headers).status_code == 201
    over = client.post(f"{API}/alerts", json=PRICE_ALERT, headers=headers)
    assert over.status_code == 409
    assert f"at most {MAX_ALERTS_PER_USER} alerts" in over.json()["detail"]
    assert len(stored(notify_settings, UserAlert)) == MAX_ALERTS_PER_USER
    _, other = signed_up(client)  # the limit is per account
    assert client.post(f"{API}/alerts", json=PRICE_ALERT, headers=other).status_code == 201


# --- SSRF -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://localhost:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/hook",
        "http://[::1]:5432/",
        "http://2130706433/",
        "http://metadata.google.internal/",
        "http://redis/",
    ],
)
def test_webhooks_to_internal_targets_are_refused_by_default(
    api_client: TestClient, api_settings: Settings, url: str
) -> None:
    with_coins(api_settings)
    _, headers = signed_up(api_client)
    body = {**PRICE_ALERT, "channels": [{"type": "webhook", "url": url}]}
    refused = api_client.post(f"{API}/alerts", json=body, headers=headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "channels", 0, "url"]
    assert stored(api_settings, UserAlert) == []

    alert = api_client.post(f"{API}/alerts", json=PRICE_ALERT, headers=headers).json()
    patched = api_client.patch(f"{API}/alerts/{alert['id']}", json={"channels": body["channels"]}, headers=headers)
    assert patched.status_code == 422
    assert [row["condition"]["channels"] for row in stored(api_settings, UserAlert)] == [
        [{"type": "email", "address": None}]
    ]

    public = {**PRICE_ALERT, "channels": [{"type": "webhook", "url": "https://discord.com/api/webhooks/1/t"}]}
    assert api_client.post(f"{API}/alerts", json=public, headers=headers).status_code == 201


# --- firing, notifications, retry ---------------------------------------------------------------------------


def test_a_fired_one_shot_alert_is_rearmed_by_its_owner(
    client: TestClient, notify_settings: Settings, servers: tuple[Mailbox, WebhookReceiver]
) -> None:
    mailbox, _ = servers
    user, headers = signed_up(client)
    alert = client.post(f"{API}/alerts", json=PRICE_ALERT, headers=headers).json()
    market(notify_settings, btc=55_000)
    assert evaluate(notify_settings).triggered == 1
    fired = client.get(f"{API}/alerts/{alert['id']}", headers=headers).json()
    assert fired["is_active"] is False
    assert fired["triggered_at"] is not None
    assert evaluate(notify_settings).triggered == 0

    rearmed = client.patch(f"{API}/alerts/{alert['id']}", json={"is_active": True}, headers=headers).json()
    assert rearmed["is_active"] is True
    assert evaluate(notify_settings).triggered == 1
    assert [m.rcpt_tos for m in mailbox.messages] == [[user["email"]], [user["email"]]]


def test_notifications_are_listed_newest_first_for_their_owner_only(
    client: TestClient, notify_settings: Settings, servers: tuple[Mailbox, WebhookReceiver]
) -> None:
    _, hooks = servers
    _, alice = signed_up(client)
    _, bob = signed_up(client)
    hook = hooks.script("/alice", then=Reply(204))
    client.post(
        f"{API}/alerts",
        json={**PRICE_ALERT, "channels": [{"type": "email"}, {"type": "webhook", "url": hook}]},
        headers=alice,
    )
    client.post(f"{API}/alerts", json=PRICE_ALERT, headers=bob)
    market(notify_settings, btc=51_000)
    assert evaluate(notify_settings).notifications == 3
    # One more for Alice, later.
    client.post(f"{API}/alerts", json={**PRICE_ALERT, "condition": {"price": 50_500}}, headers=alice)
    assert evaluate(notify_settings).notifications == 1

    mine = client.get(f"{API}/notifications", headers=alice).json()
    theirs = client.get(f"{API}/notifications", headers=bob).json()
    assert mine["total"] == 3
    assert theirs["total"] == 1
    assert not {n["id"] for n in mine["items"]} & {n["id"] for n in theirs["items"]}
    created = [n["created_at"] for n in mine["items"]]
    assert created == sorted(created, reverse=True)
    assert mine["items"][0]["payload"]["condition"] == {"price": 50_500.0}
    assert all(n["status"] == "sent" and n["attempts"] == 1 for n in mine["items"])
    page = client.get(f"{API}/notifications", params={"offset": 2, "limit": 1}, headers=alice).json()
    assert [n["id"] for n in page["items"]] == [mine["items"][2]["id"]]
    assert client.get(f"{API}/notifications", params={"status": "failed"}, headers=alice).json()["total"] == 0
    assert client.get(f"{API}/notifications", params={"status": "lost"}, headers=alice).status_code == 422
    assert client.get(f"{API}/notifications/{theirs['items'][0]['id']}", headers=alice).status_code == 404
    assert client.get(f"{API}/notifications/{mine['items'][0]['id']}", headers=alice).json() == mine["items"][0]


def test_a_failed_notification_is_retried_by_its_owner_only(
    client: TestClient, notify_settings: Settings, servers: tuple[Mailbox, WebhookReceiver]
) -> None:
    _, hooks = servers
    _, owner = signed_up(client)
    _, intruder = signed_up(client)
    hook = hooks.script("/flaky", then=Reply(500))
    client.post(f"{API}/alerts", json={**PRICE_ALERT, "channels": [{"type": "webhook", "url": hook}]}, headers=owner)
    market(notify_settings, btc=51_000)
    summary = evaluate(notify_settings)
    assert (summary.triggered, summary.failed) == (1, 1)
    [failed] = client.get(f"{API}/notifications", headers=owner).json()["items"]
    assert failed["status"] == "failed"
    assert failed["attempts"] == FAST.max_attempts
    assert "HTTP 500" in failed["last_error"]
    retry_url = f"{API}/notifications/{failed['id']}/retry"

    assert client.post(retry_url, headers=intruder).status_code == 404
    assert len(hooks.received("/flaky")) == FAST.max_attempts  # the intruder sent nothing

    still_failing = client.post(retry_url, headers=owner)
    assert still_failing.status_code == 200
    assert still_failing.json()["status"] == "failed"
    assert still_failing.json()["attempts"] == 2 * FAST.max_attempts

    hooks.script("/flaky", then=Reply(204))  # the receiver is back
    retried = client.post(retry_url, headers=owner)
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert body["status"] == "sent"
    assert body["attempts"] == 2 * FAST.max_attempts + 1
    assert body["last_error"] is None
    assert body["sent_at"] is not None
    assert (
        hooks.received("/flaky")[-1].json()["content"]
        == f"**{failed['payload']['subject']}**\n{failed['payload']['text']}"
    )

    again = client.post(retry_url, headers=owner)
    assert again.status_code == 409
    assert "only failed notifications can be retried; this one is sent" in again.json()["detail"]
    [row] = stored(notify_settings, Notification)
    assert (row["status"], row["attempts"]) == ("sent", 2 * FAST.max_attempts + 1)


def test_e_mail_alerts_go_only_to_the_accounts_own_address(client: TestClient, notify_settings: Settings) -> None:
    """Otherwise anyone could make the platform mail strangers (a spam relay with Khalsi's name on it)."""
    user, headers = signed_up(client)
    elsewhere = {**PRICE_ALERT, "channels": [{"type": "email", "address": "victim@example.net"}]}
    refused = client.post(f"{API}/alerts", json=elsewhere, headers=headers)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "channels", 0, "address"]
    assert "your account's address" in refused.json()["detail"][0]["msg"]
    assert stored(notify_settings, UserAlert) == []
    alert = client.post(f"{API}/alerts", json=PRICE_ALERT, headers=headers).json()
    patch = client.patch(
        f"{API}/alerts/{alert['id']}",
        json={"channels": [{"type": "email", "address": user["email"]}, {"type": "email", "address": "x@example.net"}]},
        headers=headers,
    )
    assert patch.status_code == 422
    assert patch.json()["detail"][0]["loc"] == ["body", "channels", 1, "address"]
    assert client.get(f"{API}/alerts/{alert['id']}", headers=headers).json()["channels"] == alert["channels"]
