"""Shared dependencies as ``Annotated`` aliases: routes declare what they need, the app provides it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from khalsi.db.models import User
from khalsi.settings import Settings


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.session_factory() as session:
        yield session


def get_redis(request: Request) -> Any | None:
    """The shared ``redis.asyncio`` client, or None when Redis is not configured."""
    return request.app.state.redis


def get_http(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.http
    return client


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RedisDep = Annotated[Any | None, Depends(get_redis)]
HttpDep = Annotated[httpx.AsyncClient, Depends(get_http)]


bearer_scheme = HTTPBearer(auto_error=False, description="The access token from /api/v1/auth/login")


@dataclass(frozen=True)
class Authenticated:
    """The caller behind a valid access token, and the session the token belongs to."""

    user: User
    session_id: uuid.UUID


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def get_bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("an access token is required: send 'Authorization: Bearer <token>'")
    return credentials.credentials


BearerToken = Annotated[str, Depends(get_bearer_token)]


async def get_authenticated(session: SessionDep, settings: SettingsDep, token: BearerToken) -> Authenticated:
    from api.auth.exceptions import AuthError
    from api.auth.service import user_for_access_token

    try:
        user, session_id = await user_for_access_token(session=session, settings=settings.jwt, token=token)
    except AuthError as error:
        raise unauthorized(str(error)) from error
    return Authenticated(user=user, session_id=session_id)


AuthDep = Annotated[Authenticated, Depends(get_authenticated)]


async def get_current_user(auth: AuthDep) -> User:
    return auth.user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(*roles: str) -> Callable[[User], Awaitable[User]]:
    """A dependency that lets only users with one of ``roles`` through (403 otherwise)."""

    async def check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="insufficient permissions")
        return user

    return check


AdminUser = Annotated[User, Depends(require_role("admin"))]


@dataclass(frozen=True)
class Caller:
    """A signed-in caller as its token says, for read-only routes that need no account row."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    role: str


async def get_caller(request: Request, session: SessionDep, settings: SettingsDep, token: BearerToken) -> Caller:
    """A valid access token of a session seen open within the last few seconds (see api.auth.sessions)."""
    from api.auth.exceptions import AuthError
    from api.auth.security import decode_token
    from api.auth.service import session_is_open

    try:
        claims = decode_token(settings.jwt, token, kind="access")
    except AuthError as error:
        raise unauthorized(str(error)) from error
    open_sessions = request.app.state.open_sessions
    if not open_sessions.is_open(claims.session_id):
        if not await session_is_open(session=session, session_id=claims.session_id, user_id=claims.user_id):
            raise unauthorized("this session was closed; log in again")
        open_sessions.remember(claims.session_id)
    return Caller(user_id=claims.user_id, session_id=claims.session_id, role=claims.role)


CallerDep = Annotated[Caller, Depends(get_caller)]
