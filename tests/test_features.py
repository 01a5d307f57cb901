"""Feature definitions on tiny hand-made frames: values checked by hand, bounds, edge cases."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import (
    FEATURE_COLUMNS,
    KEY_COLUMNS,
    FeatureInputError,
    build_feature_frame,
    check_market,
    latest_feature_vectors,
    load_feature_frame,
)
from khalsi.lake import (
    FEAR_GREED_SCHEMA,
    MARKET_SCHEMA,
    MARKET_WIDE,
    SOCIAL_DAILY_SCHEMA,
    write_fear_greed,
    write_market_partition,
    write_social_daily,
)

START = datetime(2024, 1, 1, tzinfo=UTC)


def market_rows(
    coin_id: str,
    prices: Sequence[float | None],
    *,
    volumes: Sequence[float | None] | None = None,
    caps: Sequence[float | None] | None = None,
    start: datetime = START,
) -> pl.DataFrame:
    """One coin's daily rows; a ``None`` price means the day is missing from the source."""
    days = len(prices)
    frame = pl.DataFrame(
        {
            "coin_id": [coin_id] * days,
            "symbol": [coin_id[:3]] * days,
            "timestamp": [start + timedelta(days=offset) for offset in range(days)],
            "price": list(prices),
            "volume_24h": list(volumes) if volumes is not None else [1e6] * days,
            "market_cap": list(caps) if caps is not None else [1e9] * days,
        },
        schema=MARKET_SCHEMA,
    )
    return frame.filter(pl.col("price").is_not_null())


def no_fear_greed() -> pl.LazyFrame:
    return pl.LazyFrame(schema=FEAR_GREED_SCHEMA)


def no_social() -> pl.LazyFrame:
    return pl.LazyFrame(schema=SOCIAL_DAILY_SCHEMA)


def build(
    market: pl.DataFrame, fear_greed: pl.DataFrame | None = None, social: pl.DataFrame | None = None
) -> pl.DataFrame:
    return build_feature_frame(
        market.lazy(),
        fear_greed.lazy() if fear_greed is not None else no_fear_greed(),
        social.lazy() if social is not None else no_social(),
    ).collect()


def random_walk(rng: np.random.Generator, days: int, *, start: float = 100.0, sigma: float = 0.03) -> list[float]:
    return list(start * np.exp(np.cumsum(rng.normal(0.0, sigma, days))))


def value_at(frame: pl.DataFrame, coin_id: str, day: int, column: str) -> float | None:
    row = frame.filter((pl.col("coin_id") == coin_id) & (pl.col("timestamp") == START + timedelta(days=day)))
    assert row.height == 1
    value = row.item(0, column)
    assert value is None or isinstance(value, float)
    return value


def test_output_has_one_row_per_market_row_with_the_declared_columns() -> None:
    market = pl.concat([market_rows("alpha", [1.0, 2.0, None, 4.0]), market_rows("beta", [5.0, 6.0])])
    frame = build(market)
    assert frame.columns == [*KEY_COLUMNS, *FEATURE_COLUMNS]
    assert all(frame.schema[name] == pl.Float64() for name in FEATURE_COLUMNS)
    assert_frame_equal(frame.select("coin_id", "timestamp", "price"), market.select("coin_id", "timestamp", "price"))
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)


def test_log_returns_by_hand() -> None:
    frame = build(market_rows("alpha", [100.0, 110.0, 121.0, 133.1, 66.55]))
    assert value_at(frame, "alpha", 0, "ret_1d") is None
    assert value_at(frame, "alpha", 1, "ret_1d") == pytest.approx(math.log(1.1))
    assert value_at(frame, "alpha", 2, "ret_1d") == pytest.approx(math.log(1.1))
    assert value_at(frame, "alpha", 2, "ret_3d") is None
    assert value_at(frame, "alpha", 3, "ret_3d") == pytest.approx(math.log(1.331))
    assert value_at(frame, "alpha", 4, "ret_3d") == pytest.approx(math.log(66.55 / 110.0))
    assert value_at(frame, "alpha", 4, "ret_7d") is None


