"""Domain errors of authentication; the router turns them into HTTP answers."""

from __future__ import annotations

import uuid


class AuthError(Exception):
    """Base of the authentication errors."""


class EmailAlreadyRegisteredError(AuthError):
    def __init__(self, email: str) -> None:
        super().__init__(f"an account with email {email!r} already exists")


class UsernameTakenError(AuthError):
    def __init__(self, username: str) -> None:
        super().__init__(f"the username {username!r} is taken")


class InvalidTokenError(AuthError):
    """A token that is malformed, expired, of the wrong kind or signed with another key."""


class SessionRevokedError(AuthError):
    """A refresh token whose session was closed, or a refresh token used twice."""

    def __init__(self, message: str, *, session_id: uuid.UUID | None = None) -> None:
        super().__init__(message)
        # Set when this very request closed the session (a replayed refresh token).
        self.closed_session_id = session_id
