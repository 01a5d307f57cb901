"""Cross-sectional features on tiny hand-made frames: ranks and z-scores checked by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import FEATURE_COLUMNS, build_feature_frame
from features.cross_section import CROSS_SECTION_COLUMNS, CROSS_SECTION_INPUTS, with_cross_section
from khalsi.lake import FEAR_GREED_SCHEMA, MARKET_SCHEMA, SOCIAL_DAILY_SCHEMA

DAY_ONE = datetime(2024, 1, 1, tzinfo=UTC)
DAY_TWO = DAY_ONE + timedelta(days=1)


def day_rows(timestamp: datetime, values: dict[str, dict[str, float | None]]) -> pl.DataFrame:
    """One row per coin on ``timestamp``; inputs not given are null."""
    return pl.DataFrame(
        [
            {"coin_id": coin_id, "timestamp": timestamp, **{name: inputs.get(name) for name in CROSS_SECTION_INPUTS}}
            for coin_id, inputs in values.items()
        ],
        schema={
            "coin_id": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            **dict.fromkeys(CROSS_SECTION_INPUTS, pl.Float64),
        },
    )


def cross_section(frame: pl.DataFrame) -> pl.DataFrame:
    return with_cross_section(frame.lazy()).collect()


def value(frame: pl.DataFrame, coin_id: str, timestamp: datetime, column: str) -> float | None:
    row = frame.filter((pl.col("coin_id") == coin_id) & (pl.col("timestamp") == timestamp))
    assert row.height == 1
    result = row.item(0, column)
    assert result is None or isinstance(result, float)
    return result


def test_ranks_and_z_scores_by_hand() -> None:
    frame = cross_section(
        pl.concat(
            [
                day_rows(
                    DAY_ONE,
                    {
                        "alpha": {"ret_7d": 2.0, "vol_30d": 1.0},
                        "beta": {"ret_7d": 3.0, "vol_30d": 1.0},
                        "gamma": {"ret_7d": 1.0, "vol_30d": 4.0},
                        "delta": {"ret_7d": None, "vol_30d": None},
                    },
                ),
                # A second day with other values: statistics never mix days.
                day_rows(DAY_TWO, {"alpha": {"ret_7d": -5.0}, "beta": {"ret_7d": 7.0}, "gamma": {"ret_7d": 9.0}}),
            ]
        )
    )
    # ret_7d on day one: 1 < 2 < 3 among the three non-null coins (delta has none).
    assert value(frame, "gamma", DAY_ONE, "xs_rank_ret_7d") == 0.0
    assert value(frame, "alpha", DAY_ONE, "xs_rank_ret_7d") == 0.5
    assert value(frame, "beta", DAY_ONE, "xs_rank_ret_7d") == 1.0
    assert value(frame, "delta", DAY_ONE, "xs_rank_ret_7d") is None
    # Mean 2, sample standard deviation 1.
    assert value(frame, "gamma", DAY_ONE, "xs_z_ret_7d") == pytest.approx(-1.0)
    assert value(frame, "alpha", DAY_ONE, "xs_z_ret_7d") == pytest.approx(0.0)
    assert value(frame, "beta", DAY_ONE, "xs_z_ret_7d") == pytest.approx(1.0)
    assert value(frame, "delta", DAY_ONE, "xs_z_ret_7d") is None
    # vol_30d 1, 1, 4: the tie shares the average rank 1.5 -> (1.5 - 1) / 2; mean 2, std sqrt(3).
    assert value(frame, "alpha", DAY_ONE, "xs_rank_vol_30d") == 0.25
    assert value(frame, "beta", DAY_ONE, "xs_rank_vol_30d") == 0.25
    assert value(frame, "gamma", DAY_ONE, "xs_rank_vol_30d") == 1.0
    assert value(frame, "alpha", DAY_ONE, "xs_z_vol_30d") == pytest.approx(-1.0 / math.sqrt(3.0))
    assert value(frame, "gamma", DAY_ONE, "xs_z_vol_30d") == pytest.approx(2.0 / math.sqrt(3.0))
    # Day two: -5 < 7 < 9, mean 11/3.
    assert value(frame, "alpha", DAY_TWO, "xs_rank_ret_7d") == 0.0
    assert value(frame, "gamma", DAY_TWO, "xs_rank_ret_7d") == 1.0
    spread = math.sqrt(((-5.0 - 11 / 3) ** 2 + (7.0 - 11 / 3) ** 2 + (9.0 - 11 / 3) ** 2) / 2)
    assert value(frame, "beta", DAY_TWO, "xs_z_ret_7d") == pytest.approx((7.0 - 11 / 3) / spread)


def test_too_few_coins_or_no_spread_give_nulls() -> None:
    frame = cross_section(
        pl.concat(
            [
                day_rows(DAY_ONE, {"alpha": {"ret_7d": 1.0}, "beta": {"ret_7d": 2.0}}),
                day_rows(DAY_TWO, {name: {"ret_7d": 0.5, "ret_30d": None} for name in ("alpha", "beta", "gamma")}),
            ]
        )
    )
    day_one = frame.filter(pl.col("timestamp") == DAY_ONE)
    assert day_one.select(pl.col(CROSS_SECTION_COLUMNS).null_count()).row(0) == (2,) * len(CROSS_SECTION_COLUMNS)
    day_two = frame.filter(pl.col("timestamp") == DAY_TWO)
    # Three equal values: each ranks in the middle, but there is no spread to make a z-score of.
    assert day_two.get_column("xs_rank_ret_7d").to_list() == [0.5, 0.5, 0.5]
    assert day_two.get_column("xs_z_ret_7d").null_count() == 3
    assert day_two.get_column("xs_rank_ret_30d").null_count() == 3


def test_row_order_does_not_change_a_single_bit() -> None:
    rows = [
        day_rows(
            DAY_ONE + timedelta(days=day),
            {
                f"coin{coin}": {
                    name: math.sin(7.3 * day + 1.1 * coin + i) for i, name in enumerate(CROSS_SECTION_INPUTS)
                }
                for coin in range(17)
            },
        )
        for day in range(5)
    ]
    frame = pl.concat(rows)
    ordered = cross_section(frame).sort("coin_id", "timestamp")
    shuffled = cross_section(frame.sample(fraction=1.0, shuffle=True, seed=4)).sort("coin_id", "timestamp")
    assert_frame_equal(ordered, shuffled, check_exact=True)
    assert ordered.select(pl.col(CROSS_SECTION_COLUMNS).null_count()).sum_horizontal().item() == 0


def test_the_pipeline_ranks_only_the_coins_observed_that_day() -> None:
    """Through build_feature_frame: turnover (volume / cap) is known on the day itself."""
    turnovers: dict[str, list[float | None]] = {
        "alpha": [0.01, 0.01, 0.01],
        "beta": [0.02, None, 0.02],
        "gamma": [0.04, 0.04, 0.04],
        "delta": [0.08] * 3,
    }
    market = pl.DataFrame(
        [
            {
                "coin_id": coin_id,
                "symbol": coin_id[:3],
                "timestamp": DAY_ONE + timedelta(days=day),
                "price": 1.0,
                "volume_24h": 1e9 * turnover,
                "market_cap": 1e9,
            }
            for coin_id, series in turnovers.items()
            for day, turnover in enumerate(series)
            if turnover is not None  # beta is missing on day 1: a grid filler, not a coin present then
        ],
        schema=MARKET_SCHEMA,
    )
    frame = build_feature_frame(
        market.lazy(), pl.LazyFrame(schema=FEAR_GREED_SCHEMA), pl.LazyFrame(schema=SOCIAL_DAILY_SCHEMA)
    ).collect()
    assert set(CROSS_SECTION_COLUMNS) <= set(FEATURE_COLUMNS)
    assert FEATURE_COLUMNS[-len(CROSS_SECTION_COLUMNS) :] == CROSS_SECTION_COLUMNS
    assert frame.height == 11
    middle = DAY_ONE + timedelta(days=1)
    # Day 1 has three coins (alpha < gamma < delta); days 0 and 2 have four.
    assert [value(frame, coin, middle, "xs_rank_turnover_log") for coin in ("alpha", "gamma", "delta")] == [
        0.0,
        0.5,
        1.0,
    ]
    assert [value(frame, coin, DAY_ONE, "xs_rank_turnover_log") for coin in turnovers] == [0.0, 1 / 3, 2 / 3, 1.0]
    # Middle day, log turnovers in steps of log 2 from alpha's: 0, 2, 3. Mean 5/3, sample
    # variance (25 + 1 + 16) / 9 / 2 = 21 / 9, so z = (-5/3) / (sqrt(21) / 3) = -5 / sqrt(21) for alpha.
    assert value(frame, "alpha", middle, "xs_z_turnover_log") == pytest.approx(-5.0 / math.sqrt(21.0))
    assert value(frame, "gamma", middle, "xs_z_turnover_log") == pytest.approx(1.0 / math.sqrt(21.0))
    assert value(frame, "delta", middle, "xs_z_turnover_log") == pytest.approx(4.0 / math.sqrt(21.0))