def test_missing_day_uses_last_known_price_for_returns_but_no_invented_daily_return() -> None:
    prices: list[float | None] = [100.0 * 1.01**day for day in range(40)]
    prices[20] = None  # a day the source lacks
    frame = build(market_rows("alpha", prices))
    assert frame.height == 39
    known_21, known_19 = prices[21], prices[19]
    assert known_21 is not None
    assert known_19 is not None
    # The return "since one day ago" spans the gap: the last known price is from day 19.
    assert value_at(frame, "alpha", 21, "ret_1d") == pytest.approx(math.log(known_21 / known_19))
    assert value_at(frame, "alpha", 21, "ret_7d") == pytest.approx(7 * math.log(1.01))
    # Constant 1% daily growth: volatility is zero whether or not the gap is in the window.
    assert value_at(frame, "alpha", 35, "vol_30d") == pytest.approx(0.0, abs=1e-12)


def test_price_carried_forward_only_so_far() -> None:
    prices: list[float | None] = [100.0] * 5 + [None] * 10 + [120.0] * 5
    frame = build(market_rows("alpha", prices))
    # Ten missing days exceed the carry-forward limit: no "1-day" return over a 10-day hole.
    assert value_at(frame, "alpha", 15, "ret_1d") is None
    assert value_at(frame, "alpha", 16, "ret_1d") == pytest.approx(0.0)


def test_rsi_bounds_and_extremes() -> None:
    rng = np.random.default_rng(7)
    market = pl.concat(
        [
            market_rows("up", [100.0 * 1.02**day for day in range(30)]),
            market_rows("down", [100.0 * 0.98**day for day in range(30)]),
            market_rows("flat", [100.0] * 30),
            market_rows("noise", random_walk(rng, 300)),
        ]
    )
    frame = build(market)
    assert value_at(frame, "up", 29, "rsi_14") == pytest.approx(100.0)
    assert value_at(frame, "down", 29, "rsi_14") == pytest.approx(0.0)
    assert value_at(frame, "flat", 29, "rsi_14") == 50.0
    rsi = frame.filter(pl.col("coin_id") == "noise").get_column("rsi_14").drop_nulls()
    assert rsi.len() > 250
    assert rsi.min() > 0.0  # type: ignore[operator]
    assert rsi.max() < 100.0  # type: ignore[operator]


def test_rsi_by_hand() -> None:
    # Alternating +10% / -5% moves: mean gain and loss over 14 days are 7 of each.
    prices = [100.0]
    for day in range(1, 20):
        prices.append(prices[-1] * (1.10 if day % 2 else 0.95))
    frame = build(market_rows("alpha", prices))
    gain, loss = math.log(1.10), -math.log(0.95)
    assert value_at(frame, "alpha", 19, "rsi_14") == pytest.approx(100.0 * gain / (gain + loss))


def test_macd_sign_and_zero_for_a_flat_price() -> None:
    market = pl.concat(
        [
            market_rows("flat", [50.0] * 150),
            market_rows("rising", [50.0 * 1.01**day for day in range(150)]),
        ]
    )
    frame = build(market)
    assert value_at(frame, "flat", 149, "macd") == pytest.approx(0.0, abs=1e-15)
    assert value_at(frame, "flat", 149, "macd_signal") == pytest.approx(0.0, abs=1e-15)
    assert value_at(frame, "rising", 149, "macd") > 0.0  # type: ignore[operator]
    # Steady growth: the normalised MACD line is constant, so its signal equals it.
    assert value_at(frame, "rising", 149, "macd_hist") == pytest.approx(0.0, abs=1e-12)
    assert value_at(frame, "rising", 60, "macd") is None  # the slow EMA needs 78 days


def test_distance_from_highs_and_lows() -> None:
    prices = [100.0] * 10 + [200.0] + [150.0] * 29
    frame = build(market_rows("alpha", prices))
    assert value_at(frame, "alpha", 39, "dist_high_30d") == pytest.approx(math.log(150.0 / 200.0))
    assert value_at(frame, "alpha", 39, "dist_low_30d") == pytest.approx(0.0)
    assert value_at(frame, "alpha", 29, "dist_low_30d") == pytest.approx(math.log(150.0 / 100.0))
    assert value_at(frame, "alpha", 39, "dist_high_90d") is None  # 40 days < 60 required


