"""Labels come from the calendar: the price exactly H days later, null when that day is unknown."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tests.training_fixtures import bundled_inputs
from training.labels import FUTURE_PRICE, FWD_RETURN, LABEL, TRAILING_RETURN, add_labels, add_trailing_return

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


def _frame(rows: list[tuple[str, int, float]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "coin_id": [coin for coin, _, _ in rows],
            "timestamp": [DAY0 + timedelta(days=day) for _, day, _ in rows],
            "price": [price for _, _, price in rows],
        },
        schema={"coin_id": pl.String, "timestamp": pl.Datetime("us", "UTC"), "price": pl.Float64},
    )


def _by_day(frame: pl.DataFrame, coin: str = "a") -> dict[int, dict[str, object]]:
    rows = frame.filter(pl.col("coin_id") == coin).sort("timestamp").iter_rows(named=True)
    return {(row["timestamp"] - DAY0).days: row for row in rows}


def test_up_label_and_log_return_come_from_the_price_h_days_later() -> None:
    frame = _frame([("a", 0, 100.0), ("a", 1, 110.0), ("a", 2, 99.0), ("a", 3, 99.0)])
    out = _by_day(add_labels(frame, 1).collect())
    assert [out[d][LABEL] for d in range(4)] == [1, 0, 0, None]  # equal price is not "up"
    assert out[0][FWD_RETURN] == pytest.approx(math.log(110 / 100))
    assert out[1][FWD_RETURN] == pytest.approx(math.log(99 / 110))
    assert out[0][FUTURE_PRICE] == 110.0


def test_a_missing_day_leaves_the_label_null_instead_of_shifting_to_the_next_row() -> None:
    # Day 2 is missing: with H=1, day 1 has no label; with H=2, day 0 has none (a row shift would
    # wrongly use day 3's price).
    frame = _frame([("a", 0, 100.0), ("a", 1, 90.0), ("a", 3, 120.0), ("a", 4, 80.0)])
    one = _by_day(add_labels(frame, 1).collect())
    assert one[0][LABEL] == 0
    assert one[1][LABEL] is None
    assert one[1][FWD_RETURN] is None
    assert one[3][LABEL] == 0
    two = _by_day(add_labels(frame, 2).collect())
    assert two[0][LABEL] is None
    assert two[1][LABEL] == 1  # day 1 -> day 3: 90 -> 120
    assert two[3][LABEL] is None
    assert two[4][LABEL] is None


def test_labels_never_cross_coins_and_the_end_of_history_stays_unlabelled() -> None:
    frame = _frame([("a", 0, 1.0), ("a", 1, 2.0), ("b", 1, 50.0), ("b", 2, 10.0)])
    out = add_labels(frame, 1).collect()
    a, b = _by_day(out, "a"), _by_day(out, "b")
    assert a[0][LABEL] == 1
    assert a[1][LABEL] is None
    assert b[1][LABEL] == 0
    assert b[2][LABEL] is None
    assert out.get_column(LABEL).null_count() == 2  # null, never filled with 0


def test_trailing_return_looks_back_only() -> None:
    frame = _frame([("a", 0, 100.0), ("a", 1, 200.0), ("a", 2, 50.0)])
    out = _by_day(add_trailing_return(frame, 1).collect())
    assert out[0][TRAILING_RETURN] is None
    assert out[1][TRAILING_RETURN] == pytest.approx(math.log(2.0))
    assert out[2][TRAILING_RETURN] == pytest.approx(math.log(0.25))


@pytest.mark.parametrize("horizon", [1, 7])
def test_labels_on_the_bundled_history_match_a_direct_lookup(horizon: int) -> None:
    market, _, _ = bundled_inputs(["bitcoin", "shiba-inu"])  # SHIB has 14 missing days
    out = add_labels(market.lazy(), horizon).collect()
    future = market.select(
        "coin_id", (pl.col("timestamp") - timedelta(days=horizon)).alias("timestamp"), pl.col("price").alias("expected")
    )
    checked = out.join(future, on=["coin_id", "timestamp"], how="left")
    has_future = checked.filter(pl.col("expected").is_not_null())
    assert has_future.height > 0
    assert (has_future.get_column(LABEL) == (has_future["expected"] > has_future["price"]).cast(pl.Int8)).all()
    assert checked.filter(pl.col("expected").is_null()).get_column(LABEL).null_count() == (
        checked.filter(pl.col("expected").is_null()).height
    )
    # Every coin's last H days are unlabelled.
    last = out.group_by("coin_id").agg(pl.col("timestamp").max().alias("last"))
    tail = out.join(last, on="coin_id").filter(pl.col("timestamp") > pl.col("last") - timedelta(days=horizon))
    assert tail.get_column(LABEL).null_count() == tail.height


def test_horizon_must_be_positive() -> None:
    with pytest.raises(ValueError, match="horizon_days"):
        add_labels(_frame([("a", 0, 1.0)]), 0)
