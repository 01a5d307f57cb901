"""Great Expectations suites for market and social data, and the verdict the flows act on.

Every expectation has a severity. ``critical`` ones block: a batch that fails one is quarantined
and never reaches the tables models read. ``warning`` ones (gaps, implausible jumps, missing
volumes, staleness) are reported on the run and in the summary, and the data still loads, because
they describe the real market rather than a broken feed.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

import pandas as pd
import polars as pl

# GX phones home and draws progress bars unless told not to; neither belongs in a pipeline log.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

logger = logging.getLogger(__name__)

MARKET_DAILY = "market_daily"
FEAR_GREED = "fear_greed"
SOCIAL_POSTS = "social_posts"
SOCIAL_DAILY = "social_daily"
TRENDING = "trending_tokens"

# A day's move beyond x4 or /4 is flagged for a human: it happens (listings, early history) but is
# more often a unit or feed error.
IMPLAUSIBLE_LOG_RETURN = math.log(4.0)
FEAR_GREED_CLASSES = ["Extreme Fear", "Fear", "Neutral", "Greed", "Extreme Greed"]

_lock = threading.Lock()


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    severity: str
    success: bool
    unexpected_count: int
    sample: list[Any]


@dataclass
class ValidationReport:
    """What a suite said about one batch."""

    dataset: str
    row_count: int
    outcomes: list[ExpectationOutcome]
    extra_warnings: list[str] = field(default_factory=list)

    @property
    def blocking_failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def passed(self) -> bool:
        return not self.blocking_failures

    @property
    def warnings(self) -> list[str]:
        found = [
            f"{o.expectation}({o.column}): {o.unexpected_count} of {self.row_count} rows"
            # A sample of NULLs says nothing; a sample of values (gap sizes, jumps) does.
            + (f", e.g. {o.sample[:3]}" if any(v is not None for v in o.sample) else "")
            for o in self.outcomes
            if not o.success and o.severity != "critical"
        ]
        return found + self.extra_warnings

    def describe_failures(self) -> str:
        """One line a person can act on."""
        return "; ".join(
            f"{o.expectation} on {o.column or 'table'} failed for {o.unexpected_count} rows (e.g. {o.sample[:3]})"
            for o in self.blocking_failures
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "passed": self.passed,
            "row_count": self.row_count,
            "blocking_failures": [o.__dict__ for o in self.blocking_failures],
            "warnings": self.warnings,
            "outcomes": [o.__dict__ for o in self.outcomes],
        }


@lru_cache(maxsize=1)
def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


@cache
def _batch_definition(dataset: str) -> Any:
    source = _context().data_sources.add_pandas(f"khalsi_{dataset}")
    return source.add_dataframe_asset(dataset).add_batch_definition_whole_dataframe("batch")


@cache
def _suite(dataset: str) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    critical: list[Any]
    warning: list[Any]
    if dataset == MARKET_DAILY:
        critical = [
            *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("coin_id", "symbol", "timestamp", "price")),
            gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, strict_min=True),
            gxe.ExpectColumnValuesToBeBetween(column="volume_24h", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="market_cap", min_value=0),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["coin_id", "timestamp"]),
            gxe.ExpectColumnValuesToBeInSet(column="on_daily_grid", value_set=[True]),
        ]
        warning = [
            gxe.ExpectColumnValuesToBeBetween(column="days_since_previous", min_value=1, max_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="abs_log_return", max_value=IMPLAUSIBLE_LOG_RETURN),
            gxe.ExpectColumnValuesToNotBeNull(column="volume_24h"),
            gxe.ExpectColumnValuesToNotBeNull(column="market_cap"),
        ]
    elif dataset == FEAR_GREED:
        critical = [
            gxe.ExpectColumnValuesToNotBeNull(column="day"),
            gxe.ExpectColumnValuesToNotBeNull(column="value"),
            gxe.ExpectColumnValuesToBeUnique(column="day"),
            gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0, max_value=100),
            gxe.ExpectColumnValuesToBeInSet(column="classification", value_set=FEAR_GREED_CLASSES),
        ]
        warning = [gxe.ExpectColumnValuesToBeBetween(column="days_since_previous", min_value=1, max_value=1)]
    elif dataset == SOCIAL_POSTS:
        critical = [
            *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("source", "external_id", "published_at")),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["source", "external_id"]),
            gxe.ExpectColumnValuesToNotBeNull(column="sentiment"),
            gxe.ExpectColumnValuesToBeBetween(column="sentiment", min_value=-1, max_value=1),
        ]
        warning = []
    elif dataset == SOCIAL_DAILY:
        critical = [
            gxe.ExpectColumnValuesToNotBeNull(column="day"),
            gxe.ExpectColumnValuesToNotBeNull(column="coin_id"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["day", "coin_id"]),
            gxe.ExpectColumnValuesToBeBetween(column="mean_sentiment", min_value=-1, max_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="mention_count", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="post_count", min_value=0),
        ]
        warning = []
    elif dataset == TRENDING:
        critical = [
            *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("coin_id", "symbol", "name", "timestamp")),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["coin_id", "timestamp"]),
            gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1),
        ]
        warning = [gxe.ExpectColumnValuesToNotBeNull(column="volume_24h")]
    else:
        raise ValueError(f"no expectation suite for dataset {dataset!r}")
    _context()  # GX binds a suite to the active context when it is built
    suite = gx.ExpectationSuite(name=f"khalsi_{dataset}")
    for expectation in critical:
        expectation.severity = "critical"
        suite.add_expectation(expectation)
    for expectation in warning:
        expectation.severity = "warning"
        suite.add_expectation(expectation)
    return suite


def _run_suite(dataset: str, frame: pd.DataFrame) -> ValidationReport:
    with _lock:  # one ephemeral GX context per process; its registries are not thread-safe
        suite = _suite(dataset)
        batch = _batch_definition(dataset).get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite)
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        kwargs = config.kwargs
        details = item.result or {}
        sample = details.get("partial_unexpected_list") or []
        outcomes.append(
            ExpectationOutcome(
                expectation=config.type,
                column=kwargs.get("column") or ",".join(kwargs.get("column_list", []) or []) or None,
                severity=str(getattr(config, "severity", "critical")).split(".")[-1].lower(),
                success=bool(item.success),
                unexpected_count=int(details.get("unexpected_count") or 0),
                sample=[_jsonable(v) for v in sample[:10]],
            )
        )
    return ValidationReport(dataset=dataset, row_count=len(frame), outcomes=outcomes)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def market_validation_frame(batch: pl.DataFrame) -> pd.DataFrame:
    """The batch plus the derived columns the market suite checks (grid, gaps, jumps)."""
    derived = batch.sort("coin_id", "timestamp").with_columns(
        on_daily_grid=(pl.col("timestamp").dt.truncate("1d") == pl.col("timestamp")),
        days_since_previous=(pl.col("timestamp").diff().over("coin_id").dt.total_seconds() / 86_400.0),
        abs_log_return=(pl.col("price") / pl.col("price").shift(1).over("coin_id")).log().abs(),
    )
    return derived.to_pandas()


def validate_market(batch: pl.DataFrame, *, now: datetime | None = None, stale_after_days: int = 2) -> ValidationReport:
    """Run the market suite on a prepared batch (``coin_id, symbol, timestamp, price, volume_24h, market_cap``)."""
    report = _run_suite(MARKET_DAILY, market_validation_frame(batch))
    if now is not None and batch.height:
        latest = batch.group_by("coin_id").agg(pl.col("timestamp").max())
        for coin_id, last in latest.iter_rows():
            age_days = (now - last).total_seconds() / 86_400
            if age_days > stale_after_days:
                report.extra_warnings.append(f"stale: {coin_id} last point {last:%Y-%m-%d} is {age_days:.0f} days old")
    return report


def validate_fear_greed(batch: pl.DataFrame) -> ValidationReport:
    """Run the Fear & Greed suite (``day, value, classification``)."""
    derived = batch.sort("day").with_columns(days_since_previous=pl.col("day").diff().dt.total_days().cast(pl.Float64))
    return _run_suite(FEAR_GREED, derived.to_pandas())


def validate_social_posts(batch: pl.DataFrame) -> ValidationReport:
    """Run the social posts suite (``source, external_id, published_at, sentiment``)."""
    return _run_suite(SOCIAL_POSTS, batch.select("source", "external_id", "published_at", "sentiment").to_pandas())


def validate_social_daily(batch: pl.DataFrame) -> ValidationReport:
    """Run the daily social aggregates suite."""
    return _run_suite(SOCIAL_DAILY, batch.to_pandas())


def validate_trending(batch: pl.DataFrame) -> ValidationReport:
    """Run the trending tokens suite."""
    return _run_suite(TRENDING, batch.to_pandas())
