"""One Redis subscription per API process, fanned out to that process's WebSockets.

Each socket gets a bounded queue. A client too slow to read loses the oldest events, not the
process's memory, and is told how many it missed (``lagged``). If Redis goes away the hub keeps
retrying with back-off and reports ``live: false`` meanwhile; sockets stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from khalsi.db.models import UserSession
from khalsi.events import CHANNEL_PREFIX

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256
RECONNECT_MAX_SECONDS = 30.0
SWEEP_CHUNK = 1000
CloseSocket = Callable[[], Awaitable[None]]


class Subscriber:
    """One socket's mailbox of JSON texts (encoded once per event, not once per socket)."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.channels: set[str] = set()
        self.dropped = 0

    def offer(self, event: str) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


class LiveHub:
    """Routes events from Redis pub/sub to the subscribers of their channel."""

    def __init__(self, redis: Any | None) -> None:
        self._redis = redis
        self._by_channel: dict[str, set[Subscriber]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sockets_by_session: dict[uuid.UUID, set[CloseSocket]] = defaultdict(set)
        # In-process listeners of a channel (not sockets), e.g. the open-session memory on revocations.
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = defaultdict(list)
        self._subscribed = asyncio.Event()
        self.reason = "Redis is not configured: events from flows cannot reach this process"

    @property
    def live(self) -> bool:
        return self._subscribed.is_set()

    async def start(self, *, session_factory: Any | None = None, sweep_seconds: float = 30.0) -> None:
        if self._redis is not None:
            self._task = asyncio.create_task(self._pump(), name="live-hub")
        if session_factory is not None:
            self._sweeper = asyncio.create_task(
                self._sweep_forever(session_factory, sweep_seconds), name="live-sweeper"
            )

    def track_session(self, session_id: uuid.UUID, close: CloseSocket) -> None:
        self._sockets_by_session[session_id].add(close)

    def untrack_session(self, session_id: uuid.UUID, close: CloseSocket) -> None:
        closers = self._sockets_by_session.get(session_id)
        if closers is not None:
            closers.discard(close)
            if not closers:
                del self._sockets_by_session[session_id]

    async def sweep_sessions(self, session_factory: Any) -> int:
        """Close the sockets whose login session was closed (or deleted); return how many."""
        watched = list(self._sockets_by_session)
        open_sessions: set[uuid.UUID] = set()
        async with session_factory() as session:
            for start in range(0, len(watched), SWEEP_CHUNK):
                chunk = watched[start : start + SWEEP_CHUNK]
                rows = await session.scalars(
                    sa.select(UserSession.id).where(UserSession.id.in_(chunk), UserSession.is_active.is_(True))
                )
                open_sessions.update(rows)
        closed = 0
        for session_id in watched:
            if session_id in open_sessions:
                continue
            for close in list(self._sockets_by_session.pop(session_id, ())):
                with contextlib.suppress(Exception):  # already gone is fine
                    await close()
                closed += 1
        return closed

    async def _sweep_forever(self, session_factory: Any, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.sweep_sessions(session_factory)
            except Exception as error:  # the database blinked: sockets stay, the next sweep retries
                logger.warning("live session sweep failed: %s", error)

    async def wait_until_live(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), seconds)
        return self.live

    async def stop(self) -> None:
        for task in (self._task, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def subscribe(self, subscriber: Subscriber, channels: set[str]) -> None:
        for channel in channels:
            self._by_channel[channel].add(subscriber)
        subscriber.channels |= channels

    def unsubscribe(self, subscriber: Subscriber, channels: set[str] | None = None) -> None:
        for channel in list(subscriber.channels if channels is None else channels):
            listeners = self._by_channel.get(channel)
            if listeners is not None:
                listeners.discard(subscriber)
                if not listeners:
                    del self._by_channel[channel]
            subscriber.channels.discard(channel)

    def add_handler(self, channel: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler`` with every event on ``channel`` (in this process, not on any socket)."""
        self._handlers[channel].append(handler)

    def dispatch(self, channel: str, event: dict[str, Any]) -> int:
        """Deliver ``event`` to everyone on ``channel``; return how many got it."""
        for handler in self._handlers.get(channel, ()):
            try:
                handler(event)
            except Exception as error:  # a bad event must not stop the pump
                logger.warning("live handler for %s failed: %s", channel, error)
        topic = channel.split(":", 1)[0]
        # "prices:*" follows every coin's prices; a socket on both hears each event once.
        listeners = self._by_channel.get(channel, set()) | self._by_channel.get(f"{topic}:*", set())
        if listeners:
            text = json.dumps({**event, "channel": channel}, default=str)
            for subscriber in listeners:
                subscriber.offer(text)
        return len(listeners)

    async def _pump(self) -> None:
        redis = self._redis
        if redis is None:
            return
        delay = 0.5
        while True:
            pubsub = redis.pubsub()
            try:
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                self._subscribed.set()
                self.reason = ""
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = _text(message["channel"])[len(CHANNEL_PREFIX) :]
                    try:
                        event = json.loads(_text(message["data"]))
                    except ValueError:
                        logger.warning("ignoring a malformed live event on %s", channel)
                        continue
                    if isinstance(event, dict):
                        self.dispatch(channel, event)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis went away: keep the sockets, retry with back-off
                self._subscribed.clear()
                self.reason = f"Redis unavailable ({type(error).__name__}); retrying"
                logger.warning("live hub lost Redis: %s; retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
