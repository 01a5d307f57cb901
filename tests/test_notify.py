"""Senders over real sockets: e-mail to a local aiosmtpd server, webhooks to a local HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from khalsi.notify import DeliveryResult, Message, Notifier, RetryPolicy, UnsafeTargetError, check_webhook_url
from khalsi.notify.email import EmailSender
from khalsi.notify.retry import parse_retry_after
from khalsi.notify.targets import ensure_public_destination
from khalsi.notify.webhook import WebhookSender
from khalsi.settings import SMTPSettings, WebhookSettings
from tests.notify_servers import (
    SENDER,
    SMTP_USER,
    Mailbox,
    Reply,
    WebhookReceiver,
    free_port,
    smtp_server,
    smtp_settings,
    webhook_receiver,
)

# Short waits so failing paths stay quick; the delays asked for are recorded, then really slept.
FAST = RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01, max_backoff_seconds=0.05, timeout_seconds=2.0)


class RecordingSleep:
    """asyncio.sleep that also remembers each wait it was asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        import asyncio

        self.delays.append(seconds)
        await asyncio.sleep(seconds)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as server:
        yield server


def email_sender(mailbox: Mailbox, *, policy: RetryPolicy = FAST, **overrides: object) -> EmailSender:
    return EmailSender(SMTPSettings(**{**smtp_settings(mailbox), **overrides}), policy=policy)


# --- e-mail -------------------------------------------------------------------------------------------


async def test_email_reaches_the_smtp_server_with_its_headers_and_body(mailbox: Mailbox) -> None:
    result = await email_sender(mailbox).send(
        to="alice@example.com", subject="Khalsi alert: BTC price above 50,000.00 USD", text="BTC is at 51,000.00 USD."
    )
    assert result == DeliveryResult(ok=True, attempts=1, detail=f"accepted by 127.0.0.1:{mailbox.port}")
    [mail] = mailbox.messages
    assert mail.authenticated_as == SMTP_USER  # settings.smtp.user/password were used to log in
    assert mail.mail_from == SENDER
    assert mail.rcpt_tos == ["alice@example.com"]
    message = mail.message
    assert message["From"] == SENDER
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Khalsi alert: BTC price above 50,000.00 USD"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@khalsi.test>")
    assert message["Date"]
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "BTC is at 51,000.00 USD."


async def test_a_wrong_smtp_password_fails_at_once_and_sends_nothing(mailbox: Mailbox) -> None:
    result = await email_sender(mailbox, password="not-the-password").send(to="a@example.com", subject="s", text="t")
    assert not result.ok
    assert result.attempts == 1  # 535 is permanent: retrying would only lock the account
    assert "535" in (result.error or "")
    assert mailbox.messages == []


async def test_a_deferred_message_is_retried_until_accepted(mailbox: Mailbox) -> None:
    mailbox.data_replies.extend(["451 4.3.0 Try again later"])
    result = await email_sender(mailbox).send(to="b@example.com", subject="s", text="t")
    assert result.ok
    assert result.attempts == 2
    assert mailbox.data_commands == 2
    assert len(mailbox.messages) == 1


async def test_a_refused_message_is_a_permanent_failure(mailbox: Mailbox) -> None:
    mailbox.data_replies.extend(["550 5.7.1 Message rejected"])
    result = await email_sender(mailbox).send(to="c@example.com", subject="s", text="t")
    assert not result.ok
    assert result.attempts == 1
    assert "550" in (result.error or "")
    assert mailbox.data_commands == 1


async def test_an_unreachable_smtp_server_is_retried_then_reported() -> None:
    sender = EmailSender(SMTPSettings(host="127.0.0.1", port=free_port(), use_tls=False, sender=SENDER), policy=FAST)
    result = await sender.send(to="d@example.com", subject="s", text="t")
    assert not result.ok
    assert result.attempts == FAST.max_attempts
    assert "ConnectionRefused" in (result.error or "")
    assert "gave up after 3 attempts" in (result.error or "")


async def test_starttls_required_but_not_offered_is_refused_not_downgraded(mailbox: Mailbox) -> None:
    result = await email_sender(mailbox, use_tls=True).send(to="e@example.com", subject="s", text="t")
    assert not result.ok
    assert result.attempts == 1
    assert "STARTTLS" in (result.error or "")
    assert mailbox.messages == []


