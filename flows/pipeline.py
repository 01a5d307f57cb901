"""Prefect flow ``platform_pipeline``: the stages chained, passing ids and summaries, never frames.

ingest market → ingest social → train each horizon (promote or not) → score every coin and horizon
→ evaluate the users' alerts against the new prices and predictions.
The training and scoring flows are synchronous (CPU-bound); they run in a worker thread as
subflows so this flow's event loop stays free.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger

from flows.alerts import evaluate_alerts
from flows.ingest_market import ingest_market
from flows.ingest_social import ingest_social
from flows.score import score
from flows.train import train
from training.config import HORIZONS


def validation_reference(market: list[dict[str, Any]], social: list[dict[str, Any]]) -> dict[str, Any]:
    """What training depended on: each ingested batch's run id, status and warning count."""
    return {
        "batches": [
            {
                "dataset": outcome["dataset"],
                "name": outcome["name"],
                "run_id": outcome["run_id"],
                "status": outcome["status"],
                "rows_stored": outcome["rows_stored"],
                "warnings": len(outcome["warnings"]),
            }
            for outcome in [*market, *social]
        ]
    }


@flow(name="platform_pipeline")
async def platform_pipeline(
    coins: list[str] | None = None, horizons: list[int] | None = None, train_models: bool = True
) -> dict[str, Any]:
    """Ingest and validate market and social data, train and (maybe) promote each horizon, then score."""
    logger = get_run_logger()
    market = await ingest_market(coins=coins)
    social = await ingest_social()
    runs: dict[str, str] = {}
    if train_models:
        reference = validation_reference(market, social)
        for horizon in horizons or list(HORIZONS):
            runs[f"{horizon}d"] = await asyncio.to_thread(train, horizon=horizon, validation=reference)
            logger.info("trained %dd: MLflow run %s", horizon, runs[f"{horizon}d"])
    scored = await asyncio.to_thread(score, horizons=horizons)
    alerts = await evaluate_alerts()
    return {"market": market, "social": social, "training_runs": runs, "score": scored, "alerts": alerts}
