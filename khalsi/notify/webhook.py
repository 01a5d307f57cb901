"""Webhooks: a Discord-compatible JSON body (``{"content": ...}``) POSTed with httpx.

Discord answers 204 and rate-limits with 429 + ``Retry-After`` (and ``retry_after`` in the body);
Slack-style and generic receivers accept the same body and answer 200. Redirects are not
followed: a 3xx is a misconfigured target, and following it could lead inward (SSRF).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from khalsi.notify.retry import (
    DEFAULT_POLICY,
    DeliveryResult,
    PermanentDeliveryError,
    RetryPolicy,
    Sleep,
    TransientDeliveryError,
    deliver_with_retries,
    parse_retry_after,
)
from khalsi.notify.targets import UnsafeTargetError, check_webhook_url, ensure_public_destination

# Discord refuses message content longer than 2,000 characters.
MAX_CONTENT_CHARS = 2000


def discord_body(text: str) -> dict[str, Any]:
    """The JSON a Discord webhook takes; mentions are disabled so alert text can never ping @everyone."""
    content = text if len(text) <= MAX_CONTENT_CHARS else text[: MAX_CONTENT_CHARS - 1] + "…"
    return {"content": content, "allowed_mentions": {"parse": []}}


def _retry_after(response: httpx.Response) -> float | None:
    waited = parse_retry_after(response.headers.get("retry-after"))
    if waited is not None:
        return waited
    try:  # Discord also puts the wait (seconds, float) in the JSON body
        body = response.json()
    except ValueError:
        return None
    value = body.get("retry_after") if isinstance(body, dict) else None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


class WebhookSender:
    """POSTs one message per call, retrying 429 / 5xx / timeouts / refused connections."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        allow_private: bool,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._http = http
        self._allow_private = allow_private
        self._policy = policy
        self._sleep = sleep

    async def send(self, *, url: str, text: str, trusted: bool = False) -> DeliveryResult:
        """Deliver ``text`` to ``url``; ``trusted`` (the operator's own URL) skips the SSRF guard."""
        body = discord_body(text)

        async def attempt() -> str:
            return await self._post_once(url, body, guarded=not (trusted or self._allow_private))

        return await deliver_with_retries(attempt, policy=self._policy, sleep=self._sleep)

    async def _post_once(self, url: str, body: dict[str, Any], *, guarded: bool) -> str:
        if guarded:
            try:
                check_webhook_url(url, allow_private=False)
                await ensure_public_destination(url)
            except UnsafeTargetError as error:
                raise PermanentDeliveryError(f"refused: {error}") from error
            except LookupError as error:
                raise TransientDeliveryError(str(error)) from error
        try:
            response = await self._http.post(
                url, json=body, timeout=self._policy.timeout_seconds, follow_redirects=False
            )
        except httpx.TimeoutException as error:
            raise TransientDeliveryError(
                f"timed out after {self._policy.timeout_seconds:g}s ({type(error).__name__})"
            ) from error
        except httpx.UnsupportedProtocol as error:
            raise PermanentDeliveryError(f"unsupported URL: {error}") from error
        except httpx.TransportError as error:  # connection refused or reset, DNS failure...
            raise TransientDeliveryError(f"{type(error).__name__}: {error}") from error
        status = response.status_code
        if response.is_success:
            return f"HTTP {status}"
        reason = f"HTTP {status} {response.reason_phrase}".strip()
        if status == 429:
            raise TransientDeliveryError(f"{reason} (rate limited)", retry_after=_retry_after(response))
        if status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after")) if status == 503 else None
            raise TransientDeliveryError(reason, retry_after=retry_after)
        if response.is_redirect:
            raise PermanentDeliveryError(f"{reason}: redirects are not followed; use the final URL")
        raise PermanentDeliveryError(f"{reason}: {response.text[:200]}")
