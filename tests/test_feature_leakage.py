"""Point-in-time guarantees on the bundled real history (17 coins, ~43k rows).

- leakage: changing or adding anything after t leaves every feature row at or before t
  bit-for-bit unchanged;
- no skew: the online vector of (coin, t) is exactly the training row of (coin, t);
- validity: no NaN or inf anywhere, one row per market row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import FEATURE_COLUMNS, KEY_COLUMNS, ONLINE_HISTORY_DAYS, build_feature_frame, latest_feature_vectors
from features.bundled import bundled_fear_greed_frame, bundled_market_frame, bundled_social_daily_frame
from khalsi.lake import SOCIAL_DAILY_SCHEMA

SOCIAL_COINS = ("bitcoin", "ethereum", "dogecoin", "shiba-inu")


def synthetic_coin_social(rng: np.random.Generator) -> pl.DataFrame:
    """Sparse per-coin social rows (the bundled data has only market-wide history)."""
    frames = []
    days = pl.date_range(datetime(2020, 6, 1), datetime(2024, 12, 31), "1d", eager=True)
    for coin_id in SOCIAL_COINS:
        kept = days.filter(pl.Series(rng.random(days.len()) < 0.4))
        count = kept.len()
        # Half the sources stamp "end of day" as 23:59:59.999999, half as next midnight.
        end = timedelta(days=1) if coin_id in {"bitcoin", "dogecoin"} else timedelta(days=1, microseconds=-1)
        frames.append(
            pl.DataFrame(
                {
                    "day": kept,
                    "coin_id": [coin_id] * count,
                    "mean_sentiment": rng.uniform(-1.0, 1.0, count),
                    "mention_count": rng.poisson(40, count),
                    "post_count": rng.poisson(20, count),
                }
            ).with_columns((pl.col("day").cast(pl.Datetime("us", "UTC")) + end).alias("available_at"))
        )
    return pl.concat(frames).select([pl.col(name).cast(dtype) for name, dtype in SOCIAL_DAILY_SCHEMA.items()])


@pytest.fixture(scope="module")
def sources() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    social = pl.concat([bundled_social_daily_frame(), synthetic_coin_social(np.random.default_rng(2024))])
    return bundled_market_frame(), bundled_fear_greed_frame(), social


@pytest.fixture(scope="module")
def training(sources: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    market, fear_greed, social = sources
    return build_feature_frame(market.lazy(), fear_greed.lazy(), social.lazy()).collect()


def build(market: pl.DataFrame, fear_greed: pl.DataFrame, social: pl.DataFrame) -> pl.DataFrame:
    return build_feature_frame(market.lazy(), fear_greed.lazy(), social.lazy()).collect()


def perturb_after(
    sources: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], cutoff: datetime, rng: np.random.Generator
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Random noise on every value stamped after ``cutoff``; nothing at or before it changes."""
    market, fear_greed, social = sources
    after = pl.col("timestamp") > cutoff

    def noise(frame: pl.DataFrame, scale: float) -> pl.Series:
        return pl.Series(np.exp(rng.normal(0.0, scale, frame.height)))

    market = market.with_columns(
        pl.when(after).then(pl.col(name) * noise(market, 0.2)).otherwise(pl.col(name)).alias(name)
        for name in ("price", "volume_24h", "market_cap")
    )
    late = pl.col("available_at") > cutoff
    fear_greed = fear_greed.with_columns(
        pl.when(late).then(pl.Series(rng.integers(0, 101, fear_greed.height))).otherwise(pl.col("value")).alias("value")
    )
    social = social.with_columns(
        pl.when(late)
        .then(pl.Series(rng.uniform(-1.0, 1.0, social.height)))
        .otherwise(pl.col("mean_sentiment"))
        .alias("mean_sentiment"),
        pl.when(late)
        .then(pl.Series(rng.integers(0, 10_000, social.height)))
        .otherwise(pl.col("mention_count"))
        .alias("mention_count"),
    )
    return market, fear_greed, social


def up_to(frame: pl.DataFrame, cutoff: datetime) -> pl.DataFrame:
    return frame.filter(pl.col("timestamp") <= cutoff)


CUTOFFS = [
    datetime(2017, 3, 14, tzinfo=UTC),
    datetime(2020, 12, 20, tzinfo=UTC),  # inside SHIB's run of missing days
    datetime(2022, 6, 13, tzinfo=UTC),
    datetime(2023, 11, 30, tzinfo=UTC),  # the last day of six coins
    datetime(2024, 7, 1, 15, 30, tzinfo=UTC),  # not a market timestamp
]


