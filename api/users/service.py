"""User services: keyword-only functions over an ``AsyncSession``."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth.exceptions import UsernameTakenError
from api.users.schemas import UserUpdate
from khalsi.db.models import User


async def update_user(*, session: AsyncSession, user: User, user_in: UserUpdate) -> User:
    """Apply the fields that were sent; preferences are merged key by key (``null`` removes a key)."""
    sent = user_in.model_fields_set
    if "username" in sent and user_in.username != user.username:
        if user_in.username and await session.scalar(sa.select(User.id).where(User.username == user_in.username)):
            raise UsernameTakenError(user_in.username)
        user.username = user_in.username
    if "preferences" in sent and user_in.preferences is not None:
        merged = dict(user.preferences or {})
        for key, value in user_in.preferences.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        user.preferences = merged
    try:
        await session.commit()
    except IntegrityError as error:
        await session.rollback()
        raise UsernameTakenError(user_in.username or "") from error
    await session.refresh(user)
    return user


async def list_users(*, session: AsyncSession, offset: int, limit: int) -> tuple[list[User], int]:
    total = await session.scalar(sa.select(sa.func.count()).select_from(User)) or 0
    rows = await session.scalars(sa.select(User).order_by(User.created_at, User.id).offset(offset).limit(limit))
    return list(rows), int(total)
