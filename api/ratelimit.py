"""Rate limiting: the seed's ``RATE_LIMIT_WINDOW`` (minutes) and ``RATE_LIMIT_MAX`` per client.

- A sliding-window counter: the current window's count plus the previous window's, weighted by how
  much of it still overlaps the last ``window`` minutes. Unlike a fixed window it does not let a
  client spend two budgets around a window boundary, and it needs two integers per client, not a
  log of every request. Refused requests are not counted, so a client that waits gets its budget back.
- The counters live in Redis (one atomic Lua call per request), shared by every API process. When
  Redis is not configured or does not answer, each process keeps its own counters in memory, so
  limits still hold per process, and says so in ``X-RateLimit-Store``: degraded, never open.
- A client is the user of a valid access token (so users behind one NAT do not share a budget),
  otherwise its address. Login, registration and refresh have their own smaller budget per address
  (``auth_max``), so password guessing is slow whatever token the guesser holds.
- Only ``/api/...`` is limited: health checks and docs stay reachable. Answers carry the
  ``RateLimit-*`` headers of the IETF draft that express-rate-limit's ``standardHeaders`` sends,
  and a refusal is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import jwt
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from khalsi.settings import Settings

logger = logging.getLogger(__name__)

AUTH_PATHS = ("/auth/login", "/auth/register", "/auth/refresh")
REDIS_TIMEOUT_SECONDS = 0.25
KEY_PREFIX = "khalsi:ratelimit"

# KEYS: current window's counter, previous window's counter.
# ARGV: limit, window length (ms), time elapsed in the current window (ms).
# Returns {allowed (0/1), current count, previous count}; counts only what it allows.
SLIDING_WINDOW_LUA = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local elapsed = tonumber(ARGV[3])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local estimate = previous * (window - elapsed) / window + current
if estimate + 1 > limit then
  return {0, current, previous}
end
current = redis.call('INCR', KEYS[1])
if current == 1 then
  redis.call('PEXPIRE', KEYS[1], window * 2)
end
return {1, current, previous}
"""


@dataclass(frozen=True)
class Verdict:
    """What the limiter decided for one request."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int
    store: str


def weighted_count(*, current: int, previous: int, window: float, elapsed: float) -> float:
    """Requests seen in the last ``window`` seconds, the previous window weighted by its overlap."""
    return previous * (window - elapsed) / window + current


def seconds_until_allowed(*, limit: int, window: float, elapsed: float, current: int, previous: int) -> float:
    """How long until one more request fits (0 if it fits now)."""
    if weighted_count(current=current, previous=previous, window=window, elapsed=elapsed) + 1 <= limit:
        return 0.0
    if current + 1 <= limit and previous > 0:
        # Still in this window: wait for enough of the previous window to slide out.
        fits_at = window - (limit - 1 - current) * window / previous
        return max(fits_at - elapsed, 0.0)
    # This window alone is full: after it ends, it becomes the previous window and must slide out too.
    after_rollover = window * (1 - (limit - 1) / current) if current > 0 else 0.0
    return (window - elapsed) + max(after_rollover, 0.0)


def _verdict(
    allowed: bool, *, limit: int, window: float, elapsed: float, current: int, previous: int, store: str
) -> Verdict:
    used = weighted_count(current=current, previous=previous, window=window, elapsed=elapsed)
    retry = (
        0.0
        if allowed
        else seconds_until_allowed(limit=limit, window=window, elapsed=elapsed, current=current, previous=previous)
    )
    return Verdict(
        allowed=allowed,
        limit=limit,
        remaining=max(int(limit - math.ceil(used)), 0),
        reset_seconds=max(math.ceil(window - elapsed), 1),
        retry_after_seconds=max(math.ceil(retry), 1) if not allowed else 0,
        store=store,
    )


class MemoryCounters:
    """The same sliding window inside one process, for when Redis is absent or down."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._oldest_window = 0

    def hit(self, key: str, *, window_index: int, limit: int, window: float, elapsed: float) -> tuple[bool, int, int]:
        if window_index - 1 > self._oldest_window:
            # Forget windows that can no longer weigh on anything (keeps memory bounded).
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window_index - 1}
            self._oldest_window = window_index - 1
        current = self._counts.get((key, window_index), 0)
        previous = self._counts.get((key, window_index - 1), 0)
        if weighted_count(current=current, previous=previous, window=window, elapsed=elapsed) + 1 > limit:
            return False, current, previous
        self._counts[(key, window_index)] = current + 1
        return True, current + 1, previous

    def __len__(self) -> int:
        return len(self._counts)


