"""``/notifications``: what was sent to the caller, and retrying what failed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.deps import CurrentUser, SessionDep
from api.notifications import service
from api.notifications.deps import NotifierDep, OwnedNotification
from api.notifications.exceptions import NotRetriableError
from api.notifications.schemas import NotificationPublic, NotificationsPage, NotificationStatus

router = APIRouter(prefix="/notifications", tags=["notifications"])


@router.get("")
async def list_notifications(
    user: CurrentUser,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    status_filter: Annotated[NotificationStatus | None, Query(alias="status")] = None,
) -> NotificationsPage:
    """The caller's notifications, newest first."""
    rows, total = await service.list_notifications(
        session=session, user_id=user.id, offset=offset, limit=limit, status=status_filter
    )
    return NotificationsPage(
        items=[NotificationPublic.model_validate(row) for row in rows], total=total, offset=offset, limit=limit
    )


@router.get("/{notification_id}")
async def read_notification(notification: OwnedNotification) -> NotificationPublic:
    return NotificationPublic.model_validate(notification)


@router.post("/{notification_id}/retry")
async def retry_notification(
    notification: OwnedNotification, session: SessionDep, notifier: NotifierDep
) -> NotificationPublic:
    """Send a failed notification again, now (with the sender's own retries); answers the new state."""
    try:
        claimed = await service.claim_for_retry(session=session, notification=notification, now=service.wall_clock())
    except NotRetriableError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    delivered = await service.deliver(session=session, notifier=notifier, notification=claimed)
    return NotificationPublic.model_validate(delivered)
