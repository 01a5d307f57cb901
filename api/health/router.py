from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import HttpDep, RedisDep, SessionDep, SettingsDep
from api.health.schemas import HealthPublic
from api.health.service import check_health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
async def health(
    response: Response, session: SessionDep, redis: RedisDep, http: HttpDep, settings: SettingsDep
) -> HealthPublic:
    """Every dependency's state; 503 only when the database, which nothing works without, is down."""
    report = await check_health(session=session, redis=redis, http=http, settings=settings)
    if report.status == "unhealthy":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return report
