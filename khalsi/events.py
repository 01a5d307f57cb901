"""Live events: flows publish what changed, every API process fans it out to its WebSockets.

Redis pub/sub carries them across processes (``khalsi:events:<channel>``). Publishing is best
effort on purpose: a flow that stored its data has done its job, and a missing Redis or a failed
publish is logged, never raised, so live updates can never break ingestion or scoring.

Channels: ``prices:<coin_id>`` (a new stored price), ``predictions:<coin_id>`` (a new stored
prediction) and ``alerts:<user_id>`` (one of that user's alerts fired; private to the user).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from khalsi.settings import Settings

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "khalsi:events:"
PUBLIC_TOPICS = ("prices", "predictions")
PRIVATE_TOPIC = "alerts"


def channel_name(topic: str, key: str) -> str:
    return f"{topic}:{key}"


def publish_events(settings: Settings, events: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """Publish ``(channel, payload)`` pairs; return how many went out (0 without Redis)."""
    pending = list(events)
    if not pending or not settings.redis.url:
        return 0
    import redis

    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    client = redis.Redis.from_url(settings.redis.url, password=password, socket_timeout=2, socket_connect_timeout=2)
    try:
        with client.pipeline(transaction=False) as pipe:
            for channel, payload in pending:
                pipe.publish(CHANNEL_PREFIX + channel, json.dumps(payload, default=str))
            pipe.execute()
    except Exception as error:  # live updates are a courtesy: never fail the caller's stored work
        logger.warning("could not publish %d live event(s): %s", len(pending), error)
        return 0
    finally:
        client.close()
    return len(pending)
