"""Prefect flow ``platform_pipeline``: the stages chained, passing ids and paths, never frames."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.ingest_market import ingest_market
from flows.ingest_social import ingest_social


@flow(name="platform_pipeline")
async def platform_pipeline(coins: list[str] | None = None) -> dict[str, Any]:
    """Ingest and validate market and social data; later stages (train, score) continue from here."""
    market = await ingest_market(coins=coins)
    social = await ingest_social()
    return {"market": market, "social": social}
