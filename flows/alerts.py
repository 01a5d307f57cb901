"""Prefect flow ``evaluate_alerts``: check every active alert against the newest stored data, notify.

Runs after scoring (new prices and predictions are what alerts watch). Thin: the work is
:func:`api.alerts.evaluation.run_evaluation`; the task retries a failed pass (a lost database
connection, say), which is safe: a firing is claimed at most once, so a retried pass never notifies
twice, and a notification the failed pass had claimed but not sent is picked up by a later pass's
sweep of stale pending rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from api.alerts.evaluation import run_evaluation
from khalsi.db.engine import create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.settings import Settings, get_settings

FLOW_NAME = "evaluate_alerts"


def _migrate(settings: Settings) -> None:
    engine = create_sync_engine(settings)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
async def evaluate_pass(settings: Settings) -> dict[str, Any]:
    """One evaluation pass; returns its counts."""
    await asyncio.to_thread(_migrate, settings)
    summary = await run_evaluation(settings)
    return summary.as_dict()


@flow(name=FLOW_NAME)
async def evaluate_alerts() -> dict[str, Any]:
    """Fire the alerts whose condition holds on the newest stored data and deliver their notifications."""
    logger = get_run_logger()
    counts: dict[str, Any] = await evaluate_pass(get_settings())
    logger.info(
        "checked %d alerts: %d fired, %d notifications (%d sent, %d failed), %d recovered, skipped %s",
        counts["checked"],
        counts["triggered"],
        counts["notifications"],
        counts["sent"],
        counts["failed"],
        counts["recovered"],
        counts["skipped"] or "none",
    )
    return counts
