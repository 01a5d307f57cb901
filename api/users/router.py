"""``/users``: the caller's account, and the admin's list of accounts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.auth.exceptions import UsernameTakenError
from api.auth.schemas import UserPublic
from api.deps import AdminUser, CurrentUser, SessionDep
from api.users import service
from api.users.schemas import UsersPage, UserUpdate

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me")
async def read_me(user: CurrentUser) -> UserPublic:
    return UserPublic.model_validate(user)


@router.patch("/me")
async def update_me(user_in: UserUpdate, user: CurrentUser, session: SessionDep) -> UserPublic:
    try:
        updated = await service.update_user(session=session, user=user, user_in=user_in)
    except UsernameTakenError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return UserPublic.model_validate(updated)


@router.get("")
async def list_users(
    _admin: AdminUser,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> UsersPage:
    """Every account, oldest first (admins only)."""
    users, total = await service.list_users(session=session, offset=offset, limit=limit)
    return UsersPage(items=[UserPublic.model_validate(u) for u in users], total=total, offset=offset, limit=limit)
