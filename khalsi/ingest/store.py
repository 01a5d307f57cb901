"""Writing validated data: idempotent upserts, run records, quarantine, and the Parquet lake."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from khalsi import lake
from khalsi.db.engine import session_scope
from khalsi.db.models import (
    Base,
    Coin,
    FearGreed,
    IngestionRun,
    MarketData,
    QuarantinedBatch,
    SocialDaily,
    SocialPost,
    as_utc,
)
from khalsi.sources.exports import CoinInfo
from khalsi.validation import ValidationReport

# SQLite caps bound parameters per statement; chunks keep every insert well under it.
INSERT_CHUNK_ROWS = 500


def insert_new_rows(
    session: Session, model: type[Base], rows: Sequence[dict[str, Any]], *, conflict_columns: Sequence[str]
) -> int:
    """Insert rows, skipping any whose key is already stored; returns how many were new.

    Existing rows are never overwritten: what is stored stays as it was (running twice stores
    nothing twice, and a corrected re-import cannot silently rewrite history).
    """
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    inserted = 0
    table = cast(sa.Table, model.__table__)
    for start in range(0, len(rows), INSERT_CHUNK_ROWS):
        chunk = list(rows[start : start + INSERT_CHUNK_ROWS])
        statement: Any
        if dialect == "postgresql":
            statement = postgresql.insert(table).values(chunk).on_conflict_do_nothing(index_elements=conflict_columns)
        elif dialect == "sqlite":
            statement = sqlite.insert(table).values(chunk).on_conflict_do_nothing(index_elements=conflict_columns)
        else:
            raise ValueError(f"unsupported dialect {dialect}")
        # SQLAlchemy 2.1 only keeps an INSERT's rowcount when asked (PostgreSQL reported -1 otherwise).
        result = session.execute(statement, execution_options={"preserve_rowcount": True})
        inserted += max(int(getattr(result, "rowcount", 0) or 0), 0)
    return inserted


def start_run(engine: Engine, *, flow: str, source: str, dataset: str, prefect_flow_run_id: str | None) -> uuid.UUID:
    """Record that a run began, so a crash still leaves a trace."""
    run = IngestionRun(
        id=uuid.uuid4(),
        flow=flow,
        source=source,
        dataset=dataset,
        status="running",
        started_at=datetime.now(UTC),
        prefect_flow_run_id=prefect_flow_run_id,
    )
    with session_scope(engine) as session:
        session.add(run)
    return run.id


def finish_run(
    engine: Engine,
    run_id: uuid.UUID,
    *,
    status: str,
    rows_in: int,
    rows_stored: int,
    rows_rejected: int,
    message: str | None = None,
    details: dict[str, Any] | None = None,
    raw_path: str | None = None,
) -> None:
    """Close a run with its counts and outcome."""
    with session_scope(engine) as session:
        run = session.get(IngestionRun, run_id)
        if run is None:
            raise LookupError(f"ingestion run {run_id} does not exist")
        finished = datetime.now(UTC)
        started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=UTC)
        run.status = status
        run.finished_at = finished
        run.duration_seconds = (finished - started).total_seconds()
        run.rows_in = rows_in
        run.rows_stored = rows_stored
        run.rows_rejected = rows_rejected
        run.message = message
        # Round-trip through JSON so timestamps and numpy scalars are stored as plain values.
        run.details = None if details is None else json.loads(json.dumps(details, default=str))
        run.raw_path = raw_path


def keep_raw(raw_dir: Path, *, dataset: str, run_id: uuid.UUID, name: str, payload: bytes, suffix: str) -> Path:
    """Keep the source's bytes exactly as received, beside the run that read them."""
    path = raw_dir / dataset / str(run_id) / f"{name}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def quarantine(
    engine: Engine,
    quarantine_dir: Path,
    *,
    run_id: uuid.UUID,
    dataset: str,
    source: str,
    batch: pl.DataFrame,
    report: ValidationReport,
) -> Path:
    """Set a failed batch aside with its validation result; nothing else is touched."""
    path = quarantine_dir / dataset / f"{run_id}-{source.replace('/', '_')}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    batch.write_parquet(path)
    path.with_suffix(".validation.json").write_text(json.dumps(report.as_dict(), indent=2, default=str))
    with session_scope(engine) as session:
        session.add(
            QuarantinedBatch(
                ingestion_run_id=run_id,
                dataset=dataset,
                source=source,
                reason=report.describe_failures(),
                validation_result=json.loads(json.dumps(report.as_dict(), default=str)),
                payload_path=str(path),
                row_count=batch.height,
            )
        )
    return path


def ensure_coins(engine: Engine, coins: Iterable[CoinInfo]) -> None:
    rows = [{"coin_id": c.coin_id, "symbol": c.symbol, "name": c.name} for c in coins]
    with session_scope(engine) as session:
        insert_new_rows(session, Coin, rows, conflict_columns=["coin_id"])


