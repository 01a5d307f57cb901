"""Request and response bodies of alerts; each ``alert_type`` has its own typed ``condition``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.alerts.rules import (
    MAX_CHANNELS,
    MAX_COOLDOWN_MINUTES,
    MIN_COOLDOWN_MINUTES,
    ChangeCondition,
    ChannelSpec,
    EmailChannel,
    PriceCondition,
    ProbabilityCondition,
    WebhookChannel,
    safe_rule,
    unique_channels,
)
from khalsi.db.models import UserAlert

SYMBOL_PATTERN = r"^[A-Za-z0-9-]{1,20}$"
COOLDOWN_DESCRIPTION = (
    "null: fire once, then deactivate (re-arm with PATCH is_active=true); "
    "N: stay active and fire again while the condition holds, at most every N minutes"
)


def _default_channels() -> list[EmailChannel | WebhookChannel]:
    return [EmailChannel()]


class _AlertIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    symbol: str = Field(pattern=SYMBOL_PATTERN, description="the coin's ticker, e.g. BTC (any case)")
    channels: list[ChannelSpec] = Field(default_factory=_default_channels, min_length=1, max_length=MAX_CHANNELS)
    cooldown_minutes: int | None = Field(
        default=None, ge=MIN_COOLDOWN_MINUTES, le=MAX_COOLDOWN_MINUTES, description=COOLDOWN_DESCRIPTION
    )

    @field_validator("symbol")
    @classmethod
    def _lower_symbol(cls, value: str) -> str:
        # Stored the way ingestion stores symbols (CoinGecko's lower case).
        return value.lower()

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: list[EmailChannel | WebhookChannel]) -> list[EmailChannel | WebhookChannel]:
        return unique_channels(value)


class PriceAlertCreate(_AlertIn):
    alert_type: Literal["price_above", "price_below"]
    condition: PriceCondition


class ChangeAlertCreate(_AlertIn):
    alert_type: Literal["change_24h_above", "change_24h_below"]
    condition: ChangeCondition


class ProbabilityAlertCreate(_AlertIn):
    alert_type: Literal["probability_up_above", "probability_up_below"]
    condition: ProbabilityCondition


AlertCreateIn = PriceAlertCreate | ChangeAlertCreate | ProbabilityAlertCreate


class AlertUpdate(BaseModel):
    """Fields to change; ``symbol`` and ``alert_type`` are fixed (create another alert instead)."""

    model_config = ConfigDict(extra="forbid")

    condition: dict[str, Any] | None = Field(default=None, description="checked against the alert's own type")
    channels: list[ChannelSpec] | None = Field(default=None, min_length=1, max_length=MAX_CHANNELS)
    cooldown_minutes: int | None = Field(
        default=None, ge=MIN_COOLDOWN_MINUTES, le=MAX_COOLDOWN_MINUTES, description=COOLDOWN_DESCRIPTION
    )
    is_active: bool | None = None

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: list[EmailChannel | WebhookChannel] | None) -> list[EmailChannel | WebhookChannel] | None:
        return None if value is None else unique_channels(value)

    @model_validator(mode="after")
    def _no_null_for_required_parts(self) -> AlertUpdate:
        for name in ("condition", "channels", "is_active"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null; leave it out to keep it")
        return self


class AlertPublic(BaseModel):
    id: uuid.UUID
    symbol: str
    alert_type: str
    condition: dict[str, Any]
    channels: list[ChannelSpec]
    cooldown_minutes: int | None
    is_active: bool
    triggered_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, alert: UserAlert) -> AlertPublic:
        condition, channels, cooldown = safe_rule(alert.condition)
        return cls(
            id=alert.id,
            symbol=alert.symbol,
            alert_type=alert.alert_type,
            condition=condition,
            channels=channels,
            cooldown_minutes=cooldown,
            is_active=alert.is_active,
            triggered_at=alert.triggered_at,
            created_at=alert.created_at,
        )


class AlertsPage(BaseModel):
    items: list[AlertPublic]
    total: int
    offset: int
    limit: int
