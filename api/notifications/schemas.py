"""Response bodies of notifications."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

NotificationStatus = Literal["pending", "sent", "failed"]


class NotificationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    alert_id: uuid.UUID | None
    channel: str
    target: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


class NotificationsPage(BaseModel):
    items: list[NotificationPublic]
    total: int
    offset: int
    limit: int
