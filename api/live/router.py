"""``/ws``: one WebSocket per client for live prices, predictions and the caller's alerts.

Protocol (JSON text frames):
- authenticate with ``Authorization: Bearer <access token>`` on the upgrade request, or, from a
  browser (which cannot set headers), with ``{"type": "auth", "token": "..."}`` as the first message
  within the heartbeat timeout; tokens never go in the URL, where proxies log them;
- ``{"type": "subscribe" | "unsubscribe", "channels": ["prices:bitcoin", "predictions:*", "alerts"]}``;
  ``alerts`` is always the caller's own;
- the server sends ``{"type": "ping"}`` every ``KHALSI_WS_HEARTBEAT_INTERVAL`` ms and closes the
  socket (code 4000) when no ``{"type": "pong"}`` comes back within ``KHALSI_WS_HEARTBEAT_TIMEOUT``;
  logging out closes the socket (4401) within one heartbeat interval (``LiveHub`` checks every
  open socket's session in one query per interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth.exceptions import AuthError
from api.auth.service import user_for_access_token
from api.live.hub import LiveHub, Subscriber
from khalsi.db.models import UserSession
from khalsi.events import PRIVATE_TOPIC, PUBLIC_TOPICS

router = APIRouter(tags=["live"])

MAX_MESSAGE_BYTES = 4096
MAX_CHANNELS = 100
MAX_PROTOCOL_ERRORS = 20
CLOSE_HEARTBEAT_TIMEOUT = 4000
CLOSE_UNAUTHORIZED = 4401
CLOSE_POLICY = 1008
_COIN = re.compile(r"^(\*|[a-z0-9][a-z0-9-]{0,99})$")


class ProtocolError(ValueError):
    """A client message that breaks the protocol; answered with an ``error`` frame."""


def resolve_channels(requested: Any, *, user_id: uuid.UUID) -> set[str]:
    """The hub channels for a subscribe/unsubscribe request; ``alerts`` becomes the caller's own."""
    if not isinstance(requested, list) or not requested or not all(isinstance(c, str) for c in requested):
        raise ProtocolError("'channels' must be a non-empty list of strings")
    channels: set[str] = set()
    for name in requested:
        if name == PRIVATE_TOPIC:
            channels.add(f"{PRIVATE_TOPIC}:{user_id}")
            continue
        topic, _, coin = name.partition(":")
        if topic not in PUBLIC_TOPICS or not _COIN.match(coin):
            raise ProtocolError(
                f"unknown channel {name[:120]!r}: use prices:<coin_id>, predictions:<coin_id> (or :*) or alerts"
            )
        channels.add(name)
    return channels


def _parse(raw: str) -> dict[str, Any]:
    if len(raw.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(raw)
    except ValueError as error:
        raise ProtocolError("messages must be JSON objects") from error
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("messages must be JSON objects with a 'type'")
    return message


async def _set_socket(websocket: WebSocket, session_id: uuid.UUID, socket_id: str | None) -> None:
    """Record the live socket on the login session (the seed's ``user_sessions.socket_id``)."""
    async with websocket.app.state.session_factory() as session:
        row = await session.get(UserSession, session_id)
        if row is not None:
            row.socket_id = socket_id
            await session.commit()


async def _authenticate(websocket: WebSocket, wait_seconds: float) -> tuple[Any, uuid.UUID] | None:
    settings = websocket.app.state.settings
    header = websocket.headers.get("authorization", "")
    token = header[7:] if header[:7].lower() == "bearer " else None
    if token is None:
        try:
            first = _parse(await asyncio.wait_for(websocket.receive_text(), wait_seconds))
        except TimeoutError:
            await websocket.close(CLOSE_UNAUTHORIZED, 'authenticate first: {"type": "auth", "token": ...}')
            return None
        except ProtocolError as error:
            await websocket.close(CLOSE_UNAUTHORIZED, str(error)[:120])
            return None
        if first.get("type") != "auth" or not isinstance(first.get("token"), str):
            await websocket.close(CLOSE_UNAUTHORIZED, 'the first message must be {"type": "auth", "token": ...}')
            return None
        token = first["token"]
    session: AsyncSession
    async with websocket.app.state.session_factory() as session:
        try:
            return await user_for_access_token(session=session, settings=settings.jwt, token=token)
        except AuthError as error:
            await websocket.close(CLOSE_UNAUTHORIZED, str(error)[:120])
            return None


@router.websocket("/ws")
async def live_updates(websocket: WebSocket) -> None:
    settings = websocket.app.state.settings
    hub: LiveHub = websocket.app.state.live_hub
    interval = settings.ws.heartbeat_interval / 1000
    timeout = settings.ws.heartbeat_timeout / 1000
    await websocket.accept()
    authenticated = await _authenticate(websocket, timeout)
    if authenticated is None:
        return
    user, session_id = authenticated
    socket_id = secrets.token_hex(8)
    await _set_socket(websocket, session_id, socket_id)
    subscriber = Subscriber()
    pong = asyncio.Event()
    await websocket.send_json(
        {
            "type": "welcome",
            "user_id": str(user.id),
            "socket_id": socket_id,
            "live": hub.live,
            "reason": hub.reason or None,
            "heartbeat_interval_ms": settings.ws.heartbeat_interval,
            "heartbeat_timeout_ms": settings.ws.heartbeat_timeout,
        }
    )

    async def read() -> None:
        errors = 0
        while True:
            try:
                message = _parse(await websocket.receive_text())
                kind = message["type"]
                if kind == "pong":
                    pong.set()
                elif kind in ("subscribe", "unsubscribe"):
                    channels = resolve_channels(message.get("channels"), user_id=user.id)
                    if kind == "subscribe":
                        if len(subscriber.channels | channels) > MAX_CHANNELS:
                            raise ProtocolError(f"at most {MAX_CHANNELS} channels per connection")
                        hub.subscribe(subscriber, channels)
                    else:
                        hub.unsubscribe(subscriber, channels)
                    await websocket.send_json({"type": f"{kind}d", "channels": sorted(subscriber.channels)})
                else:
                    raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
            except ProtocolError as error:
                errors += 1
                await websocket.send_json({"type": "error", "detail": str(error)})
                if errors >= MAX_PROTOCOL_ERRORS:
                    await websocket.close(CLOSE_POLICY, "too many protocol errors")
                    return

    async def write() -> None:
        while True:
            text = await subscriber.queue.get()
            if subscriber.dropped:
                await websocket.send_json({"type": "lagged", "dropped": subscriber.dropped})
                subscriber.dropped = 0
            await websocket.send_text(text)

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(interval)
            pong.clear()
            await websocket.send_json({"type": "ping", "ts": time.time()})
            try:
                await asyncio.wait_for(pong.wait(), timeout)
            except TimeoutError:
                await websocket.close(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return

    async def close_for_logout() -> None:
        await websocket.close(CLOSE_UNAUTHORIZED, "this session was closed; log in again")

    hub.track_session(session_id, close_for_logout)
    tasks = [asyncio.create_task(job()) for job in (read, write, heartbeat)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task
        hub.unsubscribe(subscriber)
        hub.untrack_session(session_id, close_for_logout)
        # Shielded: a server shutting down cancels this handler, and the row must still be cleared.
        await asyncio.shield(_set_socket(websocket, session_id, None))
