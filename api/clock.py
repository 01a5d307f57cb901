"""The platform's "now" for the API: the replay clock under the bundled replay, the wall clock live.

Market staleness, point-in-time social figures and prediction expiry are judged against the same
clock that ingestion and serving use (:func:`khalsi.ingest.sources.source_clock`), so a replayed
day looks exactly as fresh to the API as it does to the prediction service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from khalsi.settings import Settings

Clock = Callable[[], datetime]
CLOCK_STATE = "platform_clock"


def _build_clock(settings: Settings) -> Clock:
    # Imported here: the ingestion package pulls in polars, which the API needs only for this.
    from khalsi.ingest.sources import source_clock

    return source_clock(settings)


async def get_platform_clock(request: Request) -> Clock:
    """The app's clock, built once: the replay clock reads the bundled history's end from disk."""
    clock: Clock | None = getattr(request.app.state, CLOCK_STATE, None)
    if clock is None:
        clock = await asyncio.to_thread(_build_clock, request.app.state.settings)
        setattr(request.app.state, CLOCK_STATE, clock)
    return clock


async def get_platform_now(clock: Annotated[Clock, Depends(get_platform_clock)]) -> datetime:
    return clock()


PlatformNow = Annotated[datetime, Depends(get_platform_now)]
