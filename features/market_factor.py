"""The market factor (BTC and a cap-weighted total-market return) and each coin's beta to it.

The total-market return of day t is the mean of the daily log returns of every coin observed on
t and t-1, weighted by its market cap on t-1 (yesterday's cap, as an index would weigh it; a coin
without a cap that day is left out). It only uses rows at or before t, so it is point-in-time.
The cross-sectional sum is ordered by coin id so it is the same float however the frame was
built (training or the online slice).
"""

from __future__ import annotations

import polars as pl

from features.windows import DAY, safe_ratio, window_count, window_mean, window_std, window_sum

COIN = "coin_id"
BTC_COIN_ID = "bitcoin"
BETA_WINDOWS = (30, 90)

FACTOR_COLUMNS: list[str] = [
    "mkt_ret_1d",
    "mkt_ret_7d",
    "mkt_ret_30d",
    "mkt_vol_30d",
    "btc_ret_1d",
    "btc_ret_7d",
    "rel_ret_7d",
    "rel_ret_30d",
    *(f"{name}_{days}d" for days in BETA_WINDOWS for name in ("beta", "corr")),
]

# Longest reach back: a 90-day window of daily returns that each need the day before.
FACTOR_LOOKBACK_DAYS = max(BETA_WINDOWS) + 1


def market_return_series(grid: pl.LazyFrame) -> pl.LazyFrame:
    """Per calendar day: ``mkt_ret_1d/7d/30d``, ``mkt_vol_30d``, ``btc_ret_1d/7d`` (from the coin grid)."""
    weighted = grid.with_columns(pl.col("market_cap").shift(1).over(COIN).alias("_weight")).filter(
        pl.col("r_1d").is_not_null() & (pl.col("_weight") > 0)
    )
    # A float group-by sum is split across threads and recombined in whatever order they finish,
    # so it can differ in the last bit between runs. Gathering each day's values in coin order and
    # summing the list adds them in one fixed order.
    daily = (
        weighted.group_by("timestamp")
        .agg(
            (pl.col("r_1d") * pl.col("_weight")).sort_by(COIN).alias("_weighted"),
            pl.col("_weight").sort_by(COIN).alias("_weights"),
        )
        .select(
            "timestamp",
            pl.col("_weighted").list.sum().alias("_weighted_sum"),
            pl.col("_weights").list.sum().alias("_weight_sum"),
        )
    )
    btc = grid.filter((pl.col(COIN) == BTC_COIN_ID) & pl.col("observed")).select(
        "timestamp", pl.col("ret_1d").alias("btc_ret_1d"), pl.col("ret_7d").alias("btc_ret_7d")
    )
    calendar = (
        grid.group_by(pl.lit(0).alias("_all"))
        .agg(pl.col("timestamp").min().alias("start"), pl.col("timestamp").max().alias("end"))
        .select(pl.datetime_ranges("start", "end", DAY).alias("timestamp"))
        .explode("timestamp")
    )
    series = (
        calendar.join(daily, on="timestamp", how="left")
        .join(btc, on="timestamp", how="left")
        .sort("timestamp")
        .with_columns(safe_ratio(pl.col("_weighted_sum"), pl.col("_weight_sum")).alias("mkt_ret_1d"))
    )
    # Multi-day market returns scale the mean daily return, so a day with no coin observed does
    # not shrink the sum; they need most of the window to be present.
    return series.select(
        "timestamp",
        "mkt_ret_1d",
        (window_mean(pl.col("mkt_ret_1d"), 7, min_obs=5) * 7).alias("mkt_ret_7d"),
        (window_mean(pl.col("mkt_ret_1d"), 30, min_obs=20) * 30).alias("mkt_ret_30d"),
        window_std(pl.col("mkt_ret_1d"), 30, min_obs=20).alias("mkt_vol_30d"),
        "btc_ret_1d",
        "btc_ret_7d",
    )


def _beta_and_correlation(days: int) -> list[pl.Expr]:
    """Rolling beta and correlation of ``r_1d`` to ``mkt_ret_1d`` over pairwise-complete days."""
    both = pl.col("r_1d").is_not_null() & pl.col("mkt_ret_1d").is_not_null()
    coin = pl.when(both).then(pl.col("r_1d"))
    market = pl.when(both).then(pl.col("mkt_ret_1d"))
    count = window_count(coin, days).over(COIN)
    sum_coin = window_sum(coin, days).over(COIN)
    sum_market = window_sum(market, days).over(COIN)
    # Centred co-moments times (n - 1); the factor cancels in both ratios.
    co_moment = window_sum(coin * market, days).over(COIN) - sum_coin * sum_market / count
    market_moment = window_sum(market * market, days).over(COIN) - sum_market * sum_market / count
    coin_moment = window_sum(coin * coin, days).over(COIN) - sum_coin * sum_coin / count
    enough = count >= days * 2 // 3
    # Relative floor: a market that did not move gives no beta, not a huge one.
    moves = (market_moment > 1e-12 * count) & (coin_moment > 1e-12 * count)
    beta = pl.when(enough & moves).then(co_moment / market_moment)
    correlation = pl.when(enough & moves).then((co_moment / (coin_moment * market_moment).sqrt()).clip(-1.0, 1.0))
    return [beta.alias(f"beta_{days}d"), correlation.alias(f"corr_{days}d")]


def with_market_factor(grid: pl.LazyFrame) -> pl.LazyFrame:
    """Join the market series onto the coin grid and add relative returns, betas and correlations."""
    series = market_return_series(grid)
    joined = grid.join(series, on="timestamp", how="left", maintain_order="left")
    return joined.with_columns(
        (pl.col("ret_7d") - pl.col("mkt_ret_7d")).alias("rel_ret_7d"),
        (pl.col("ret_30d") - pl.col("mkt_ret_30d")).alias("rel_ret_30d"),
        *(expr for days in BETA_WINDOWS for expr in _beta_and_correlation(days)),
    )
