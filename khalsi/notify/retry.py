"""Retrying a delivery: which faults are worth another try, how long to wait, when to give up.

A sender's single attempt raises :class:`TransientDeliveryError` (connection refused, timeout, HTTP
429/5xx, SMTP 4xx) or :class:`PermanentDeliveryError` (HTTP 4xx, SMTP 5xx, a refused target);
:func:`deliver_with_retries` turns attempts into one :class:`DeliveryResult` and never raises for
a delivery fault, so one bad target cannot stop the others.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

Sleep = Callable[[float], Awaitable[None]]


class DeliveryError(Exception):
    """One attempt failed."""


class TransientDeliveryError(DeliveryError):
    """Worth another try; ``retry_after`` is the wait the server asked for (seconds), if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Trying again would fail the same way."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one delivery tries before it is recorded as failed."""

    max_attempts: int = 4
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0
    # A server asking for a longer pause than this is not waited for in-process: the delivery is
    # recorded as failed (with the wait it asked for) and can be retried later.
    max_retry_after_seconds: float = 60.0
    timeout_seconds: float = 10.0

    def backoff(self, failed_attempts: int) -> float:
        """Exponential back-off with jitter, so many failing deliveries do not retry in lockstep."""
        base = min(self.initial_backoff_seconds * 2.0 ** (failed_attempts - 1), self.max_backoff_seconds)
        return base * (0.5 + random.random() / 2)


DEFAULT_POLICY = RetryPolicy()
# Someone is waiting on the answer (an API request): fewer tries, and no long server-requested pauses.
INTERACTIVE_POLICY = RetryPolicy(max_attempts=3, max_backoff_seconds=2.0, max_retry_after_seconds=5.0)


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one delivery after every attempt it was allowed."""

    ok: bool
    attempts: int
    error: str | None = None
    detail: str | None = None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(seconds, 0.0) if seconds == seconds else None  # NaN is not a wait


async def deliver_with_retries(
    attempt: Callable[[], Awaitable[str]], *, policy: RetryPolicy, sleep: Sleep = asyncio.sleep
) -> DeliveryResult:
    """Run ``attempt`` until it succeeds, fails permanently, or the policy's attempts are spent."""
    last_error = "no attempt was made"
    for number in range(1, policy.max_attempts + 1):
        try:
            detail = await attempt()
        except PermanentDeliveryError as error:
            return DeliveryResult(ok=False, attempts=number, error=str(error))
        except TransientDeliveryError as error:
            last_error = str(error)
            if number == policy.max_attempts:
                break
            if error.retry_after is not None:
                if error.retry_after > policy.max_retry_after_seconds:
                    return DeliveryResult(
                        ok=False,
                        attempts=number,
                        error=f"{error}; the server asked to wait {error.retry_after:.0f}s, "
                        f"longer than the {policy.max_retry_after_seconds:.0f}s this delivery waits",
                    )
                delay = error.retry_after
            else:
                delay = policy.backoff(number)
            await sleep(delay)
        else:
            return DeliveryResult(ok=True, attempts=number, detail=detail)
    return DeliveryResult(
        ok=False, attempts=policy.max_attempts, error=f"{last_error} (gave up after {policy.max_attempts} attempts)"
    )
