"""``/market``: routes of the market domain."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/market", tags=["market"])
