"""One entry point for sending: a channel, a target and a message in, a :class:`DeliveryResult` out."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum

import httpx

from khalsi.notify.email import EmailSender
from khalsi.notify.retry import DEFAULT_POLICY, DeliveryResult, RetryPolicy, Sleep
from khalsi.notify.webhook import WebhookSender
from khalsi.settings import SMTPSettings, WebhookSettings

logger = logging.getLogger(__name__)


class Channel(StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


@dataclass(frozen=True)
class Message:
    """What a notification says: the subject (e-mail only) and the text."""

    subject: str
    text: str


class Notifier:
    """E-mail and webhook senders over the configured SMTP server and a shared HTTP client."""

    def __init__(
        self,
        *,
        smtp: SMTPSettings,
        webhooks: WebhookSettings,
        http: httpx.AsyncClient,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._ops_url = webhooks.discord_webhook_url
        self.email = EmailSender(smtp, policy=policy, sleep=sleep)
        self.webhook = WebhookSender(http, allow_private=webhooks.allow_private_targets, policy=policy, sleep=sleep)

    async def send(self, *, channel: Channel | str, target: str, message: Message) -> DeliveryResult:
        """Deliver ``message`` to ``target`` over ``channel``; faults come back as a failed result."""
        if channel == Channel.EMAIL:
            return await self.email.send(to=target, subject=message.subject, text=message.text)
        if channel == Channel.WEBHOOK:
            return await self.webhook.send(url=target, text=f"**{message.subject}**\n{message.text}")
        return DeliveryResult(ok=False, attempts=0, error=f"unknown channel {channel!r}")

    @property
    def has_ops_channel(self) -> bool:
        return bool(self._ops_url)

    async def notify_ops(self, message: Message) -> DeliveryResult | None:
        """Tell the operators (``KHALSI_WEBHOOKS_DISCORD_WEBHOOK_URL``); None when no ops channel is set."""
        if not self._ops_url:
            return None
        result = await self.webhook.send(url=self._ops_url, text=f"**{message.subject}**\n{message.text}", trusted=True)
        if not result.ok:
            logger.warning("the ops webhook failed: %s", result.error)
        return result
