"""The Great Expectations suites: what blocks a batch, what is only reported, and what a report says."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta

import polars as pl
import pytest

from khalsi.validation import (
    ValidationReport,
    validate_fear_greed,
    validate_market,
    validate_social_daily,
    validate_social_posts,
    validate_trending,
)
from tests.factories import START, classify, market_batch, utc


def failed(report: ValidationReport) -> set[tuple[str, str | None]]:
    return {(o.expectation, o.column) for o in report.blocking_failures}


# --- market ------------------------------------------------------------------------------------------


def test_a_clean_market_batch_passes_without_warnings() -> None:
    report = validate_market(market_batch([1.0, 1.1, 1.2, 1.05]), now=utc(2024, 1, 5))
    assert report.passed
    assert report.warnings == []
    assert report.row_count == 4


MARKET_BLOCKERS: dict[str, tuple[Callable[[], pl.DataFrame], tuple[str, str]]] = {
    "negative price": (
        lambda: market_batch([1.0, -1.0, 1.2]),
        ("expect_column_values_to_be_between", "price"),
    ),
    "zero price": (lambda: market_batch([1.0, 0.0, 1.2]), ("expect_column_values_to_be_between", "price")),
    "null price": (lambda: market_batch([1.0, None, 1.2]), ("expect_column_values_to_not_be_null", "price")),
    "negative volume": (
        lambda: market_batch([1.0, 1.1, 1.2], volumes=[1.0, -5.0, 1.0]),
        ("expect_column_values_to_be_between", "volume_24h"),
    ),
    "negative market cap": (
        lambda: market_batch([1.0, 1.1, 1.2], market_caps=[1.0, 1.0, -1.0]),
        ("expect_column_values_to_be_between", "market_cap"),
    ),
    "conflicting duplicate": (
        lambda: market_batch([1.0, 1.1, 1.3], timestamps=[START, START + timedelta(days=1), START + timedelta(days=1)]),
        ("expect_compound_columns_to_be_unique", "coin_id,timestamp"),
    ),
    "off-grid timestamp": (
        lambda: market_batch([1.0, 1.1], timestamps=[START, START + timedelta(days=1, hours=6)]),
        ("expect_column_values_to_be_in_set", "on_daily_grid"),
    ),
    "null coin": (
        lambda: market_batch([1.0, 1.1]).with_columns(coin_id=pl.lit(None, dtype=pl.String())),
        ("expect_column_values_to_not_be_null", "coin_id"),
    ),
}


@pytest.mark.parametrize("case", list(MARKET_BLOCKERS))
def test_market_blocking_failures(case: str) -> None:
    build, expected = MARKET_BLOCKERS[case]
    report = validate_market(build())
    assert not report.passed
    assert expected in failed(report)
    description = report.describe_failures()
    assert f"{expected[0]} on {expected[1]} failed" in description


def test_market_warnings_do_not_block() -> None:
    batch = market_batch(
        [1.0, 1.1, 9.0, 9.5],  # x8 in a day: implausible, but real markets do it
        timestamps=[START, START + timedelta(days=1), START + timedelta(days=2), START + timedelta(days=5)],
        volumes=[None, 1.0, 1.0, 1.0],
        market_caps=[1.0, None, 1.0, 1.0],
    )
    report = validate_market(batch, now=START + timedelta(days=30))
    assert report.passed
    warned = {(o.expectation, o.column) for o in report.outcomes if not o.success}
    assert warned == {
        ("expect_column_values_to_be_between", "days_since_previous"),
        ("expect_column_values_to_be_between", "abs_log_return"),
        ("expect_column_values_to_not_be_null", "volume_24h"),
        ("expect_column_values_to_not_be_null", "market_cap"),
    }
    assert {o.severity for o in report.outcomes if not o.success} == {"warning"}
    assert any(
        warning.startswith("stale: testcoin last point 2024-01-06 is 25 days old") for warning in report.warnings
    )


def test_gaps_and_jumps_are_per_coin() -> None:
    # Two coins side by side: one coin's last day must not count as the other's previous day.
    first = market_batch([1.0, 1.1, 1.2], coin_id="a")
    second = market_batch([1000.0, 1001.0, 1002.0], coin_id="b", start=START + timedelta(days=10))
    report = validate_market(pl.concat([first, second]))
    assert report.passed
    assert report.warnings == []


def test_report_is_plain_json() -> None:
    report = validate_market(market_batch([1.0, None], timestamps=[START, START + timedelta(hours=3)]))
    as_dict = report.as_dict()
    text = json.dumps(as_dict)  # no default=: every value is already JSON
    assert json.loads(text)["passed"] is False
    assert as_dict["blocking_failures"]
    assert {failure["severity"] for failure in as_dict["blocking_failures"]} == {"critical"}


# --- Fear & Greed ----------------------------------------------------------------------------------


def fear_greed(values: list[int], *, days: list[date] | None = None, classes: list[str] | None = None) -> pl.DataFrame:
    stamps = days or [date(2024, 1, 1) + timedelta(days=offset) for offset in range(len(values))]
    return pl.DataFrame(
        {"day": stamps, "value": values, "classification": classes or [classify(v) for v in values]},
        schema={"day": pl.Date(), "value": pl.Int64(), "classification": pl.String()},
    )


def test_fear_greed_suite() -> None:
    assert validate_fear_greed(fear_greed([10, 50, 90])).passed

    out_of_range = validate_fear_greed(fear_greed([10, 101]))
    assert ("expect_column_values_to_be_between", "value") in failed(out_of_range)

    unknown_class = validate_fear_greed(fear_greed([10, 50], classes=["Extreme Fear", "Panic"]))
    assert ("expect_column_values_to_be_in_set", "classification") in failed(unknown_class)

    twice = validate_fear_greed(fear_greed([10, 20], days=[date(2024, 1, 1), date(2024, 1, 1)]))
    assert ("expect_column_values_to_be_unique", "day") in failed(twice)

    gap = validate_fear_greed(fear_greed([10, 20], days=[date(2024, 1, 1), date(2024, 1, 4)]))
    assert gap.passed
    assert any("days_since_previous" in warning for warning in gap.warnings)


# --- social ------------------------------------------------------------------------------------------


def posts(sentiments: list[float | None], ids: list[str] | None = None) -> pl.DataFrame:
    count = len(sentiments)
    return pl.DataFrame(
        {
            "source": ["news"] * count,
            "external_id": ids or [f"p{index}" for index in range(count)],
            "published_at": [START + timedelta(hours=index) for index in range(count)],
            "sentiment": sentiments,
        },
        schema={
            "source": pl.String(),
            "external_id": pl.String(),
            "published_at": pl.Datetime("us", "UTC"),
            "sentiment": pl.Float64(),
        },
    )


def test_social_posts_suite() -> None:
    assert validate_social_posts(posts([-1.0, 0.0, 1.0])).passed
    assert ("expect_column_values_to_be_between", "sentiment") in failed(validate_social_posts(posts([0.2, 1.5])))
    assert ("expect_column_values_to_not_be_null", "sentiment") in failed(validate_social_posts(posts([0.2, None])))
    duplicated = validate_social_posts(posts([0.1, 0.2], ids=["same", "same"]))
    assert ("expect_compound_columns_to_be_unique", "source,external_id") in failed(duplicated)


def social_daily(mentions: list[int], sentiments: list[float | None]) -> pl.DataFrame:
    count = len(mentions)
    days = [date(2024, 1, 1) + timedelta(days=offset) for offset in range(count)]
    return pl.DataFrame(
        {
            "day": days,
            "coin_id": ["bitcoin"] * count,
            "mean_sentiment": sentiments,
            "mention_count": mentions,
            "post_count": [max(m, 0) for m in mentions],
            "fear_greed": [50] * count,
            "available_at": [utc(d.year, d.month, d.day) + timedelta(days=1) for d in days],
        },
        schema_overrides={"mean_sentiment": pl.Float64()},
    )


def test_social_daily_suite() -> None:
    assert validate_social_daily(social_daily([1, 3], [0.1, -0.2])).passed
    assert ("expect_column_values_to_be_between", "mention_count") in failed(
        validate_social_daily(social_daily([1, -3], [0.1, 0.2]))
    )
    assert ("expect_column_values_to_be_between", "mean_sentiment") in failed(
        validate_social_daily(social_daily([1, 3], [0.1, -1.2]))
    )


def test_trending_suite() -> None:
    frame = pl.DataFrame(
        {
            "coin_id": ["a", "b"],
            "symbol": ["a", "b"],
            "name": ["A", "B"],
            "volume_24h": [1.0, None],
            "rank": [1, 2],
            "timestamp": [START, START],
        }
    )
    report = validate_trending(frame)
    assert report.passed
    assert any("volume_24h" in warning for warning in report.warnings)
    assert ("expect_column_values_to_be_between", "rank") in failed(
        validate_trending(frame.with_columns(rank=pl.Series([0, 1])))
    )
    assert ("expect_compound_columns_to_be_unique", "coin_id,timestamp") in failed(
        validate_trending(frame.with_columns(coin_id=pl.lit("a")))
    )
