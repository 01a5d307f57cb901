"""Notification services: the owner's history, and delivering a stored notification.

A notification row is the unit of delivery. Whoever sends it first *claims* it with a conditional
UPDATE (``failed`` → ``pending`` for a retry, a stale ``pending`` for a sweep), so two workers or
two retry clicks never send the same row twice at once; the result of the send is then recorded on
the row (status, attempts, last error, sent time). No transaction stays open during the network I/O.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from api.notifications.exceptions import NotRetriableError
from khalsi.db.models import Notification
from khalsi.notify import DeliveryResult, Message, Notifier

logger = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


async def list_notifications(
    *, session: AsyncSession, user_id: uuid.UUID, offset: int, limit: int, status: str | None = None
) -> tuple[list[Notification], int]:
    """The owner's notifications, newest first, and how many there are in all."""
    where = [Notification.user_id == user_id]
    if status is not None:
        where.append(Notification.status == status)
    total = await session.scalar(sa.select(sa.func.count()).select_from(Notification).where(*where)) or 0
    rows = await session.scalars(
        sa.select(Notification)
        .where(*where)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(rows), int(total)


async def get_notification(
    *, session: AsyncSession, user_id: uuid.UUID, notification_id: uuid.UUID
) -> Notification | None:
    """The notification if it exists and belongs to ``user_id``."""
    notification: Notification | None = await session.scalar(
        sa.select(Notification).where(Notification.id == notification_id, Notification.user_id == user_id)
    )
    return notification


async def claim_for_retry(*, session: AsyncSession, notification: Notification, now: datetime) -> Notification:
    """Move a failed notification back to pending, atomically; raise if it is not failed (any more)."""
    claimed = await session.scalar(
        sa.update(Notification)
        .where(Notification.id == notification.id, Notification.status == "failed")
        .values(status="pending", updated_at=now)
        .returning(Notification.id)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    if claimed is None:
        await session.refresh(notification)
        raise NotRetriableError(notification.status)
    await session.refresh(notification)
    return notification


async def claim_stale_pending(
    *, session: AsyncSession, older_than: timedelta, now: datetime, limit: int = 500
) -> list[uuid.UUID]:
    """Pending notifications nobody touched for ``older_than`` (an interrupted run), claimed for sending."""
    cutoff = now - older_than
    candidates = list(
        await session.scalars(
            sa.select(Notification.id)
            .where(Notification.status == "pending", Notification.updated_at < cutoff)
            .order_by(Notification.updated_at)
            .limit(limit)
        )
    )
    claimed: list[uuid.UUID] = []
    for notification_id in candidates:
        # Renewing updated_at is the lease: a concurrent sweep's WHERE no longer matches.
        won = await session.scalar(
            sa.update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.status == "pending",
                Notification.updated_at < cutoff,
            )
            .values(updated_at=now)
            .returning(Notification.id)
            .execution_options(synchronize_session=False)
        )
        if won is not None:
            claimed.append(won)
    await session.commit()
    return claimed


def message_of(notification: Notification) -> Message:
    """The message stored at firing time (a retry sends exactly what the first attempt sent)."""
    payload = notification.payload or {}
    return Message(subject=str(payload.get("subject", "Khalsi notification")), text=str(payload.get("text", "")))


async def deliver(
    *, session: AsyncSession, notifier: Notifier, notification: Notification, clock: Clock = wall_clock
) -> Notification:
    """Send a claimed (pending) notification and record the outcome; never raises for a delivery fault."""
    try:
        result = await notifier.send(
            channel=notification.channel, target=notification.target, message=message_of(notification)
        )
    except Exception as error:  # a bug in a sender must not lose the record or stop other deliveries
        logger.exception("sending notification %s failed unexpectedly", notification.id)
        result = DeliveryResult(ok=False, attempts=1, error=f"internal error: {type(error).__name__}: {error}")
    now = clock()
    notification.attempts = (notification.attempts or 0) + result.attempts
    notification.updated_at = now
    if result.ok:
        notification.status = "sent"
        notification.sent_at = now
        notification.last_error = None
    else:
        notification.status = "failed"
        notification.last_error = (result.error or "unknown error")[:4000]
        logger.warning("notification %s (%s) failed: %s", notification.id, notification.channel, result.error)
    await session.commit()
    return notification