# --- webhooks -----------------------------------------------------------------------------------------


async def test_webhook_posts_discord_json(receiver: WebhookReceiver) -> None:
    url = receiver.script("/discord", then=Reply(204))
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=FAST).send(url=url, text="BTC @everyone up")
    assert result.ok
    assert result.attempts == 1
    [request] = receiver.received("/discord")
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {"content": "BTC @everyone up", "allowed_mentions": {"parse": []}}


async def test_webhook_429_waits_what_retry_after_says_then_succeeds(receiver: WebhookReceiver) -> None:
    url = receiver.script("/limited", Reply(429, (("Retry-After", "1"),), b'{"retry_after": 1.0}'), then=Reply(200))
    sleep = RecordingSleep()
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=FAST, sleep=sleep).send(url=url, text="hi")
    assert result.ok
    assert result.attempts == 2
    assert sleep.delays == [1.0]  # the server's wait, not the (much shorter) back-off
    first, second = receiver.received("/limited")
    assert second.received_at - first.received_at >= 1.0


async def test_webhook_retry_after_as_a_date_and_in_the_body_are_honoured(receiver: WebhookReceiver) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    url = receiver.script(
        "/dates",
        Reply(429, (("Retry-After", later),)),
        Reply(429, (("Content-Type", "application/json"),), b'{"retry_after": 0.25, "global": false}'),
        then=Reply(200),
    )
    sleep = RecordingSleep()
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=FAST, sleep=sleep).send(url=url, text="x")
    assert result.ok
    assert result.attempts == 3
    assert 0 < sleep.delays[0] <= 2.0
    assert sleep.delays[1] == 0.25


async def test_webhook_500_forever_gives_up_after_the_policy_attempts(receiver: WebhookReceiver) -> None:
    url = receiver.script("/down", then=Reply(500))
    sleep = RecordingSleep()
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=FAST, sleep=sleep).send(url=url, text="x")
    assert not result.ok
    assert result.attempts == FAST.max_attempts
    assert len(receiver.received("/down")) == FAST.max_attempts
    assert "HTTP 500" in (result.error or "")
    assert len(sleep.delays) == FAST.max_attempts - 1
    assert all(0 < delay <= FAST.max_backoff_seconds for delay in sleep.delays)


async def test_webhook_asking_to_wait_too_long_is_recorded_not_waited(receiver: WebhookReceiver) -> None:
    url = receiver.script("/slow-down", then=Reply(429, (("Retry-After", "3600"),)))
    sleep = RecordingSleep()
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=FAST, sleep=sleep).send(url=url, text="x")
    assert not result.ok
    assert result.attempts == 1
    assert sleep.delays == []
    assert "asked to wait 3600s" in (result.error or "")


async def test_webhook_timeout_is_retried(receiver: WebhookReceiver) -> None:
    url = receiver.script("/sluggish", Reply(200, delay_seconds=1.5), then=Reply(200))
    policy = RetryPolicy(max_attempts=2, initial_backoff_seconds=0.01, timeout_seconds=0.3)
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=policy).send(url=url, text="x")
    assert result.ok
    assert result.attempts == 2


async def test_webhook_connection_refused_is_retried_then_reported() -> None:
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=FAST).send(
            url=f"http://127.0.0.1:{free_port()}/hook", text="x"
        )
    assert not result.ok
    assert result.attempts == FAST.max_attempts
    assert "ConnectError" in (result.error or "")


@pytest.mark.parametrize("status", [400, 401, 404, 410])
async def test_webhook_client_errors_are_not_retried(receiver: WebhookReceiver, status: int) -> None:
    url = receiver.script(f"/gone-{status}", then=Reply(status, body=b"Unknown Webhook"))
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=FAST).send(url=url, text="x")
    assert not result.ok
    assert result.attempts == 1
    assert f"HTTP {status}" in (result.error or "")
    assert "Unknown Webhook" in (result.error or "")


async def test_webhook_redirects_are_not_followed(receiver: WebhookReceiver) -> None:
    url = receiver.script("/moved", then=Reply(302, (("Location", receiver.url("/inner")),)))
    async with httpx.AsyncClient() as http:
        result = await WebhookSender(http, allow_private=True, policy=FAST).send(url=url, text="x")
    assert not result.ok
    assert "redirects are not followed" in (result.error or "")
    assert receiver.received("/inner") == []


