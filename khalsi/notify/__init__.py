"""Delivering notifications: SMTP e-mail and Discord-compatible webhooks, with retries and an SSRF guard.

Shared by the product API (retrying a failed notification) and the alerts flow. Nothing here
touches the database: a sender answers a :class:`DeliveryResult` and the caller records it.
"""

from khalsi.notify.notifier import Channel, Message, Notifier
from khalsi.notify.retry import DEFAULT_POLICY, INTERACTIVE_POLICY, DeliveryResult, RetryPolicy
from khalsi.notify.targets import UnsafeTargetError, check_webhook_url

__all__ = [
    "DEFAULT_POLICY",
    "INTERACTIVE_POLICY",
    "Channel",
    "DeliveryResult",
    "Message",
    "Notifier",
    "RetryPolicy",
    "UnsafeTargetError",
    "check_webhook_url",
]