def test_volume_features_by_hand() -> None:
    volumes = [1000.0] * 30 + [4000.0]
    frame = build(market_rows("alpha", [10.0] * 31, volumes=volumes, caps=[1e6] * 30 + [None]))
    assert value_at(frame, "alpha", 30, "volume_logchg_1d") == pytest.approx(math.log(4.0))
    assert value_at(frame, "alpha", 30, "volume_vs_mean_30d") == pytest.approx(math.log(4000.0 / 1100.0))
    assert value_at(frame, "alpha", 29, "volume_z_30d") is None  # no spread in a constant window
    assert value_at(frame, "alpha", 30, "volume_z_30d") > 4.0  # type: ignore[operator]
    assert value_at(frame, "alpha", 29, "turnover_log") == pytest.approx(math.log(1000.0 / 1e6))
    assert value_at(frame, "alpha", 30, "turnover_log") is None  # no cap that day


def test_market_return_is_cap_weighted_by_yesterdays_caps() -> None:
    market = pl.concat(
        [
            market_rows("big", [100.0, 110.0], caps=[300.0, 999.0]),
            market_rows("small", [10.0, 8.0], caps=[100.0, 1.0]),
            market_rows("capless", [1.0, 5.0], caps=[None, None]),
        ]
    )
    frame = build(market)
    expected = (300.0 * math.log(1.1) + 100.0 * math.log(0.8)) / 400.0
    assert value_at(frame, "small", 1, "mkt_ret_1d") == pytest.approx(expected)
    assert value_at(frame, "capless", 1, "mkt_ret_1d") == pytest.approx(expected)
    assert value_at(frame, "big", 0, "mkt_ret_1d") is None


def test_beta_to_a_btc_dominated_market() -> None:
    rng = np.random.default_rng(11)
    days = 200
    btc = random_walk(rng, days, start=40_000.0)
    btc_returns = np.diff(np.log(btc))
    levered = [1.0, *list(np.exp(np.cumsum(2.0 * btc_returns)))]
    market = pl.concat(
        [
            market_rows("bitcoin", btc, caps=[1e12] * days),
            market_rows("levered", levered, caps=[1e6] * days),
            market_rows("other", random_walk(rng, days), caps=[1e6] * days),
        ]
    )
    frame = build(market)
    for window in ("30d", "90d"):
        assert value_at(frame, "bitcoin", 199, f"beta_{window}") == pytest.approx(1.0, abs=1e-3)
        assert value_at(frame, "bitcoin", 199, f"corr_{window}") == pytest.approx(1.0, abs=1e-3)
        assert value_at(frame, "levered", 199, f"beta_{window}") == pytest.approx(2.0, abs=2e-3)
    assert value_at(frame, "other", 199, "corr_90d") == pytest.approx(0.0, abs=0.3)
    assert value_at(frame, "levered", 199, "btc_ret_1d") == pytest.approx(float(btc_returns[-1]))
    assert value_at(frame, "bitcoin", 15, "beta_30d") is None  # too little history


def test_features_do_not_depend_on_the_price_level() -> None:
    rng = np.random.default_rng(3)
    prices = random_walk(rng, 200)
    base = pl.concat([market_rows("alpha", prices, caps=[5e8] * 200), market_rows("bitcoin", random_walk(rng, 200))])
    scaled = base.with_columns(
        pl.when(pl.col("coin_id") == "alpha").then(pl.col("price") * 1e-6).otherwise(pl.col("price"))
    )
    original = build(base).select(FEATURE_COLUMNS)
    rescaled = build(scaled).select(FEATURE_COLUMNS)
    assert_frame_equal(original, rescaled, check_exact=False, rel_tol=1e-9, abs_tol=1e-12)


