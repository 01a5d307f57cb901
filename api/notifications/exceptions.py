"""Domain errors of notifications; the router turns them into HTTP answers."""

from __future__ import annotations


class NotificationError(Exception):
    """Base of the notification errors."""


class NotRetriableError(NotificationError):
    def __init__(self, status: str) -> None:
        super().__init__(f"only failed notifications can be retried; this one is {status}")
        self.status = status