@pytest.mark.parametrize("cutoff", CUTOFFS, ids=lambda cutoff: cutoff.strftime("%Y-%m-%d"))
def test_perturbing_everything_after_t_changes_no_feature_up_to_t(
    sources: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], training: pl.DataFrame, cutoff: datetime
) -> None:
    rng = np.random.default_rng(int(cutoff.timestamp()))
    perturbed = build(*perturb_after(sources, cutoff, rng))
    assert_frame_equal(up_to(perturbed, cutoff), up_to(training, cutoff), check_exact=True)
    # The noise did reach the features after t (the comparison above could not pass vacuously).
    later = perturbed.filter(pl.col("timestamp") > cutoff).select(FEATURE_COLUMNS)
    assert not later.equals(training.filter(pl.col("timestamp") > cutoff).select(FEATURE_COLUMNS))


@pytest.mark.parametrize("cutoff", CUTOFFS[1:4], ids=lambda cutoff: cutoff.strftime("%Y-%m-%d"))
def test_rows_appended_after_t_change_no_feature_up_to_t(
    sources: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], training: pl.DataFrame, cutoff: datetime
) -> None:
    market, fear_greed, social = sources
    known_then = build(
        market.filter(pl.col("timestamp") <= cutoff),
        fear_greed.filter(pl.col("available_at") <= cutoff),
        social.filter(pl.col("available_at") <= cutoff),
    )
    assert known_then.height == up_to(training, cutoff).height
    assert_frame_equal(known_then, up_to(training, cutoff), check_exact=True)


def test_a_random_coin_and_day_sees_nothing_of_its_future(
    sources: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], training: pl.DataFrame
) -> None:
    rng = np.random.default_rng(7)
    for _ in range(2):
        row = training.row(int(rng.integers(0, training.height)), named=True)
        cutoff = row["timestamp"]
        assert isinstance(cutoff, datetime)
        perturbed = build(*perturb_after(sources, cutoff, rng))
        same = perturbed.filter((pl.col("coin_id") == row["coin_id"]) & (pl.col("timestamp") == cutoff))
        assert same.row(0, named=True) == row


ONLINE_CASES = [
    datetime(2019, 5, 1, tzinfo=UTC),
    datetime(2020, 12, 20, tzinfo=UTC),
    datetime(2021, 11, 9, 18, 0, tzinfo=UTC),
    datetime(2023, 6, 30, tzinfo=UTC),
    None,  # everything: the real "now" of the bundled data
]


@pytest.mark.parametrize("as_of", ONLINE_CASES, ids=str)
def test_online_vector_is_exactly_the_training_row(
    sources: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], training: pl.DataFrame, as_of: datetime | None
) -> None:
    market, fear_greed, social = sources
    online = latest_feature_vectors(market.lazy(), fear_greed.lazy(), social.lazy(), as_of=as_of)
    seen = training if as_of is None else up_to(training, as_of)
    expected = seen.group_by("coin_id").agg(pl.all().sort_by("timestamp").last()).sort("coin_id")
    assert online.height == expected.height >= 4
    assert_frame_equal(online, expected.select(online.columns), check_exact=True)
    # The online path really worked from a slice, and the comparison covers real values.
    assert market.get_column("timestamp").min() < online.get_column("timestamp").min() - timedelta(  # type: ignore[operator]
        days=ONLINE_HISTORY_DAYS
    )
    assert online.select(pl.col(FEATURE_COLUMNS).is_not_null().sum()).row(0) != (0,) * len(FEATURE_COLUMNS)


def test_bundled_universe_builds_completely_and_cleanly(
    sources: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], training: pl.DataFrame
) -> None:
    market = sources[0]
    assert training.height == market.height > 40_000
    assert training.get_column("coin_id").n_unique() == 17
    assert training.select(pl.struct("coin_id", "timestamp").is_unique().all()).item()
    assert_frame_equal(training.select(KEY_COLUMNS), market.select(KEY_COLUMNS))
    # Inputs are valid here, so no feature may be NaN or infinite (nulls mean "not enough history").
    bad = training.select(pl.col(FEATURE_COLUMNS).is_nan().sum() + pl.col(FEATURE_COLUMNS).is_infinite().sum())
    assert bad.row(0) == (0,) * len(FEATURE_COLUMNS)
    # Every feature is populated somewhere, and long-history coins have little missing late on.
    populated = training.select(pl.col(FEATURE_COLUMNS).is_not_null().sum()).row(0)
    assert min(populated) > 1_000
    recent = training.filter(
        (pl.col("timestamp") >= datetime(2021, 1, 1, tzinfo=UTC)) & (pl.col("coin_id") == "bitcoin")
    )
    market_only = [name for name in FEATURE_COLUMNS if not name.startswith("social_")]
    assert recent.select(pl.col(market_only).null_count()).sum_horizontal().item() < 20
    assert training.get_column("rsi_14").drop_nulls().is_between(0.0, 100.0).all()
    assert training.get_column("corr_90d").drop_nulls().is_between(-1.0, 1.0).all()
    assert (training.get_column("dist_high_90d").drop_nulls() <= 0.0).all()
    assert (training.get_column("dist_low_90d").drop_nulls() >= 0.0).all()
