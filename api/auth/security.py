"""Password hashing and JWTs.

- bcrypt (cost 12) runs in a worker thread: it costs ~0.2 s of CPU on purpose, and the event loop
  must keep serving other requests meanwhile.
- Access and refresh tokens are signed with different secrets (the seed's ``JWT_SECRET`` and
  ``REFRESH_TOKEN_SECRET``), carry their kind in ``typ`` and the session they belong to in ``sid``,
  so one can never be used as the other, and closing a session invalidates both.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import bcrypt
import jwt

from api.auth.exceptions import InvalidTokenError
from khalsi.settings import JWTSettings

BCRYPT_ROUNDS = 12
ALGORITHM = "HS256"
ISSUER = "khalsi"
TokenKind = Literal["access", "refresh"]

# A real hash of a random password: login checks it when the email is unknown, so an attacker
# cannot tell registered emails from the response time.
_DUMMY_HASH = bcrypt.hashpw(b"khalsi-timing-equaliser", bcrypt.gensalt(BCRYPT_ROUNDS)).decode()


async def hash_password(password: str) -> str:
    """A salted bcrypt hash of ``password``."""
    hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
    return hashed.decode()


async def verify_password(password: str, password_hash: str | None) -> bool:
    """Whether ``password`` matches; a missing hash costs the same time and answers False."""
    candidate = (password_hash or _DUMMY_HASH).encode()
    matches = await asyncio.to_thread(bcrypt.checkpw, password.encode(), candidate)
    return matches and password_hash is not None


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    role: str
    kind: TokenKind
    token_id: str
    expires_at: datetime


def _secret(settings: JWTSettings, kind: TokenKind) -> str:
    chosen = settings.secret if kind == "access" else settings.refresh_token_secret
    return chosen.get_secret_value()


def issue_token(
    settings: JWTSettings, *, kind: TokenKind, user_id: uuid.UUID, session_id: uuid.UUID, role: str, now: datetime
) -> tuple[str, TokenClaims]:
    """A signed token of ``kind`` and the claims it carries."""
    lifetime = settings.access_lifetime if kind == "access" else settings.refresh_lifetime
    claims = TokenClaims(
        user_id=user_id,
        session_id=session_id,
        role=role,
        kind=kind,
        token_id=secrets.token_urlsafe(16),
        expires_at=now + lifetime,
    )
    payload = {
        "iss": ISSUER,
        "sub": str(user_id),
        "sid": str(session_id),
        "role": role,
        "typ": kind,
        "jti": claims.token_id,
        "iat": int(now.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
    }
    return jwt.encode(payload, _secret(settings, kind), algorithm=ALGORITHM), claims


def decode_token(settings: JWTSettings, token: str, *, kind: TokenKind) -> TokenClaims:
    """Verify signature, issuer, expiry and kind; raise :class:`InvalidTokenError` otherwise."""
    try:
        payload = jwt.decode(
            token,
            _secret(settings, kind),
            algorithms=[ALGORITHM],  # never trust the token's own "alg" (no "none", no key confusion)
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "sid", "typ", "jti"]},
        )
    except jwt.ExpiredSignatureError as error:
        raise InvalidTokenError(f"the {kind} token has expired") from error
    except jwt.PyJWTError as error:
        raise InvalidTokenError(f"not a valid {kind} token") from error
    if payload.get("typ") != kind:
        raise InvalidTokenError(f"not a valid {kind} token")
    try:
        return TokenClaims(
            user_id=uuid.UUID(str(payload["sub"])),
            session_id=uuid.UUID(str(payload["sid"])),
            role=str(payload.get("role", "user")),
            kind=kind,
            token_id=str(payload["jti"]),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
        )
    except (ValueError, TypeError) as error:
        raise InvalidTokenError(f"not a valid {kind} token") from error


def fingerprint(token: str) -> str:
    """What is stored of a refresh token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()