def test_fear_greed_is_used_from_its_own_day_and_carried_at_most_three_days() -> None:
    values = {0: 20, 1: 30, 2: 50, 8: 80}  # days 3-7 missing
    fear_greed = pl.DataFrame(
        {
            "day": [date(2024, 1, 1) + timedelta(days=day) for day in values],
            "value": list(values.values()),
            "classification": ["x"] * len(values),
            "available_at": [START + timedelta(days=day) for day in values],
        },
        schema=FEAR_GREED_SCHEMA,
    )
    frame = build(market_rows("alpha", [1.0] * 12), fear_greed=fear_greed)
    assert value_at(frame, "alpha", 0, "fg_value") == pytest.approx(0.20)
    assert value_at(frame, "alpha", 0, "fg_chg_1d") is None
    assert value_at(frame, "alpha", 2, "fg_chg_1d") == pytest.approx(0.20)
    assert value_at(frame, "alpha", 5, "fg_value") == pytest.approx(0.50)  # carried 3 days
    assert value_at(frame, "alpha", 6, "fg_value") is None  # too stale
    assert value_at(frame, "alpha", 8, "fg_value") == pytest.approx(0.80)
    assert value_at(frame, "alpha", 8, "fg_chg_7d") == pytest.approx(0.80 - 0.30)
    assert value_at(frame, "alpha", 11, "fg_value") == pytest.approx(0.80)


def social_rows(coin_id: str, days: dict[int, tuple[float, int]], *, at_midnight: bool = False) -> pl.DataFrame:
    """Daily social rows (sentiment, mentions), available at the end of their day."""
    end = timedelta(days=1) if at_midnight else timedelta(days=1, microseconds=-1)
    return pl.DataFrame(
        {
            "day": [date(2024, 1, 1) + timedelta(days=day) for day in days],
            "coin_id": [coin_id] * len(days),
            "mean_sentiment": [sentiment for sentiment, _ in days.values()],
            "mention_count": [mentions for _, mentions in days.values()],
            "post_count": [mentions for _, mentions in days.values()],
            "available_at": [START + timedelta(days=day) + end for day in days],
        },
        schema=SOCIAL_DAILY_SCHEMA,
    )


def test_social_features_are_known_the_day_after_and_null_without_history() -> None:
    social = pl.concat(
        [
            social_rows("alpha", {3: (0.5, 10), 4: (-0.1, 30)}),
            social_rows(MARKET_WIDE, {2: (0.2, 100)}, at_midnight=True),
        ]
    )
    frame = build(market_rows("alpha", [1.0] * 20), social=social)
    assert value_at(frame, "alpha", 3, "social_sentiment_1d") is None  # day 3 is not over yet
    assert value_at(frame, "alpha", 4, "social_sentiment_1d") == pytest.approx(0.5)
    assert value_at(frame, "alpha", 5, "social_sentiment_1d") == pytest.approx(-0.1)
    assert value_at(frame, "alpha", 5, "social_sentiment_7d") == pytest.approx(0.2)
    assert value_at(frame, "alpha", 5, "social_mentions_7d") == pytest.approx(math.log(21.0))
    assert value_at(frame, "alpha", 6, "social_sentiment_1d") is None  # no post that day
    assert value_at(frame, "alpha", 6, "social_sentiment_7d") == pytest.approx(0.2)
    assert value_at(frame, "alpha", 11, "social_sentiment_7d") == pytest.approx(-0.1)
    assert value_at(frame, "alpha", 12, "social_sentiment_7d") is None  # the window emptied
    for day in range(4):
        assert value_at(frame, "alpha", day, "social_sentiment_7d") is None
    assert value_at(frame, "alpha", 2, "social_mkt_sentiment_1d") is None
    assert value_at(frame, "alpha", 3, "social_mkt_sentiment_1d") == pytest.approx(0.2)
    assert value_at(frame, "alpha", 3, "social_mentions_z_30d") is None  # 7 days needed


def test_mentions_z_score_by_hand() -> None:
    history = {day: (0.0, 10) for day in range(7)} | {7: (0.0, 1000)}
    frame = build(market_rows("alpha", [1.0] * 10), social=social_rows("alpha", history))
    logs = np.log1p(np.array([10.0] * 7 + [1000.0]))
    expected = (logs[-1] - logs.mean()) / logs.std(ddof=1)
    assert value_at(frame, "alpha", 8, "social_mentions_z_30d") == pytest.approx(expected)