class RateLimiter:
    """Decides per (bucket, client); Redis first, this process's memory when Redis fails."""

    def __init__(self, settings: Settings) -> None:
        self.window_seconds = float(settings.rate_limit.window * 60)
        self.limits = {"api": settings.rate_limit.max, "auth": settings.rate_limit.auth_max}
        self.memory = MemoryCounters()
        self._script: Any = None
        self._redis_failing = False

    async def check(self, redis: Any | None, *, bucket: str, client: str, now: float | None = None) -> Verdict:
        moment = time.time() if now is None else now
        limit = self.limits[bucket]
        window_index = int(moment // self.window_seconds)
        elapsed = moment - window_index * self.window_seconds
        key = f"{bucket}:{client}"
        counts: tuple[bool, int, int] | None = None
        store = "redis"
        if redis is not None:
            try:
                counts = await asyncio.wait_for(
                    self._redis_hit(redis, key, window_index, limit, elapsed), REDIS_TIMEOUT_SECONDS
                )
            except Exception as error:  # Redis down or slow: degrade to per-process limits, visibly
                if not self._redis_failing:
                    logger.warning("rate limiting falls back to per-process memory: Redis failed (%s)", error)
                self._redis_failing = True
            else:
                self._redis_failing = False
        if counts is None:
            store = "memory"
            counts = self.memory.hit(
                key, window_index=window_index, limit=limit, window=self.window_seconds, elapsed=elapsed
            )
        allowed, current, previous = counts
        return _verdict(
            allowed,
            limit=limit,
            window=self.window_seconds,
            elapsed=elapsed,
            current=current,
            previous=previous,
            store=store,
        )

    async def _redis_hit(
        self, redis: Any, key: str, window_index: int, limit: int, elapsed: float
    ) -> tuple[bool, int, int]:
        if self._script is None:
            self._script = redis.register_script(SLIDING_WINDOW_LUA)
        window_ms = int(self.window_seconds * 1000)
        keys = [f"{KEY_PREFIX}:{key}:{window_index}", f"{KEY_PREFIX}:{key}:{window_index - 1}"]
        allowed, current, previous = await self._script(keys=keys, args=[limit, window_ms, int(elapsed * 1000)])
        return bool(allowed), int(current), int(previous)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def client_identity(scope: Scope, settings: Settings, *, bucket: str) -> str:
    """``user:<id>`` for a valid access token (API bucket only), else ``ip:<address>``."""
    if bucket == "api":
        authorization = _header(scope, b"authorization")
        if authorization and authorization[:7].lower() == "bearer ":
            try:
                claims = jwt.decode(
                    authorization[7:],
                    settings.jwt.secret.get_secret_value(),
                    algorithms=["HS256"],
                    options={"require": ["exp", "sub"]},
                )
            except jwt.PyJWTError:
                pass  # an invalid token is limited by address; the route will refuse it anyway
            else:
                if claims.get("typ") == "access":
                    return f"user:{claims['sub']}"
    address = scope["client"][0] if scope.get("client") else "unknown"
    if settings.rate_limit.trust_forwarded_for:
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded:
            # The rightmost entry is the one our proxy appended ($proxy_add_x_forwarded_for); the
            # ones before it came from the client and could be anything.
            address = forwarded.split(",")[-1].strip() or address
    return f"ip:{address}"


class RateLimitMiddleware:
    """Pure ASGI middleware (no per-request task or body buffering, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, api_prefix: str) -> None:
        self.app = app
        self.settings = settings
        self.api_prefix = api_prefix
        self.limiter = RateLimiter(settings)
        self.policy = {
            bucket: f"{limit};w={int(self.limiter.window_seconds)}".encode()
            for bucket, limit in self.limiter.limits.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.api_prefix):
            await self.app(scope, receive, send)
            return
        bucket = "auth" if path.endswith(AUTH_PATHS) else "api"
        redis = getattr(scope["app"].state, "redis", None) if "app" in scope else None
        verdict = await self.limiter.check(
            redis, bucket=bucket, client=client_identity(scope, self.settings, bucket=bucket)
        )
        headers = [
            (b"ratelimit-limit", str(verdict.limit).encode()),
            (b"ratelimit-remaining", str(verdict.remaining).encode()),
            (b"ratelimit-reset", str(verdict.reset_seconds).encode()),
            (b"ratelimit-policy", self.policy[bucket]),
            (b"x-ratelimit-store", verdict.store.encode()),
        ]
        if not verdict.allowed:
            body = json.dumps(
                {
                    "detail": "too many requests; slow down",
                    "retry_after_seconds": verdict.retry_after_seconds,
                    "limit": verdict.limit,
                    "window_minutes": self.settings.rate_limit.window,
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(verdict.retry_after_seconds).encode()),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