# --- SSRF ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://127.0.0.1:8080/hook", "non-public address"),
        ("http://[::1]/hook", "non-public address"),
        ("http://[::ffff:127.0.0.1]/hook", "non-public address"),
        ("http://10.1.2.3/hook", "non-public address"),
        ("http://192.168.0.10/hook", "non-public address"),
        ("http://169.254.169.254/latest/meta-data", "non-public address"),
        ("http://0.0.0.0/", "non-public address"),
        ("http://2130706433/", "non-public address"),  # 127.0.0.1 as one number
        ("http://0x7f.1/", "non-public address"),
        ("http://localhost/hook", "internal host name"),
        ("http://metadata.google.internal/computeMetadata/v1/", "internal host name"),
        ("http://printer.local/", "internal host name"),
        ("http://intranet/", "internal host name"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https:///nohost", "no host"),
        ("https://exa mple.com/", "not a valid host name"),
    ],
)
def test_webhook_urls_to_internal_targets_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(UnsafeTargetError, match=fragment):
        check_webhook_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    ["https://discord.com/api/webhooks/1/abc", "http://hooks.example.org:8443/x?y=1", "https://93.184.215.14/hook"],
)
def test_public_webhook_urls_are_accepted(url: str) -> None:
    assert check_webhook_url(url, allow_private=False) == url


def test_a_deployment_can_allow_private_targets_but_not_other_schemes() -> None:
    assert check_webhook_url("http://127.0.0.1:9000/hook", allow_private=True) == "http://127.0.0.1:9000/hook"
    with pytest.raises(UnsafeTargetError):
        check_webhook_url("gopher://127.0.0.1/", allow_private=True)


async def test_names_are_resolved_before_sending_and_inward_addresses_refused(receiver: WebhookReceiver) -> None:
    # No multi-label name resolves to loopback on an offline machine, so the DNS guard is exercised with
    # "localhost", which resolves to loopback everywhere (a single label, which the save-time check
    # alone would already refuse).
    url = f"http://localhost:{receiver.port}/hook"
    with pytest.raises(UnsafeTargetError, match=r"resolves to a non-public address \((127\.0\.0\.1|::1)\)"):
        await ensure_public_destination(url)
    with pytest.raises(LookupError, match="cannot resolve"):
        await ensure_public_destination("http://no-such-host.invalid/hook")
    async with httpx.AsyncClient() as http:
        refused = await WebhookSender(http, allow_private=False, policy=FAST).send(url=url, text="x")
        allowed = await WebhookSender(http, allow_private=True, policy=FAST).send(url=url, text="x")
    assert not refused.ok
    assert refused.attempts == 1  # refused is permanent: no retry
    assert refused.error is not None
    assert refused.error.startswith("refused:")
    assert allowed.ok
    assert len(receiver.received("/hook")) == 1  # only the allowed one arrived


# --- the notifier ---------------------------------------------------------------------------------------


async def test_notifier_routes_channels_and_the_ops_channel(mailbox: Mailbox, receiver: WebhookReceiver) -> None:
    ops_url = receiver.script("/ops", then=Reply(204))
    user_url = receiver.script("/user", then=Reply(200))
    async with httpx.AsyncClient() as http:
        notifier = Notifier(
            smtp=SMTPSettings(**smtp_settings(mailbox)),
            webhooks=WebhookSettings(discord_webhook_url=ops_url, allow_private_targets=False),
            http=http,
            policy=FAST,
        )
        message = Message(subject="Subject line", text="Body text")
        by_mail = await notifier.send(channel="email", target="f@example.com", message=message)
        refused = await notifier.send(channel="webhook", target=user_url, message=message)
        ops = await notifier.notify_ops(message)
        unknown = await notifier.send(channel="pigeon", target="x", message=message)
    assert by_mail.ok
    assert mailbox.to("f@example.com")[0].message["Subject"] == "Subject line"
    assert not refused.ok  # users' webhooks to 127.0.0.1 are refused by default...
    assert receiver.received("/user") == []
    assert ops is not None
    assert ops.ok
    assert receiver.received("/ops")[0].json()["content"] == "**Subject line**\nBody text"
    assert not unknown.ok


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
