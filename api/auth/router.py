"""``/auth``: register, log in, rotate the refresh token, log out."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from api.auth import service
from api.auth.exceptions import AuthError, EmailAlreadyRegisteredError, UsernameTakenError
from api.auth.schemas import LoginIn, RefreshIn, TokenPair, UserCreate, UserPublic
from api.deps import AuthDep, SessionDep, SettingsDep, unauthorized

router = APIRouter(prefix="/auth", tags=["auth"])


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


@router.post("/refresh")
async def refresh(refresh_in: RefreshIn, session: SessionDep, settings: SettingsDep) -> TokenPair:
    """A new token pair; the refresh token sent is spent (a second use closes the session)."""
    try:
        return await service.refresh_session(
            session=session, settings=settings.jwt, refresh_token=refresh_in.refresh_token
        )
    except AuthError as error:
        raise unauthorized(str(error)) from error


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(auth: AuthDep, session: SessionDep) -> None:
    """Close the caller's session: its access and refresh tokens stop working."""
    await service.close_session(session=session, session_id=auth.session_id)
