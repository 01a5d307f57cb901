"""Ownership as a dependency: a route body only ever sees the caller's own position."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, HTTPException, status

from api.deps import CurrentUser, SessionDep
from api.portfolios import service
from api.portfolios.valuation import Lot


async def valid_position(position_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Lot:
    """The caller's position ``position_id``; 404 if it does not exist or is someone else's (ids do not leak)."""
    position = await service.get_position(session=session, user_id=user.id, position_id=position_id)
    if position is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="position not found")
    return position


OwnedPosition = Annotated[Lot, Depends(valid_position)]
