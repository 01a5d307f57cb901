"""Authentication services: keyword-only functions over an ``AsyncSession``.

A login opens a session (a ``user_sessions`` row). Its refresh token rotates on every use: the
row keeps only the fingerprint of the newest one, so a replayed older token is recognised and
closes the session (whoever holds a stolen copy loses it too). Access tokens name their session,
and a closed session stops them at once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth.exceptions import EmailAlreadyRegisteredError, InvalidTokenError, SessionRevokedError, UsernameTakenError
from api.auth.schemas import TokenPair, UserCreate
from api.auth.security import decode_token, fingerprint, hash_password, issue_token, verify_password
from khalsi.db.models import User, UserSession
from khalsi.settings import JWTSettings


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def get_user_by_email(*, session: AsyncSession, email: str) -> User | None:
    user: User | None = await session.scalar(sa.select(User).where(User.email == normalise_email(email)))
    return user


async def create_user(*, session: AsyncSession, user_in: UserCreate, role: str = "user") -> User:
    """A new account; raise if the email or username is already taken."""
    email = normalise_email(str(user_in.email))
    if await get_user_by_email(session=session, email=email) is not None:
        raise EmailAlreadyRegisteredError(email)
    if user_in.username and await session.scalar(sa.select(User.id).where(User.username == user_in.username)):
        raise UsernameTakenError(user_in.username)
    user = User(
        email=email,
        username=user_in.username,
        password_hash=await hash_password(user_in.password.get_secret_value()),
        role=role,
        preferences={},
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as error:  # a concurrent registration won the race
        await session.rollback()
        raise EmailAlreadyRegisteredError(email) from error
    await session.refresh(user)
    return user


async def authenticate(*, session: AsyncSession, email: str, password: str) -> User | None:
    """The user whose email and password match, or None (same cost either way)."""
    user = await get_user_by_email(session=session, email=email)
    matches = await verify_password(password, user.password_hash if user else None)
    return user if matches else None


def _pair(settings: JWTSettings, *, user: User, session_id: uuid.UUID, now: datetime) -> tuple[TokenPair, str]:
    access, _ = issue_token(settings, kind="access", user_id=user.id, session_id=session_id, role=user.role, now=now)
    refresh, _ = issue_token(settings, kind="refresh", user_id=user.id, session_id=session_id, role=user.role, now=now)
    pair = TokenPair(
        access_token=access,
        refresh_token=refresh,
        expires_in=int(settings.access_lifetime.total_seconds()),
        refresh_expires_in=int(settings.refresh_lifetime.total_seconds()),
    )
    return pair, fingerprint(refresh)


async def open_session(*, session: AsyncSession, settings: JWTSettings, user: User) -> TokenPair:
    """Start a session for ``user`` and return its first token pair."""
    now = datetime.now(UTC)
    session_id = uuid.uuid4()
    pair, refresh_fingerprint = _pair(settings, user=user, session_id=session_id, now=now)
    session.add(UserSession(id=session_id, user_id=user.id, session_token=refresh_fingerprint, connected_at=now))
    await session.commit()
    return pair


async def _close(session: AsyncSession, row: UserSession, now: datetime) -> None:
    row.is_active = False
    row.disconnected_at = now
    row.socket_id = None  # its WebSocket is closed at the next heartbeat
    await session.commit()


async def refresh_session(*, session: AsyncSession, settings: JWTSettings, refresh_token: str) -> TokenPair:
    """Rotate: a new pair for a live session's newest refresh token; a replayed one closes the session."""
    claims = decode_token(settings, refresh_token, kind="refresh")
    row = await session.get(UserSession, claims.session_id, with_for_update=True)
    if row is None or row.user_id != claims.user_id:
        raise InvalidTokenError("not a valid refresh token")
    now = datetime.now(UTC)
    if not row.is_active:
        raise SessionRevokedError("this session was closed; log in again")
    if row.session_token != fingerprint(refresh_token):
        await _close(session, row, now)
        raise SessionRevokedError(
            "this refresh token was already used; the session is closed, log in again", session_id=row.id
        )
    user = await session.get(User, row.user_id)
    if user is None:
        raise InvalidTokenError("not a valid refresh token")
    pair, refresh_fingerprint = _pair(settings, user=user, session_id=row.id, now=now)
    row.session_token = refresh_fingerprint
    await session.commit()
    return pair


async def close_session(*, session: AsyncSession, session_id: uuid.UUID) -> None:
    """Log out: the session's access and refresh tokens stop working."""
    row = await session.get(UserSession, session_id)
    if row is not None and row.is_active:
        await _close(session, row, datetime.now(UTC))


async def user_for_access_token(*, session: AsyncSession, settings: JWTSettings, token: str) -> tuple[User, uuid.UUID]:
    """The user an access token speaks for, and its session; raise if the token or session is dead."""
    claims = decode_token(settings, token, kind="access")
    row = await session.execute(
        sa.select(User, UserSession.is_active)
        .join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.id == claims.session_id, User.id == claims.user_id)
    )
    found = row.first()
    if found is None:
        raise InvalidTokenError("not a valid access token")
    user, active = found
    if not active:
        raise SessionRevokedError("this session was closed; log in again")
    return user, claims.session_id


async def session_is_open(*, session: AsyncSession, session_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Whether the login session exists, belongs to ``user_id`` and is open (one indexed lookup)."""
    active = await session.scalar(
        sa.select(UserSession.is_active).where(UserSession.id == session_id, UserSession.user_id == user_id)
    )
    return bool(active)