def test_empty_inputs() -> None:
    frame = build(pl.DataFrame(schema=MARKET_SCHEMA))
    assert frame.height == 0
    assert frame.columns == [*KEY_COLUMNS, *FEATURE_COLUMNS]
    empty = latest_feature_vectors(pl.LazyFrame(schema=MARKET_SCHEMA), no_fear_greed(), no_social())
    assert empty.height == 0
    assert empty.columns == frame.columns


def test_load_feature_frame_reads_the_lake(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    alpha = market_rows("alpha", random_walk(rng, 60))
    beta = market_rows("beta", random_walk(rng, 45), start=START + timedelta(days=10))
    fear_greed = pl.DataFrame(
        {
            "day": [date(2024, 1, 1) + timedelta(days=day) for day in range(60)],
            "value": list(rng.integers(0, 101, 60)),
            "classification": ["x"] * 60,
            "available_at": [START + timedelta(days=day) for day in range(60)],
        },
        schema=FEAR_GREED_SCHEMA,
    )
    social = social_rows("alpha", {day: (0.1 * (day % 5), day + 1) for day in range(0, 60, 3)})
    write_market_partition(tmp_path, "alpha", alpha)
    write_market_partition(tmp_path, "beta", beta)
    write_fear_greed(tmp_path, fear_greed)
    write_social_daily(tmp_path, social)
    from_lake = load_feature_frame(tmp_path).collect()
    assert_frame_equal(from_lake, build(pl.concat([alpha, beta]), fear_greed, social))
    assert from_lake.get_column("fg_value").null_count() == 0


def test_latest_vectors_as_of_and_max_age() -> None:
    rng = np.random.default_rng(9)
    market = pl.concat(
        [
            market_rows("alpha", random_walk(rng, 100)),
            market_rows("gone", random_walk(rng, 50)),  # stops on day 49
        ]
    )
    as_of = START + timedelta(days=80, hours=13)  # between two daily rows
    latest = latest_feature_vectors(market.lazy(), no_fear_greed(), no_social(), as_of=as_of)
    assert latest.get_column("coin_id").to_list() == ["alpha", "gone"]
    assert latest.get_column("timestamp").to_list() == [START + timedelta(days=80), START + timedelta(days=49)]
    fresh = latest_feature_vectors(market.lazy(), no_fear_greed(), no_social(), as_of=as_of, max_age=timedelta(days=2))
    assert fresh.get_column("coin_id").to_list() == ["alpha"]
    training = build(market).filter(pl.col("timestamp") == START + timedelta(days=80))
    assert_frame_equal(fresh, training)
    with pytest.raises(ValueError, match="timezone-aware"):
        latest_feature_vectors(market.lazy(), no_fear_greed(), no_social(), as_of=datetime(2024, 3, 1))


def test_a_coins_own_features_do_not_depend_on_other_coins() -> None:
    from features.market import MARKET_COLUMNS

    rng = np.random.default_rng(13)
    alone = market_rows("beta", random_walk(rng, 150), start=START + timedelta(days=40))
    others = pl.concat([market_rows("alpha", random_walk(rng, 120)), market_rows("gamma", random_walk(rng, 300))])
    with_others = build(pl.concat([others, alone])).filter(pl.col("coin_id") == "beta")
    assert_frame_equal(with_others.select(MARKET_COLUMNS), build(alone).select(MARKET_COLUMNS), check_exact=True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda frame: frame.with_columns(pl.col("timestamp").dt.offset_by("1h")), "not at 00:00 UTC"),
        (lambda frame: pl.concat([frame, frame.head(1)]), "duplicated"),
        (lambda frame: frame.with_columns(pl.lit(0.0).alias("price")), "non-positive"),
    ],
    ids=["off-midnight", "duplicate", "zero-price"],
)
def test_unusable_market_rows_are_refused_clearly(
    tmp_path: Path, damage: Callable[[pl.DataFrame], pl.DataFrame], message: str
) -> None:
    good = market_rows("alpha", [1.0, 2.0, 3.0])
    check_market(good.lazy())
    bad = damage(good)
    with pytest.raises(FeatureInputError, match=message):
        latest_feature_vectors(bad.lazy(), no_fear_greed(), no_social())
    write_market_partition(tmp_path, "alpha", bad)
    with pytest.raises(FeatureInputError, match=message):
        load_feature_frame(tmp_path)
