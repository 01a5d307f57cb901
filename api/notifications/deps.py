"""Dependencies of notifications: the caller's own notification, and the notifier."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, HTTPException, status

from api.deps import CurrentUser, HttpDep, SessionDep, SettingsDep
from api.notifications import service
from khalsi.db.models import Notification
from khalsi.notify import INTERACTIVE_POLICY, Notifier


async def owned_notification(notification_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Notification:
    """The caller's notification; 404 when it does not exist or is someone else's."""
    notification = await service.get_notification(session=session, user_id=user.id, notification_id=notification_id)
    if notification is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="notification not found")
    return notification


def get_notifier(settings: SettingsDep, http: HttpDep) -> Notifier:
    """Senders over the configured SMTP server and the app's shared HTTP client, with a request's patience."""
    return Notifier(smtp=settings.smtp, webhooks=settings.webhooks, http=http, policy=INTERACTIVE_POLICY)


OwnedNotification = Annotated[Notification, Depends(owned_notification)]
NotifierDep = Annotated[Notifier, Depends(get_notifier)]
