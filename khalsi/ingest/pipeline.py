"""One batch through the data platform's gate: validate → store or quarantine → lake, recorded.

Shared by the ingestion flows and ``khalsi import`` so a file and an API response are held to
exactly the same rules. A batch that fails a blocking expectation is set aside whole: nothing
already stored is touched and the models never see it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
from sqlalchemy.engine import Engine

from khalsi.ingest import store
from khalsi.ingest.market import FetchedHistory, prepare_market_batch
from khalsi.settings import Settings
from khalsi.validation import MARKET_DAILY, ValidationReport, validate_market


class BatchQuarantinedError(RuntimeError):
    """A batch failed a blocking expectation; it was set aside and nothing stored was touched."""


@dataclass
class BatchOutcome:
    """What happened to one batch, as the run summary shows it."""

    dataset: str
    name: str
    status: str
    rows_in: int = 0
    rows_stored: int = 0
    rows_rejected: int = 0
    first: str | None = None
    last: str | None = None
    warnings: list[str] = field(default_factory=list)
    message: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class GatedBatch:
    """A batch ready for the gate and what to do with it once it passes."""

    dataset: str
    source: str
    name: str
    rows: pl.DataFrame
    rows_in: int
    validate: Callable[[pl.DataFrame], ValidationReport]
    store_rows: Callable[[pl.DataFrame, uuid.UUID], int]
    refresh_lake: Callable[[], object] | None = None
    time_column: str | None = None
    rows_rejected: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    raw_suffix: str = "bin"


def run_gate(
    engine: Engine, settings: Settings, batch: GatedBatch, *, flow_name: str, prefect_flow_run_id: str | None = None
) -> BatchOutcome:
    """Validate a batch, then store it and refresh the lake, or quarantine it; record the run either way."""
    run_id = store.start_run(
        engine, flow=flow_name, source=batch.source, dataset=batch.dataset, prefect_flow_run_id=prefect_flow_run_id
    )
    raw_path = None
    if batch.raw is not None:
        raw_path = str(
            store.keep_raw(
                settings.raw_dir,
                dataset=batch.dataset,
                run_id=run_id,
                name=batch.name,
                payload=batch.raw,
                suffix=batch.raw_suffix,
            )
        )
    outcome = BatchOutcome(
        dataset=batch.dataset,
        name=batch.name,
        status="succeeded",
        rows_in=batch.rows_in,
        rows_rejected=batch.rows_rejected,
        run_id=str(run_id),
    )
    details: dict[str, Any] = {"notes": batch.notes}
    try:
        if batch.rows.height == 0:
            outcome.status = "up-to-date" if batch.rows_in == 0 else "succeeded"
        else:
            report = batch.validate(batch.rows)
            details["validation"] = report.as_dict()
            outcome.warnings = report.warnings
            if not report.passed:
                store.quarantine(
                    engine,
                    settings.quarantine_dir,
                    run_id=run_id,
                    dataset=batch.dataset,
                    source=batch.source,
                    batch=batch.rows,
                    report=report,
                )
                outcome.status = "quarantined"
                outcome.message = report.describe_failures()
                outcome.rows_rejected = batch.rows_in
            else:
                outcome.rows_stored = batch.store_rows(batch.rows, run_id)
                if batch.refresh_lake is not None:
                    batch.refresh_lake()
                if batch.time_column is not None:
                    times = batch.rows.get_column(batch.time_column)
                    outcome.first, outcome.last = str(times.min()), str(times.max())
    except Exception as error:
        store.finish_run(
            engine,
            run_id,
            status="failed",
            rows_in=outcome.rows_in,
            rows_stored=0,
            rows_rejected=outcome.rows_rejected,
            message=f"{type(error).__name__}: {error}",
            details=details,
            raw_path=raw_path,
        )
        raise
    store.finish_run(
        engine,
        run_id,
        status=outcome.status,
        rows_in=outcome.rows_in,
        rows_stored=outcome.rows_stored,
        rows_rejected=outcome.rows_rejected,
        message=outcome.message,
        details=details,
        raw_path=raw_path,
    )
    return outcome


def market_gated_batch(
    engine: Engine, settings: Settings, fetched: FetchedHistory, *, source_name: str, now: datetime
) -> GatedBatch:
    """A coin's fetched history, cleaned up as ``prepare_market_batch`` documents, ready for the gate."""
    coin = fetched.coin
    prepared = prepare_market_batch(fetched.rows, previous=store.last_market_point(engine, coin.coin_id))
    return GatedBatch(
        dataset=MARKET_DAILY,
        source=f"{source_name}:{coin.coin_id}",
        name=coin.coin_id,
        rows=prepared.rows,
        rows_in=fetched.rows.height,
        rows_rejected=prepared.rejected.height,
        notes={**prepared.notes, "rejected": prepared.rejected.head(20).to_dicts()},
        validate=lambda rows: validate_market(rows, now=now),
        store_rows=lambda rows, run_id: store.store_market_rows(engine, rows, run_id=run_id, source=source_name),
        refresh_lake=lambda: store.refresh_market_lake(engine, settings.lake_dir, coin.coin_id),
        time_column="timestamp",
        raw=fetched.raw,
        raw_suffix=fetched.raw_suffix,
    )


def load_market_batch(
    engine: Engine,
    settings: Settings,
    *,
    fetched: FetchedHistory,
    source_name: str,
    now: datetime,
    flow_name: str,
    prefect_flow_run_id: str | None = None,
) -> BatchOutcome:
    """Prepare, validate and store (or quarantine) one coin's history."""
    batch = market_gated_batch(engine, settings, fetched, source_name=source_name, now=now)
    return run_gate(engine, settings, batch, flow_name=flow_name, prefect_flow_run_id=prefect_flow_run_id)


def raise_if_quarantined(outcomes: list[BatchOutcome], settings: Settings) -> None:
    """Fail visibly, naming each quarantined batch and why, once every other batch is stored."""
    quarantined = [o for o in outcomes if o.status == "quarantined"]
    if quarantined:
        raise BatchQuarantinedError(
            "; ".join(f"{o.dataset} batch {o.name} quarantined: {o.message}" for o in quarantined)
            + f" (kept in {settings.quarantine_dir}; nothing already stored was changed)"
        )
