"""``/predictions``: routes of the predictions domain."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/predictions", tags=["predictions"])
