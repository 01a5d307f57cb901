"""Shared dependencies as ``Annotated`` aliases: routes declare what they need, the app provides it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from khalsi.settings import Settings


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.session_factory() as session:
        yield session


def get_redis(request: Request) -> Any | None:
    """The shared ``redis.asyncio`` client, or None when Redis is not configured."""
    return request.app.state.redis


def get_http(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.http
    return client


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RedisDep = Annotated[Any | None, Depends(get_redis)]
HttpDep = Annotated[httpx.AsyncClient, Depends(get_http)]
