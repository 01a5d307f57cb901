"""Request and response bodies of user management."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth.schemas import USERNAME_PATTERN, UserPublic

# Preferences are the client's own settings (currency, notification channels...): kept small and flat.
MAX_PREFERENCE_KEYS = 50


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    username: str | None = Field(default=None, pattern=USERNAME_PATTERN)
    preferences: dict[str, Any] | None = None

    @field_validator("preferences")
    @classmethod
    def _small_preferences(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(value) > MAX_PREFERENCE_KEYS:
            raise ValueError(f"at most {MAX_PREFERENCE_KEYS} preference keys")
        return value


class UsersPage(BaseModel):
    items: list[UserPublic]
    total: int
    offset: int
    limit: int
