"""A short-lived Redis cache for hot market reads that never turns a Redis outage into an error.

Answers are cached as the exact JSON bytes sent to the client, so a hit is one Redis GET and no
validation or serialisation. Every answer says how it was served in the ``X-Cache`` header:

- ``hit``: from Redis; ``miss``: built from the database and stored for ``ttl_seconds``;
- ``disabled``: no Redis is configured (``KHALSI_REDIS_URL`` empty), always built from the database;
- ``unavailable``: Redis failed or timed out, so the answer was built from the database. After a
  failure Redis is left alone for ``retry_after_seconds`` (a small circuit breaker): otherwise every
  request would pay for a connection attempt, and with a black-holed host for the whole timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from pydantic import BaseModel
from redis.exceptions import RedisError

from api.deps import RedisDep

logger = logging.getLogger(__name__)

CACHE_HEADER = "X-Cache"
CACHE_STATE = "market_cache"
KEY_PREFIX = "khalsi:api:market:"
# Market rows change once a day and trending at most every few minutes: 30 s keeps a burst of
# readers on Redis while an ingestion shows up within half a minute.
TTL_SECONDS = 30
# Redis answers in well under a millisecond here; a slower answer is treated as an outage.
REDIS_TIMEOUT_SECONDS = 0.25
RETRY_AFTER_SECONDS = 5.0
# What a failing Redis raises: its own errors, socket errors, and our timeout.
REDIS_FAULTS = (RedisError, OSError, TimeoutError)


class CacheStatus(StrEnum):
    HIT = "hit"
    MISS = "miss"
    DISABLED = "disabled"
    UNAVAILABLE = "unavailable"


@dataclass
class ResponseCache:
    """JSON answers in Redis (``redis`` None: no caching), with a breaker for Redis outages."""

    redis: Any | None
    ttl_seconds: int = TTL_SECONDS
    timeout_seconds: float = REDIS_TIMEOUT_SECONDS
    retry_after_seconds: float = RETRY_AFTER_SECONDS
    _skip_until: float = field(default=0.0, init=False)

    def _usable(self) -> bool:
        return self.redis is not None and time.monotonic() >= self._skip_until

    def _failed(self, action: str, error: BaseException) -> None:
        self._skip_until = time.monotonic() + self.retry_after_seconds
        logger.warning(
            "Redis %s failed (%s: %s); serving from the database for %.0f s",
            action,
            type(error).__name__,
            error,
            self.retry_after_seconds,
        )

    def _unusable_status(self) -> CacheStatus:
        return CacheStatus.DISABLED if self.redis is None else CacheStatus.UNAVAILABLE

    async def get(self, key: str) -> tuple[bytes | None, CacheStatus]:
        """The cached body (or None) and how the lookup went."""
        if not self._usable():
            return None, self._unusable_status()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                body = await self.redis.get(KEY_PREFIX + key)  # type: ignore[union-attr]
        except REDIS_FAULTS as error:  # refused, reset, timed out, refused auth: degrade, never fail
            self._failed("read", error)
            return None, CacheStatus.UNAVAILABLE
        return (bytes(body), CacheStatus.HIT) if body is not None else (None, CacheStatus.MISS)

    async def put(self, key: str, body: bytes) -> CacheStatus:
        """Store ``body`` for the TTL; MISS when stored, UNAVAILABLE when Redis failed meanwhile."""
        if not self._usable():
            return self._unusable_status()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self.redis.set(KEY_PREFIX + key, body, ex=self.ttl_seconds)  # type: ignore[union-attr]
        except REDIS_FAULTS as error:  # as in get: a cache that cannot store still answers
            self._failed("write", error)
            return CacheStatus.UNAVAILABLE
        return CacheStatus.MISS

    async def respond(self, key: str, build: Callable[[], Awaitable[BaseModel]]) -> Response:
        """The cached answer for ``key``, or ``build()``'s, cached; ``X-Cache`` says which."""
        body, status = await self.get(key)
        if body is None:
            # Domain errors raised by build (unknown coin...) propagate and are not cached.
            body = (await build()).model_dump_json().encode()
            if status is CacheStatus.MISS:
                status = await self.put(key, body)
        return Response(content=body, media_type="application/json", headers={CACHE_HEADER: status.value})


async def get_response_cache(request: Request, redis: RedisDep) -> ResponseCache:
    """One cache per app, so the breaker's state outlives a request."""
    cache: ResponseCache | None = getattr(request.app.state, CACHE_STATE, None)
    if cache is None or cache.redis is not redis:
        cache = ResponseCache(redis=redis)
        setattr(request.app.state, CACHE_STATE, cache)
    return cache


CacheDep = Annotated[ResponseCache, Depends(get_response_cache)]
