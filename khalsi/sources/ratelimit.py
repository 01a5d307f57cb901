"""A calls-per-period budget for an upstream API, shared by every caller that talks to the same host.

CoinGecko limits calls per minute per key (or per IP when keyless), so the budget belongs to the
host, not to a client object: :func:`limiter_for` hands every caller in the process the same
limiter for the same host and budget. With a Redis URL the budget is a fixed-window counter in
Redis (key ``khalsi:ratelimit:<host>:<window>``), so several processes share it.

Limiters hold no event-loop-bound state (a thread lock guards the bookkeeping and waiting happens
in ``asyncio.sleep``), so one limiter serves callers on any loop or thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis

REDIS_KEY_PREFIX = "khalsi:ratelimit"

# Runs on the Redis server so every process reads the same clock: returns the count in the current
# window and the seconds left until the next window starts.
_FIXED_WINDOW_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local period = tonumber(ARGV[1])
local window = math.floor(now / period)
local key = KEYS[1] .. ':' .. window
local count = redis.call('INCR', key)
if count == 1 then
  redis.call('PEXPIRE', key, math.ceil(period * 2000))
end
return {count, tostring((window + 1) * period - now)}
"""


def _check_budget(calls: int, period_seconds: float) -> None:
    if calls < 1:
        raise ValueError(f"a rate budget needs at least one call per period, got {calls}")
    if period_seconds <= 0:
        raise ValueError(f"period_seconds must be positive, got {period_seconds}")


class RateLimiter(Protocol):
    """Something that makes a caller wait until one more call fits the budget."""

    async def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        ...


class SlidingWindowLimiter:
    """At most ``calls`` calls in any ``period_seconds`` window, within one process.

    Each caller reserves the earliest slot that keeps the window under budget, then sleeps until
    it: reservations are ordered, so waiting callers are served first come, first served.
    """

    def __init__(
        self,
        calls: int,
        *,
        period_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_budget(calls, period_seconds)
        self.calls = calls
        self.period_seconds = period_seconds
        self._clock = clock
        self._slots: deque[float] = deque()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Book the next slot and return how many seconds from now it starts (0 when free)."""
        with self._lock:
            now = self._clock()
            while self._slots and self._slots[0] <= now - self.period_seconds:
                self._slots.popleft()
            slot = now
            if len(self._slots) >= self.calls:
                slot = max(now, self._slots[-self.calls] + self.period_seconds)
            self._slots.append(slot)
            return slot - now

    async def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
        return delay


class RedisFixedWindowLimiter:
    """At most ``calls`` calls per fixed ``period_seconds`` window, shared through Redis."""

    def __init__(
        self,
        calls: int,
        *,
        redis_url: str,
        key: str,
        period_seconds: float = 60.0,
    ) -> None:
        _check_budget(calls, period_seconds)
        self.calls = calls
        self.period_seconds = period_seconds
        self.redis_url = redis_url
        self.key = key
        # redis.asyncio connections belong to the loop that opened them: one client per loop.
        self._clients: dict[int, aioredis.Redis[bytes]] = {}
        self._lock = threading.Lock()

    def _client(self) -> aioredis.Redis[bytes]:
        loop_id = id(asyncio.get_running_loop())
        with self._lock:
            client = self._clients.get(loop_id)
            if client is None:
                client = aioredis.Redis.from_url(self.redis_url)
                self._clients[loop_id] = client
            return client

    async def try_acquire(self) -> float:
        """Count one call; return 0 if it fits this window, else the seconds until the next one."""
        count, seconds_left = await self._client().eval(  # type: ignore[no-untyped-call]
            _FIXED_WINDOW_SCRIPT, 1, self.key, str(self.period_seconds)
        )
        if int(count) <= self.calls:
            return 0.0
        return max(float(seconds_left), 0.001)

    async def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        waited = 0.0
        while (delay := await self.try_acquire()) > 0:
            await asyncio.sleep(delay)
            waited += delay
        return waited

    async def aclose(self) -> None:
        """Close the Redis connection opened on the running loop."""
        loop_id = id(asyncio.get_running_loop())
        with self._lock:
            client = self._clients.pop(loop_id, None)
        if client is not None:
            await client.aclose()  # type: ignore[attr-defined]  # types-redis predates aclose


def host_of(base_url: str) -> str:
    """The ``host[:port]`` a budget belongs to (CoinGecko counts calls per host, not per path)."""
    parts = urlsplit(base_url)
    if not parts.netloc:
        raise ValueError(f"{base_url!r} is not an absolute URL")
    return parts.netloc.lower()


_registry: dict[tuple[str, int, float, str], RateLimiter] = {}
_registry_lock = threading.Lock()


def limiter_for(
    base_url: str,
    calls_per_minute: int,
    *,
    period_seconds: float = 60.0,
    redis_url: str | None = None,
) -> RateLimiter:
    """The process-wide limiter for this host: ``calls_per_minute`` calls per ``period_seconds``.

    Callers with the same host and budget share one limiter; ``period_seconds`` is a minute
    except in tests, which shrink it. With ``redis_url`` the budget is shared across processes.
    """
    host = host_of(base_url)
    key = (host, calls_per_minute, period_seconds, redis_url or "")
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            if redis_url:
                limiter = RedisFixedWindowLimiter(
                    calls_per_minute,
                    redis_url=redis_url,
                    key=f"{REDIS_KEY_PREFIX}:{host}",
                    period_seconds=period_seconds,
                )
            else:
                limiter = SlidingWindowLimiter(calls_per_minute, period_seconds=period_seconds)
            _registry[key] = limiter
        return limiter


def reset_limiters() -> None:
    """Forget every shared limiter (tests start from an empty budget)."""
    with _registry_lock:
        _registry.clear()
