"""``/portfolio``: routes of the portfolios domain."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/portfolio", tags=["portfolios"])
