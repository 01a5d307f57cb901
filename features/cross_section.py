"""Cross-sectional features: where a coin stands among the coins observed on the same day.

For each day t and each of a few per-coin features (trailing 7/30-day returns, 30-day volatility,
turnover = volume / market cap, distance from the 30-day high), a coin gets

- ``xs_rank_<feature>``: its percentile rank among the non-null values of the coins observed on t,
  ``(average rank - 1) / (n - 1)`` in [0, 1] (ties share their average rank);
- ``xs_z_<feature>``: its z-score against those values (mean and sample standard deviation).

Only rows dated t enter the statistics of day t, and each of those rows is itself point-in-time,
so the features are point-in-time. They are null with fewer than ``MIN_COINS`` values on the day
(a rank among two coins says little), and the z-score is null when the values do not spread.
The step runs on observed rows only (a calendar-grid filler row is not a coin present at t).

The mean and spread of a day are taken over the values sorted by coin id, so the float sums are
added in one fixed order however the frame was built (training or the online slice).
"""

from __future__ import annotations

import polars as pl

from features.windows import safe_ratio

COIN = "coin_id"
DAY_KEY = "timestamp"
MIN_COINS = 3
CROSS_SECTION_INPUTS = ("ret_7d", "ret_30d", "vol_30d", "turnover_log", "dist_high_30d")

CROSS_SECTION_COLUMNS: list[str] = [
    *(f"xs_rank_{name}" for name in CROSS_SECTION_INPUTS),
    *(f"xs_z_{name}" for name in CROSS_SECTION_INPUTS),
]


def _percentile_rank(name: str) -> pl.Expr:
    value = pl.col(name)
    count = value.count().over(DAY_KEY)
    rank = value.rank("average").over(DAY_KEY).cast(pl.Float64)
    return pl.when(value.is_not_null() & (count >= MIN_COINS)).then((rank - 1.0) / (count - 1).cast(pl.Float64))


def _z_score(name: str) -> pl.Expr:
    value = pl.col(name)
    in_coin_order = value.sort_by(COIN)
    count = value.count().over(DAY_KEY)
    mean = in_coin_order.mean().over(DAY_KEY)
    spread = in_coin_order.std(ddof=1).over(DAY_KEY)
    # Relative floor, as in features.windows: a day whose values barely differ has no spread to
    # divide by (rounding noise would otherwise become large z-scores).
    spreads = spread > 1e-9 * (mean.abs() + 1e-12)
    return pl.when(value.is_not_null() & (count >= MIN_COINS) & spreads).then(safe_ratio(value - mean, spread))


def with_cross_section(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add CROSS_SECTION_COLUMNS: each coin's rank and z-score among the rows of its own day."""
    return frame.with_columns(
        *(_percentile_rank(name).alias(f"xs_rank_{name}") for name in CROSS_SECTION_INPUTS),
        *(_z_score(name).alias(f"xs_z_{name}") for name in CROSS_SECTION_INPUTS),
    )


__all__ = ["CROSS_SECTION_COLUMNS", "CROSS_SECTION_INPUTS", "MIN_COINS", "with_cross_section"]