def last_market_point(engine: Engine, coin_id: str) -> tuple[datetime, float] | None:
    """The newest stored (timestamp, price) of a coin: where incremental ingestion resumes."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(MarketData.timestamp, MarketData.price)
            .where(MarketData.coin_id == coin_id)
            .order_by(MarketData.timestamp.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    # psycopg answers in the session's zone (e.g. Etc/UTC), which polars will not compare with UTC.
    timestamp = row[0].astimezone(UTC) if row[0].tzinfo else row[0].replace(tzinfo=UTC)
    return timestamp, float(row[1])


def store_market_rows(engine: Engine, batch: pl.DataFrame, *, run_id: uuid.UUID, source: str) -> int:
    """Insert validated market rows; returns how many were new."""
    rows = [
        {**row, "id": uuid.uuid4(), "ingestion_run_id": run_id, "source": source}
        for row in batch.select(
            "coin_id", "symbol", "timestamp", "price", "volume_24h", "market_cap", "price_change_24h"
        ).iter_rows(named=True)
    ]
    with session_scope(engine) as session:
        return insert_new_rows(session, MarketData, rows, conflict_columns=["coin_id", "timestamp"])


def _as_utc(value: Any) -> Any:
    # SQLite hands back naive datetimes and psycopg `Etc/UTC` ones; every stored time is UTC.
    return as_utc(value) if isinstance(value, datetime) else value


def _read_frame(engine: Engine, statement: sa.Executable, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    columns = {
        name: pl.Series(name, [_as_utc(row[index]) for row in rows], dtype=dtype, strict=False)
        for index, (name, dtype) in enumerate(schema.items())
    }
    return pl.DataFrame(columns, schema=schema)


def refresh_market_lake(engine: Engine, lake_dir: Path, coin_id: str) -> Path:
    """Rewrite one coin's lake partition from the validated table."""
    statement = (
        sa.select(
            MarketData.coin_id,
            MarketData.symbol,
            MarketData.timestamp,
            MarketData.price,
            MarketData.volume_24h,
            MarketData.market_cap,
        )
        .where(MarketData.coin_id == coin_id)
        .order_by(MarketData.timestamp)
    )
    return lake.write_market_partition(lake_dir, coin_id, _read_frame(engine, statement, lake.MARKET_SCHEMA))


def store_fear_greed(engine: Engine, batch: pl.DataFrame, *, run_id: uuid.UUID) -> int:
    rows = [
        {**row, "ingestion_run_id": run_id}
        for row in batch.select("day", "value", "classification", "available_at").iter_rows(named=True)
    ]
    with session_scope(engine) as session:
        return insert_new_rows(session, FearGreed, rows, conflict_columns=["day"])


def refresh_fear_greed_lake(engine: Engine, lake_dir: Path) -> Path:
    statement = sa.select(FearGreed.day, FearGreed.value, FearGreed.classification, FearGreed.available_at).order_by(
        FearGreed.day
    )
    return lake.write_fear_greed(lake_dir, _read_frame(engine, statement, lake.FEAR_GREED_SCHEMA))


def store_social_posts(engine: Engine, batch: pl.DataFrame, *, run_id: uuid.UUID) -> int:
    columns = [
        "source",
        "external_id",
        "published_at",
        "text",
        "sentiment",
        "positive",
        "negative",
        "neutral",
        "scorer",
        "coins",
    ]
    rows = [
        {**row, "id": uuid.uuid4(), "ingestion_run_id": run_id} for row in batch.select(columns).iter_rows(named=True)
    ]
    with session_scope(engine) as session:
        return insert_new_rows(session, SocialPost, rows, conflict_columns=["source", "external_id"])


def replace_social_daily(engine: Engine, batch: pl.DataFrame) -> int:
    """Upsert daily aggregates: a day's aggregate is recomputed from all its stored posts."""
    # Rounded so that a recomputation that only differs in float summation order changes nothing.
    rows = list(
        batch.select(
            "day",
            "coin_id",
            pl.col("mean_sentiment").round(12),
            "mention_count",
            "post_count",
            "fear_greed",
            "available_at",
        ).iter_rows(named=True)
    )
    if not rows:
        return 0
    with session_scope(engine) as session:
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        changed = 0
        for start in range(0, len(rows), INSERT_CHUNK_ROWS):
            chunk = [
                {**r, "id": uuid.uuid4(), "updated_at": datetime.now(UTC)}
                for r in rows[start : start + INSERT_CHUNK_ROWS]
            ]
            statement = insert(cast(sa.Table, SocialDaily.__table__)).values(chunk)
            excluded = statement.excluded
            table = cast(sa.Table, SocialDaily.__table__)
            tracked = ("mean_sentiment", "mention_count", "post_count", "fear_greed", "available_at")
            statement = statement.on_conflict_do_update(
                index_elements=["day", "coin_id"],
                set_={**{name: excluded[name] for name in tracked}, "updated_at": excluded.updated_at},
                # Only rows whose aggregate really changed are rewritten (and counted).
                where=sa.or_(*(table.c[name].is_distinct_from(excluded[name]) for name in tracked)),
            )
            result = session.execute(statement, execution_options={"preserve_rowcount": True})
            changed += max(int(getattr(result, "rowcount", 0) or 0), 0)
        return changed


def refresh_social_daily_lake(engine: Engine, lake_dir: Path) -> Path:
    statement = sa.select(
        SocialDaily.day,
        SocialDaily.coin_id,
        SocialDaily.mean_sentiment,
        SocialDaily.mention_count,
        SocialDaily.post_count,
        SocialDaily.available_at,
    ).order_by(SocialDaily.day, SocialDaily.coin_id)
    return lake.write_social_daily(lake_dir, _read_frame(engine, statement, lake.SOCIAL_DAILY_SCHEMA))


def read_social_posts(engine: Engine) -> pl.DataFrame:
    """All stored posts (for recomputing daily aggregates)."""
    statement = sa.select(
        SocialPost.source, SocialPost.external_id, SocialPost.published_at, SocialPost.sentiment, SocialPost.coins
    )
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    return pl.DataFrame(
        [(r[0], r[1], _as_utc(r[2]), r[3], list(r[4] or [])) for r in rows],
        schema={
            "source": pl.String(),
            "external_id": pl.String(),
            "published_at": pl.Datetime("us", "UTC"),
            "sentiment": pl.Float64(),
            "coins": pl.List(pl.String()),
        },
        orient="row",
    )
