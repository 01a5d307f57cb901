"""Ownership as a dependency: a route only ever receives one of the caller's own alerts."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, HTTPException, status

from api.alerts import service
from api.deps import CurrentUser, SessionDep
from khalsi.db.models import UserAlert


async def owned_alert(alert_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> UserAlert:
    """The caller's alert ``alert_id``; 404 when it does not exist or is someone else's (ids do not leak)."""
    alert = await service.get_alert(session=session, user_id=user.id, alert_id=alert_id)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="alert not found")
    return alert


OwnedAlert = Annotated[UserAlert, Depends(owned_alert)]
