"""Alert evaluation on real PostgreSQL with real SMTP and webhook servers, and the Prefect flow over it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from api.alerts.evaluation import EvaluationSummary, evaluate_alerts
from khalsi.db.engine import async_session_factory, create_async_db_engine, create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.db.models import Notification
from khalsi.notify import Notifier, RetryPolicy
from khalsi.settings import Settings
from tests.alert_data import add_alert, add_market, add_user, alert_row, notifications_of
from tests.factories import add_prediction
from tests.notify_servers import SENDER, Mailbox, Reply, WebhookReceiver, smtp_server, smtp_settings, webhook_receiver

NOW = datetime(2025, 1, 1, tzinfo=UTC)  # the platform clock ("data now")
FRESH = NOW - timedelta(hours=1)
MAX_AGE = timedelta(hours=48)
FAST = RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01, max_backoff_seconds=0.05, timeout_seconds=2.0)


@dataclass
class World:
    """A migrated PostgreSQL database, its engines, a mail server and a webhook receiver."""

    settings: Settings
    engine: Engine
    async_engine: AsyncEngine
    mailbox: Mailbox
    hooks: WebhookReceiver

    async def evaluate(
        self, *, clock: datetime | None = None, data_now: datetime = NOW, policy: RetryPolicy = FAST, **kwargs: Any
    ) -> EvaluationSummary:
        async with httpx.AsyncClient() as http:
            notifier = Notifier(smtp=self.settings.smtp, webhooks=self.settings.webhooks, http=http, policy=policy)
            return await evaluate_alerts(
                session_factory=async_session_factory(self.async_engine),
                notifier=notifier,
                data_now=data_now,
                max_data_age=MAX_AGE,
                clock=(lambda: clock) if clock else (lambda: datetime.now(UTC)),
                **kwargs,
            )


@pytest.fixture
def servers() -> Iterator[tuple[Mailbox, WebhookReceiver]]:
    with smtp_server() as mailbox, webhook_receiver() as hooks:
        yield mailbox, hooks


def notify_settings(base: Settings, mailbox: Mailbox, hooks: WebhookReceiver) -> Settings:
    return base.model_copy(
        update={
            "smtp": base.smtp.model_validate(smtp_settings(mailbox)),
            "webhooks": base.webhooks.model_validate(
                {"allow_private_targets": True, "discord_webhook_url": hooks.url("/ops")}
            ),
        }
    )


@pytest.fixture
async def world(pg_settings: Settings, servers: tuple[Mailbox, WebhookReceiver]) -> AsyncIterator[World]:
    mailbox, hooks = servers
    settings = notify_settings(pg_settings, mailbox, hooks)
    engine = create_sync_engine(settings)
    upgrade(engine)
    async_engine = create_async_db_engine(settings)
    try:
        yield World(settings, engine, async_engine, mailbox, hooks)
    finally:
        await async_engine.dispose()
        engine.dispose()


def btc_at(world: World, price: float, *, at: datetime = FRESH, change: float | None = 2.5) -> None:
    add_market(world.engine, coin_id="bitcoin", symbol="btc", price=price, at=at, change_24h=change)


async def test_a_price_alert_fires_once_and_notifies_every_channel(world: World) -> None:
    btc_at(world, 41_000.0, at=FRESH - timedelta(days=1))
    btc_at(world, 52_345.5)  # the newest snapshot is what counts
    user_id, email = add_user(world.engine)
    hook = world.hooks.script("/alice", then=Reply(204))
    alert_id = add_alert(
        world.engine,
        user_id=user_id,
        symbol="btc",
        alert_type="price_above",
        condition={"price": 50_000},
        channels=[{"type": "email", "address": None}, {"type": "webhook", "url": hook}],
    )
    first = await world.evaluate()
    second = await world.evaluate()

    assert (first.checked, first.triggered, first.notifications, first.sent, first.failed) == (1, 1, 2, 2, 0)
    assert (second.checked, second.triggered, second.notifications) == (0, 0, 0)  # one-shot: now inactive
    [mail] = world.mailbox.messages
    assert mail.rcpt_tos == [email]
    assert mail.message["From"] == SENDER
    assert mail.message["Subject"] == "Khalsi alert: BTC price above 50,000.00 USD"
    body = mail.message.get_content()
    assert "BTC is at 52,345.50 USD (data of 2024-12-31 23:00 UTC)" in body
    [posted] = world.hooks.received("/alice")
    assert posted.json()["content"].startswith("**Khalsi alert: BTC price above 50,000.00 USD**\nBTC is at 52,345.50")

    alert = alert_row(world.engine, alert_id)
    assert alert["is_active"] is False
    assert alert["triggered_at"] is not None
    rows = notifications_of(world.engine, alert_id)
    assert sorted((r["channel"], r["target"], r["status"], r["attempts"]) for r in rows) == [
        ("email", email, "sent", 1),
        ("webhook", hook, "sent", 1),
    ]
    for row in rows:
        assert row["user_id"] == user_id
        assert row["sent_at"] is not None
        assert row["last_error"] is None
        assert row["payload"]["observed"] == {"price": 52_345.5, "as_of": FRESH.isoformat()}
        assert row["payload"]["condition"] == {"price": 50_000.0}
    assert world.hooks.received("/ops") == []  # nothing failed: operators are not bothered


async def test_concurrent_evaluations_fire_an_alert_once(world: World) -> None:
    btc_at(world, 60_000.0)
    for _ in range(5):
        user_id, _ = add_user(world.engine)
        add_alert(world.engine, user_id=user_id, symbol="btc", alert_type="price_above", condition={"price": 50_000})
    other_engine = create_async_db_engine(world.settings)
    try:
        other = World(world.settings, world.engine, other_engine, world.mailbox, world.hooks)
        results = await asyncio.gather(world.evaluate(), other.evaluate(), world.evaluate())
    finally:
        await other_engine.dispose()
    assert sum(r.triggered for r in results) == 5
    assert len(world.mailbox.messages) == 5
    assert len({tuple(m.rcpt_tos) for m in world.mailbox.messages}) == 5
    assert len(notifications_of(world.engine)) == 5


async def test_a_rate_limited_webhook_is_retried_and_recorded_as_sent(world: World) -> None:
    btc_at(world, 30_000.0)
    user_id, _ = add_user(world.engine)
    hook = world.hooks.script("/limited", Reply(429, (("Retry-After", "0.2"),)), Reply(503), then=Reply(200))
    alert_id = add_alert(
        world.engine,
        user_id=user_id,
        symbol="BTC",
        alert_type="price_below",
        condition={"price": 35_000},
        channels=[{"type": "webhook", "url": hook}],
    )
    summary = await world.evaluate()
    assert (summary.triggered, summary.sent, summary.failed) == (1, 1, 0)
    [row] = notifications_of(world.engine, alert_id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 3, None)
    assert len(world.hooks.received("/limited")) == 3


async def test_a_permanent_failure_is_recorded_keeps_the_trigger_and_spares_the_other_alerts(world: World) -> None:
    btc_at(world, 70_000.0)
    broken_user, _ = add_user(world.engine)
    fine_user, fine_email = add_user(world.engine)
    broken_hook = world.hooks.script("/down", then=Reply(500))
    world.hooks.script("/ops", then=Reply(204))
    broken = add_alert(
        world.engine,
        user_id=broken_user,
        symbol="btc",
        alert_type="price_above",
        condition={"price": 1},
        channels=[{"type": "webhook", "url": broken_hook}],
    )
    fine = add_alert(
        world.engine, user_id=fine_user, symbol="btc", alert_type="change_24h_above", condition={"percent": 2}
    )
    summary = await world.evaluate()

    assert (summary.triggered, summary.notifications, summary.sent, summary.failed) == (2, 2, 1, 1)
    [failed] = notifications_of(world.engine, broken)
    assert failed["status"] == "failed"
    assert failed["attempts"] == FAST.max_attempts
    assert "HTTP 500" in failed["last_error"]
    assert failed["sent_at"] is None
    assert len(world.hooks.received("/down")) == FAST.max_attempts
    assert alert_row(world.engine, broken)["triggered_at"] is not None  # the firing is not lost
    [sent] = notifications_of(world.engine, fine)
    assert sent["status"] == "sent"
    assert world.mailbox.to(fine_email)[0].message["Subject"] == "Khalsi alert: BTC 24h change above +2.00%"
    assert summary.ops_notified
    [ops] = world.hooks.received("/ops")
    assert "1 of 2 alert deliveries failed" in ops.json()["content"]

    again = await world.evaluate()  # a failed delivery is not re-fired by the next pass
    assert (again.triggered, again.notifications) == (0, 0)


async def test_an_unreadable_alert_is_skipped_and_the_rest_are_evaluated(world: World) -> None:
    btc_at(world, 70_000.0)
    user_id, email = add_user(world.engine)
    add_alert(world.engine, user_id=user_id, symbol="btc", alert_type="price_above", condition={"price": "lots"})
    add_alert(world.engine, user_id=user_id, symbol="btc", alert_type="moon_soon", condition={})
    good = add_alert(world.engine, user_id=user_id, symbol="btc", alert_type="price_above", condition={"price": 1})
    summary = await world.evaluate()
    assert summary.checked == 3
    assert summary.skipped == {"invalid_alert": 2}
    assert summary.triggered == 1
    assert [n["alert_id"] for n in notifications_of(world.engine)] == [good]
    assert world.mailbox.to(email)


@pytest.mark.parametrize(
    ("alert_type", "condition", "fires"),
    [
        ("price_above", {"price": 100.0}, True),
        ("price_above", {"price": 101.0}, False),
        ("price_above", {"price": 100.5}, False),  # strictly above
        ("price_below", {"price": 100.6}, True),
        ("price_below", {"price": 100.5}, False),
        ("change_24h_below", {"percent": -3}, True),
        ("change_24h_below", {"percent": -5}, False),
        ("change_24h_above", {"percent": -5}, True),
        ("probability_up_above", {"horizon": "1d", "probability": 0.6}, True),
        ("probability_up_above", {"horizon": "1d", "probability": 0.7}, False),
        ("probability_up_below", {"horizon": "7d", "probability": 0.45}, True),
        ("probability_up_below", {"horizon": "7d", "probability": 0.4}, False),
    ],
)
async def test_each_condition_type_reads_the_newest_fresh_observation(
    world: World, alert_type: str, condition: dict[str, Any], fires: bool
) -> None:
    add_market(world.engine, coin_id="ethereum", symbol="eth", price=100.5, change_24h=-4.2, at=FRESH)
    add_market(world.engine, coin_id="ethereum", symbol="eth", price=999.0, change_24h=50, at=FRESH - timedelta(days=1))
    # 1d: an older row from a former champion, then the newest; 7d: two model versions on the same point.
    add_prediction(
        world.engine,
        coin_id="ethereum",
        symbol="eth",
        timeframe="1d",
        probability_up=0.9,
        feature_timestamp=FRESH - timedelta(days=1),
    )
    add_prediction(
        world.engine, coin_id="ethereum", symbol="eth", timeframe="1d", probability_up=0.65, feature_timestamp=FRESH
    )
    add_prediction(
        world.engine,
        coin_id="ethereum",
        symbol="eth",
        timeframe="7d",
        probability_up=0.3,
        feature_timestamp=FRESH,
        model_version="1",
    )
    add_prediction(
        world.engine,
        coin_id="ethereum",
        symbol="eth",
        timeframe="7d",
        probability_up=0.42,
        feature_timestamp=FRESH,
        model_version="2",
    )
    user_id, _ = add_user(world.engine)
    add_alert(world.engine, user_id=user_id, symbol="eth", alert_type=alert_type, condition=condition)
    summary = await world.evaluate()
    assert summary.triggered == int(fires)
    assert len(world.mailbox.messages) == int(fires)
    if fires and alert_type.startswith("probability"):
        [row] = notifications_of(world.engine)
        expected = {"1d": (0.65, "1"), "7d": (0.42, "2")}[condition["horizon"]]
        assert (row["payload"]["observed"]["probability_up"], row["payload"]["observed"]["model_version"]) == expected
        assert f"(version {expected[1]})" in world.mailbox.messages[0].message.get_content()


async def test_stale_or_missing_data_never_fires(world: World) -> None:
    add_market(world.engine, coin_id="solana", symbol="sol", price=500.0, at=NOW - MAX_AGE - timedelta(hours=1))
    add_market(world.engine, coin_id="dogecoin", symbol="doge", price=1.0, change_24h=None, at=FRESH)
    add_market(world.engine, coin_id="ripple", symbol="xrp", price=2.0, at=NOW + timedelta(days=1))  # after "now"
    add_prediction(
        world.engine,
        coin_id="solana",
        symbol="sol",
        timeframe="1d",
        probability_up=0.99,
        feature_timestamp=NOW - MAX_AGE - timedelta(hours=1),
    )
    user_id, _ = add_user(world.engine)
    add_alert(world.engine, user_id=user_id, symbol="sol", alert_type="price_above", condition={"price": 1})
    add_alert(
        world.engine,
        user_id=user_id,
        symbol="sol",
        alert_type="probability_up_above",
        condition={"horizon": "1d", "probability": 0.5},
    )
    add_alert(world.engine, user_id=user_id, symbol="doge", alert_type="change_24h_above", condition={"percent": 1})
    add_alert(world.engine, user_id=user_id, symbol="xrp", alert_type="price_above", condition={"price": 1})
    summary = await world.evaluate()
    assert summary.triggered == 0
    assert summary.skipped == {"no_market_data": 2, "no_prediction": 1, "no_change_24h": 1}
    assert world.mailbox.messages == []


async def test_a_shared_ticker_means_the_coin_with_the_largest_market_cap(world: World) -> None:
    add_market(world.engine, coin_id="big-coin", symbol="dup", price=10.0, market_cap=5e9, at=FRESH)
    add_market(world.engine, coin_id="small-coin", symbol="dup", price=1000.0, market_cap=1e6, at=FRESH)
    user_id, _ = add_user(world.engine)
    alert_id = add_alert(world.engine, user_id=user_id, symbol="dup", alert_type="price_above", condition={"price": 50})
    assert (await world.evaluate()).triggered == 0
    assert notifications_of(world.engine, alert_id) == []


async def test_a_repeating_alert_waits_for_its_cooldown(world: World) -> None:
    btc_at(world, 60_000.0)
    user_id, email = add_user(world.engine)
    alert_id = add_alert(
        world.engine,
        user_id=user_id,
        symbol="btc",
        alert_type="price_above",
        condition={"price": 50_000},
        cooldown_minutes=60,
    )
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    first = await world.evaluate(clock=start)
    during = await world.evaluate(clock=start + timedelta(minutes=59))
    after = await world.evaluate(clock=start + timedelta(minutes=60))
    assert (first.triggered, during.triggered, after.triggered) == (1, 0, 1)
    assert during.skipped == {"cooling_down": 1}
    alert = alert_row(world.engine, alert_id)
    assert alert["is_active"] is True
    assert alert["triggered_at"] == start + timedelta(minutes=60)
    assert len(world.mailbox.to(email)) == 2


async def test_pending_notifications_of_an_interrupted_run_are_delivered_later(world: World) -> None:
    user_id, email = add_user(world.engine)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    recent = datetime.now(UTC)
    ids = []
    for updated_at in (long_ago, recent):
        notification_id = uuid.uuid4()
        ids.append(notification_id)
        with world.engine.begin() as connection:
            connection.execute(
                sa.insert(Notification).values(
                    id=notification_id,
                    user_id=user_id,
                    channel="email",
                    target=email,
                    payload={"subject": "Left over", "text": "from a run that stopped"},
                    status="pending",
                    created_at=updated_at,
                    updated_at=updated_at,
                )
            )
    summary = await world.evaluate()
    assert (summary.recovered, summary.sent) == (1, 1)
    statuses = {row["id"]: row["status"] for row in notifications_of(world.engine)}
    assert statuses == {ids[0]: "sent", ids[1]: "pending"}  # the recent one may still be in flight elsewhere
    assert world.mailbox.to(email)[0].message["Subject"] == "Left over"


# --- the Prefect flow ---------------------------------------------------------------------------------


async def test_the_flow_evaluates_with_the_configured_services(
    prefect_harness: None,
    pg_settings: Settings,
    servers: tuple[Mailbox, WebhookReceiver],
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
) -> None:
    import json

    import redis

    from flows.alerts import evaluate_alerts as evaluate_alerts_flow
    from khalsi.settings import get_settings
    from tests.factories import isolated_khalsi_env

    mailbox, hooks = servers
    isolated_khalsi_env(
        monkeypatch,
        HOME=str(pg_settings.home),
        DATABASE_URL=pg_settings.database.url,
        MARKET_SOURCE="coingecko",  # the wall clock is "now" (nothing is fetched here)
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(mailbox.port),
        SMTP_USER=smtp_settings(mailbox)["user"],
        SMTP_PASSWORD=smtp_settings(mailbox)["password"],
        SMTP_SENDER=SENDER,
        SMTP_USE_TLS="false",
        WEBHOOKS_ALLOW_PRIVATE_TARGETS="true",
        REDIS_URL=redis_url,
    )
    listener = redis.Redis.from_url(redis_url).pubsub()
    listener.psubscribe("khalsi:events:alerts:*")
    listener.get_message(timeout=1)  # the subscription confirmation
    try:
        settings = get_settings()
        assert settings.smtp.port == mailbox.port
        engine = create_sync_engine(settings)
        upgrade(engine)
        add_market(engine, coin_id="bitcoin", symbol="btc", price=80_000.0, at=datetime.now(UTC) - timedelta(hours=2))
        user_id, email = add_user(engine)
        hook = hooks.script("/flow", then=Reply(200))
        add_alert(
            engine,
            user_id=user_id,
            symbol="btc",
            alert_type="price_above",
            condition={"price": 75_000},
            channels=[{"type": "email"}, {"type": "webhook", "url": hook}],
        )
        first = await evaluate_alerts_flow()
        second = await evaluate_alerts_flow()
        engine.dispose()
    finally:
        get_settings.cache_clear()
    assert {k: first[k] for k in ("checked", "triggered", "notifications", "sent", "failed")} == {
        "checked": 1,
        "triggered": 1,
        "notifications": 2,
        "sent": 2,
        "failed": 0,
    }
    assert second["triggered"] == 0
    assert [m.rcpt_tos for m in mailbox.messages] == [[email]]
    assert len(hooks.received("/flow")) == 1
    # The owner's open WebSockets hear of the firing too, once, on their private channel.
    live = []
    while (message := listener.get_message(timeout=0.5)) is not None:
        if message["type"] == "pmessage":
            live.append((message["channel"].decode(), json.loads(message["data"])))
    listener.close()
    assert [channel for channel, _ in live] == [f"khalsi:events:alerts:{user_id}"]
    assert live[0][1]["type"] == "alert"
    assert live[0][1]["subject"].startswith("Khalsi alert: BTC price above")


def test_the_cli_command_runs_the_flow_and_prints_its_counts(
    prefect_harness: None, pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    from api.alerts.cli import alerts_app
    from khalsi.settings import get_settings
    from tests.factories import isolated_khalsi_env

    isolated_khalsi_env(monkeypatch, HOME=str(pg_settings.home), DATABASE_URL=pg_settings.database.url)
    khalsi = typer.Typer()  # mounted the way the integrator mounts it on `khalsi`
    khalsi.add_typer(alerts_app, name="alerts")
    try:
        result = CliRunner().invoke(khalsi, ["alerts", "evaluate", "--json"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    # Prefect may log to the same stream; the counts are the one JSON line.
    [line] = [text for text in result.output.splitlines() if text.startswith('{"')]
    counts = json.loads(line)
    assert (counts["checked"], counts["triggered"], counts["failed"]) == (0, 0, 0)
