"""A per-process memory of login sessions recently seen open, for hot read-only routes.

Every signed-in call used to look its session up in the database, which cost as much as a
prediction. Read-only routes (predictions) now trust a session seen open in the last
``SESSION_CHECK_SECONDS``; routes that read or change the account still look it up every time.

Logging out forgets the session in the process that served the logout at once, and publishes
``sessions:revoked`` through Redis so every other API process forgets it within milliseconds.
Without Redis, another process may accept the old token for at most ``SESSION_CHECK_SECONDS``.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

SESSION_CHECK_SECONDS = 5.0
MAX_REMEMBERED = 100_000
REVOKED_CHANNEL = "sessions:revoked"


class OpenSessions:
    """Session ids seen open recently, oldest evicted first."""

    def __init__(self, ttl_seconds: float = SESSION_CHECK_SECONDS, capacity: int = MAX_REMEMBERED) -> None:
        self.ttl_seconds = ttl_seconds
        self.capacity = capacity
        self._seen: OrderedDict[uuid.UUID, float] = OrderedDict()

    def is_open(self, session_id: uuid.UUID) -> bool:
        seen_at = self._seen.get(session_id)
        if seen_at is None:
            return False
        if time.monotonic() - seen_at > self.ttl_seconds:
            del self._seen[session_id]
            return False
        return True

    def remember(self, session_id: uuid.UUID) -> None:
        self._seen[session_id] = time.monotonic()
        self._seen.move_to_end(session_id)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def forget(self, session_id: uuid.UUID) -> None:
        self._seen.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._seen)


def forget_revoked(open_sessions: OpenSessions) -> Callable[[dict[str, Any]], None]:
    """The handler for ``sessions:revoked`` events published by another API process."""

    def forget(event: dict[str, Any]) -> None:
        open_sessions.forget(uuid.UUID(str(event["session_id"])))

    return forget
