"""``/auth``: register, log in, rotate the refresh token, log out."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from api.auth import service
from api.auth.exceptions import AuthError, EmailAlreadyRegisteredError, SessionRevokedError, UsernameTakenError
from api.auth.schemas import LoginIn, RefreshIn, TokenPair, UserCreate, UserPublic
from api.auth.sessions import REVOKED_CHANNEL
from api.deps import AuthDep, RedisDep, SessionDep, SettingsDep, unauthorized
from khalsi.events import CHANNEL_PREFIX

router = APIRouter(prefix="/auth", tags=["auth"])
logger = logging.getLogger(__name__)


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register(user_in: UserCreate, session: SessionDep) -> UserPublic:
    """Create an account (role ``user``)."""
    try:
        user = await service.create_user(session=session, user_in=user_in)
    except (EmailAlreadyRegisteredError, UsernameTakenError) as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return UserPublic.model_validate(user)


@router.post("/login")
async def login(login_in: LoginIn, session: SessionDep, settings: SettingsDep) -> TokenPair:
    """Exchange email and password for an access token and a refresh token."""
    user = await service.authenticate(
        session=session, email=str(login_in.email), password=login_in.password.get_secret_value()
    )
    if user is None:
        raise unauthorized("wrong email or password")
    return await service.open_session(session=session, settings=settings.jwt, user=user)


async def announce_closed(request: Request, redis: Any | None, session_id: uuid.UUID) -> None:
    """Every API process forgets the closed session now (see api.auth.sessions); best effort."""
    request.app.state.open_sessions.forget(session_id)
    if redis is None:
        return
    try:
        payload = json.dumps({"session_id": str(session_id)})
        await asyncio.wait_for(redis.publish(CHANNEL_PREFIX + REVOKED_CHANNEL, payload), timeout=1.0)
    except Exception as error:  # the others forget it within SESSION_CHECK_SECONDS anyway
        logger.warning("could not announce a closed session: %s", error)


@router.post("/refresh")
async def refresh(
    refresh_in: RefreshIn, request: Request, session: SessionDep, settings: SettingsDep, redis: RedisDep
) -> TokenPair:
    """A new token pair; the refresh token sent is spent (a second use closes the session)."""
    try:
        return await service.refresh_session(
            session=session, settings=settings.jwt, refresh_token=refresh_in.refresh_token
        )
    except SessionRevokedError as error:
        if error.closed_session_id is not None:
            await announce_closed(request, redis, error.closed_session_id)
        raise unauthorized(str(error)) from error
    except AuthError as error:
        raise unauthorized(str(error)) from error


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(auth: AuthDep, request: Request, session: SessionDep, redis: RedisDep) -> None:
    """Close the caller's session: its access and refresh tokens stop working, on every API process."""
    await service.close_session(session=session, session_id=auth.session_id)
    await announce_closed(request, redis, auth.session_id)
