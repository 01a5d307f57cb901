"""Request and response bodies of authentication."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr, field_validator

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,50}$"
PASSWORD_MIN_LENGTH = 10
# bcrypt reads at most 72 bytes; a longer password would be silently truncated, so refuse it.
PASSWORD_MAX_BYTES = 72


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _checked_password(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    if len(raw) < PASSWORD_MIN_LENGTH:
        raise ValueError(f"the password must have at least {PASSWORD_MIN_LENGTH} characters")
    if len(raw.encode()) > PASSWORD_MAX_BYTES:
        raise ValueError(f"the password must fit in {PASSWORD_MAX_BYTES} bytes (UTF-8)")
    return value


class UserCreate(_Strict):
    email: EmailStr = Field(max_length=255)
    username: str | None = Field(default=None, pattern=USERNAME_PATTERN)
    password: SecretStr

    @field_validator("password")
    @classmethod
    def _password_rules(cls, value: SecretStr) -> SecretStr:
        return _checked_password(value)


class LoginIn(_Strict):
    email: EmailStr = Field(max_length=255)
    password: SecretStr = Field(min_length=1, max_length=1024)


class RefreshIn(_Strict):
    refresh_token: str = Field(min_length=1, max_length=4096)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_expires_in: int = Field(description="seconds until the refresh token expires")


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    username: str | None
    role: str
    preferences: dict[str, Any] | None
    created_at: datetime
