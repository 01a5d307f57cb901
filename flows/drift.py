"""Prefect flow ``drift_report``: each horizon's champion against the last N days of features.

Thin on purpose: every step is a plain function of :mod:`training.drift`; the tasks add retries
(registry, lake, database and report files are I/O) and visibility. Per horizon the flow returns a
small record: the verdict (``ok`` / ``warning`` / ``drift``) and the summary's path, or why there
was nothing to check: ``no_champion``, or ``no_data`` (a champion whose run recorded no training
window, or no feature rows in a window). Both are reported, not raised: before the first promotion
there is nothing to monitor, and one horizon's gap does not stop the others.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import exponential_backoff

from khalsi.settings import Settings, get_settings
from training.config import HORIZONS, registered_model_name
from training.drift import (
    ChampionReference,
    DriftInputError,
    DriftSummary,
    DriftThresholds,
    FeatureWindows,
    assess_drift,
    find_champion_reference,
    read_feature_windows,
    read_stored_predictions,
    report_folder,
    report_stamp,
    write_drift_report,
)

FLOW_NAME = "drift_report"
DEFAULT_CURRENT_DAYS = 30


def _unless_nothing_to_compare(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry I/O faults, not a missing window or training record (retrying cannot create them)."""
    return not isinstance(state.data, DriftInputError)


IO_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _unless_nothing_to_compare,
}


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def find_champion(settings: Settings, horizon_days: int) -> ChampionReference | None:
    """The horizon's champion and its training window from the registry (None: no champion)."""
    return find_champion_reference(settings, horizon_days)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def read_windows(
    settings: Settings, champion: ChampionReference, current_days: int, as_of: date | None
) -> FeatureWindows:
    """The reference and current feature rows, from the lake."""
    return read_feature_windows(settings, champion, current_days=current_days, as_of=as_of)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def read_predictions(settings: Settings, champion: ChampionReference) -> pl.DataFrame:
    """The champion's stored predictions."""
    return read_stored_predictions(settings, champion)


@task(cache_policy=NO_CACHE)
def compare(
    champion: ChampionReference, windows: FeatureWindows, stored: pl.DataFrame, thresholds: DriftThresholds
) -> tuple[DriftSummary, Any]:
    """Evidently's tests, the calibrated thresholds and the verdict."""
    return assess_drift(champion, windows, stored, thresholds=thresholds)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def write_report(settings: Settings, summary: DriftSummary, snapshot: Any, stamp: str) -> DriftSummary:
    """The HTML report, Evidently's JSON and the summary under KHALSI_HOME/reports/drift."""
    return write_drift_report(summary, snapshot, report_folder(settings, stamp, summary.horizon_days))


def _outcome(horizon_days: int, status: str, message: str, summary: DriftSummary | None = None) -> dict[str, Any]:
    return {
        "horizon": f"{horizon_days}d",
        "status": status,
        "verdict": summary.verdict.value if summary else None,
        "model": f"{summary.model_name}@{summary.model_version}" if summary else None,
        "summary_path": summary.files.get("summary") if summary else None,
        "html_path": summary.files.get("html") if summary else None,
        "message": message,
    }


def drift_with(
    settings: Settings,
    *,
    horizons: list[int],
    current_days: int = DEFAULT_CURRENT_DAYS,
    as_of: date | None = None,
    thresholds: DriftThresholds | None = None,
    stamp: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The flow's body with the settings given (the flow reads them from the environment)."""
    logger = get_run_logger()
    rules = thresholds or DriftThresholds()
    stamp = stamp or report_stamp()
    outcomes: dict[str, dict[str, Any]] = {}
    for horizon in horizons:
        label = f"{horizon}d"
        try:
            champion = find_champion(settings, horizon)
            if champion is None:
                message = (
                    f"{registered_model_name(horizon)} has no champion: nothing to monitor until a model is "
                    "promoted (khalsi train)"
                )
                logger.warning("%s: %s", label, message)
                outcomes[label] = _outcome(horizon, "no_champion", message)
                continue
            windows = read_windows(settings, champion, current_days, as_of)
            stored = read_predictions(settings, champion)
            summary, snapshot = compare(champion, windows, stored, rules)
        except DriftInputError as error:
            # No recorded training window, or nothing to compare: said per horizon, the others still run.
            logger.warning("%s: %s", label, error)
            outcomes[label] = _outcome(horizon, "no_data", str(error))
            continue
        summary = write_report(settings, summary, snapshot, stamp)
        log = logger.info if summary.verdict.value == "ok" else logger.warning
        log("%s %s v%s: %s; %s", label, summary.model_name, summary.model_version, summary.verdict, summary.reasons[0])
        outcomes[label] = _outcome(horizon, "checked", "; ".join(summary.reasons), summary)
    return outcomes


@flow(name=FLOW_NAME)
def drift_report(
    horizons: list[int] | None = None, current_days: int = DEFAULT_CURRENT_DAYS, as_of: date | None = None
) -> dict[str, dict[str, Any]]:
    """Compare each horizon's champion with the last ``current_days`` days; the verdict and report path per horizon."""
    settings = get_settings()
    return drift_with(settings, horizons=list(horizons or HORIZONS), current_days=current_days, as_of=as_of)
