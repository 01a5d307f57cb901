"""Prefect flow ``score``: publish the latest feature vectors, then predict every coin and horizon.

Runs after each ingest. It refreshes the online feature store (which the prediction service polls),
then answers every (coin, horizon) with each horizon's ``champion`` through the same code as the
service (:func:`serving.predict.predict_items`) and inserts the answers into ``predictions``.
Idempotent: the table's unique key (coin, timeframe, feature timestamp, model version) and an
insert that skips existing keys mean a re-run for the same data writes nothing and never
overwrites. Coins whose newest features are stale, and horizons without a champion, are skipped
and counted, not guessed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from khalsi.db.engine import create_sync_engine, session_scope
from khalsi.db.migrate import upgrade
from khalsi.db.models import Prediction
from khalsi.events import channel_name, publish_events
from khalsi.ingest.sources import source_clock
from khalsi.ingest.store import insert_new_rows
from khalsi.settings import ServingSettings, Settings, get_settings
from serving.feature_store import FeatureSnapshot, PublishResult, publish_latest_features, read_feature_snapshot
from serving.model_loader import load_champions, served_horizons
from serving.predict import ServedModel, all_items, predict_items, prediction_rows
from serving.schemas import serving_settings

FLOW_NAME = "score"
PREDICTION_KEY = ("coin_id", "timeframe", "feature_timestamp", "model_version")


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def publish_features(settings: Settings) -> PublishResult:
    """Compute the latest vector per coin from the lake and write the online store."""
    return publish_latest_features(settings)


@task(cache_policy=NO_CACHE)
def read_snapshot(settings: Settings) -> FeatureSnapshot | None:
    """The online store's vectors (exactly what the service serves)."""
    return read_feature_snapshot(settings)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_models(settings: Settings, horizons: list[int]) -> tuple[dict[int, ServedModel], dict[str, str]]:
    """Each horizon's champion from the registry (never "latest")."""
    return load_champions(settings, horizons)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def write_predictions(settings: Settings, rows: list[dict[str, Any]]) -> int:
    """Insert the rows whose key is new; returns how many were written."""
    engine = create_sync_engine(settings)
    try:
        upgrade(engine)
        with session_scope(engine) as session:
            return insert_new_rows(session, Prediction, rows, conflict_columns=PREDICTION_KEY)
    finally:
        engine.dispose()


def score_with(settings: Settings, *, options: ServingSettings, horizons: list[int], publish: bool) -> dict[str, Any]:
    """The flow's body with the settings given (the flow reads them from the environment)."""
    logger = get_run_logger()
    published = publish_features(settings) if publish else None
    snapshot = read_snapshot(settings)
    summary: dict[str, Any] = {
        "published": asdict(published) if published else None,
        "feature_version": snapshot.version if snapshot else None,
        "horizons": horizons,
        "models": {},
        "predicted": 0,
        "written": 0,
        "skipped": {},
        "errors": {},
    }
    if snapshot is None or not snapshot.coin_ids:
        logger.warning("no feature vectors in the online store: nothing to score")
        return summary
    models, errors = load_models(settings, horizons)
    summary["errors"] = errors
    summary["models"] = {served.horizon: f"{served.name}@{served.version}" for served in models.values()}
    for key, message in errors.items():
        logger.warning("%s: %s", key, message)

    results = predict_items(
        all_items(snapshot, horizons),
        models=models,
        snapshot=snapshot,
        now=source_clock(settings)(),
        max_age=timedelta(hours=options.max_feature_age_hours),
        known_horizons=horizons,
    )
    summary["skipped"] = dict(Counter(r.error.code.value for r in results if r.error is not None))
    rows = prediction_rows(results, models=models, feature_version=snapshot.version)
    summary["predicted"] = len(rows)
    summary["written"] = write_predictions(settings, rows) if rows else 0
    if summary["written"]:
        summary["announced"] = publish_events(settings, prediction_events(rows))
    logger.info(
        "scored %d (coin, horizon) pairs, %d new rows written, skipped %s",
        len(rows),
        summary["written"],
        summary["skipped"] or "none",
    )
    return summary


def prediction_events(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Live events for stored predictions (what a WebSocket client subscribed to the coin sees)."""
    keys = ("coin_id", "symbol", "timeframe", "probability_up", "probability_down", "confidence_level")
    more = ("price_target", "price_target_low", "price_target_high", "model_name", "model_version", "expires_at")
    return [
        (
            channel_name("predictions", str(row["coin_id"])),
            {"type": "prediction", **{k: row.get(k) for k in keys + more}},
        )
        for row in rows
    ]


@flow(name=FLOW_NAME)
def score(horizons: list[int] | None = None, publish: bool = True) -> dict[str, Any]:
    """Publish the latest features and write every coin's and horizon's prediction (idempotent)."""
    settings = get_settings()
    options = serving_settings(settings)
    return score_with(settings, options=options, horizons=list(horizons or served_horizons(options)), publish=publish)
