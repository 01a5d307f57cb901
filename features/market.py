"""Per-coin price, volume and market-cap features, computed on a calendar-complete daily grid.

Why a grid: the lake has one row per coin and observed UTC day, and some days are missing (up to
5 in a row in the bundled data). Row-count windows over observed rows would silently stretch
"30 days" over a gap; time-based ``rolling_*_by`` windows are sliding sums, not exact (see
:mod:`features.windows`). So each coin gets one row per calendar day from its first to its last
observation (``observed`` marks the real ones), every window is N grid rows = N calendar days, and
:func:`features.pipeline.build_feature_frame` keeps only the observed rows at the end.

On the grid a missing day is a missing value, never an invented one: daily returns across a gap
are null (so they don't enter volatility, RSI or betas), while k-day returns use the last known
price at or before t-k, carried forward at most ``PRICE_STALE_DAYS`` days. Everything is a ratio,
log ratio or z-score, so no feature depends on the price level of the coin.
"""

from __future__ import annotations

import polars as pl

from features.windows import (
    DAY,
    safe_log,
    safe_ratio,
    truncated_ema_weights,
    window_count,
    window_mean,
    window_std,
    window_weighted_mean,
)

COIN = "coin_id"
PRICE_STALE_DAYS = 7
RETURN_WINDOWS = (1, 3, 7, 14, 30)
VOLATILITY_WINDOWS = (7, 30)
RANGE_WINDOWS = (30, 90)
RSI_WINDOW = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
VOLUME_WINDOW = 30

MARKET_COLUMNS: list[str] = [
    *(f"ret_{days}d" for days in RETURN_WINDOWS),
    *(f"vol_{days}d" for days in VOLATILITY_WINDOWS),
    "ret_1d_z_30d",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    *(f"dist_{side}_{days}d" for days in RANGE_WINDOWS for side in ("high", "low")),
    "volume_logchg_1d",
    "volume_vs_mean_30d",
    "volume_z_30d",
    "turnover_log",
    "mcap_logchg_7d",
]

# How many calendar days of history the slowest market feature reaches back (MACD signal over a
# truncated slow EMA of a price carried forward at most PRICE_STALE_DAYS).
MARKET_LOOKBACK_DAYS = 3 * MACD_SLOW + 3 * MACD_SIGNAL + PRICE_STALE_DAYS


def coin_calendar(market: pl.LazyFrame) -> pl.LazyFrame:
    """One row per coin and calendar day from its first to its last observation, sorted."""
    bounds = (
        market.group_by(COIN)
        .agg(pl.col("timestamp").min().alias("start"), pl.col("timestamp").max().alias("end"))
        .sort(COIN)
    )
    # Sorted bounds explode into a grid already in (coin, time) order and the join keeps that
    # order, so the large frame is never sorted.
    grid = bounds.select(COIN, pl.datetime_ranges("start", "end", DAY, closed="both").alias("timestamp")).explode(
        "timestamp"
    )
    observed = market.with_columns(pl.lit(True).alias("observed"))
    return grid.join(observed, on=[COIN, "timestamp"], how="left", maintain_order="left").with_columns(
        pl.col("observed").fill_null(False)
    )


def with_returns(grid: pl.LazyFrame) -> pl.LazyFrame:
    """Daily log return ``r_1d`` (null across gaps) and k-day log returns from the last known price."""
    known_price = pl.col("price").forward_fill(limit=PRICE_STALE_DAYS).over(COIN)
    return grid.with_columns(known_price.alias("_price_known")).with_columns(
        safe_log(pl.col("price") / pl.col("price").shift(1).over(COIN)).alias("r_1d"),
        *(
            safe_log(pl.col("price") / pl.col("_price_known").shift(days).over(COIN)).alias(f"ret_{days}d")
            for days in RETURN_WINDOWS
        ),
    )


def with_volatility(grid: pl.LazyFrame) -> pl.LazyFrame:
    """Realised volatility (std of daily log returns) and today's return in units of it."""
    grid = grid.with_columns(
        window_std(pl.col("r_1d"), days, min_obs=max(5, days * 2 // 3)).over(COIN).alias(f"vol_{days}d")
        for days in VOLATILITY_WINDOWS
    )
    return grid.with_columns(safe_ratio(pl.col("r_1d"), pl.col("vol_30d")).alias("ret_1d_z_30d"))


def with_rsi(grid: pl.LazyFrame) -> pl.LazyFrame:
    """RSI(14) from simple means of daily log gains and losses (0-100, 50 when flat)."""
    gains = pl.col("r_1d").clip(lower_bound=0.0)
    losses = (-pl.col("r_1d")).clip(lower_bound=0.0)
    # Simple means, not Wilder's EMA: a finite window keeps the value exact on a history slice.
    mean_gain = window_mean(gains, RSI_WINDOW, min_obs=10).over(COIN)
    mean_loss = window_mean(losses, RSI_WINDOW, min_obs=10).over(COIN)
    movement = mean_gain + mean_loss
    rsi = pl.when(movement > 0).then(100.0 * mean_gain / movement).otherwise(pl.when(movement == 0).then(50.0))
    return grid.with_columns(rsi.alias("rsi_14"))


def with_macd(grid: pl.LazyFrame) -> pl.LazyFrame:
    """MACD line, signal and histogram of (truncated) EMAs 12/26/9, divided by the price."""
    fast = window_weighted_mean(pl.col("_price_known"), truncated_ema_weights(MACD_FAST)).over(COIN)
    slow = window_weighted_mean(pl.col("_price_known"), truncated_ema_weights(MACD_SLOW)).over(COIN)
    grid = grid.with_columns(safe_ratio(fast - slow, pl.col("_price_known")).alias("macd"))
    signal = window_weighted_mean(pl.col("macd"), truncated_ema_weights(MACD_SIGNAL)).over(COIN)
    return grid.with_columns(signal.alias("macd_signal")).with_columns(
        (pl.col("macd") - pl.col("macd_signal")).alias("macd_hist")
    )


def with_ranges(grid: pl.LazyFrame) -> pl.LazyFrame:
    """Log distance of the price from its rolling 30/90-day high (<= 0) and low (>= 0)."""
    columns = []
    for days in RANGE_WINDOWS:
        min_obs = days * 2 // 3
        enough = window_count(pl.col("price"), days).over(COIN) >= min_obs
        high = pl.col("price").rolling_max(days, min_samples=1).over(COIN)
        low = pl.col("price").rolling_min(days, min_samples=1).over(COIN)
        columns.append(pl.when(enough).then(safe_log(pl.col("price") / high)).alias(f"dist_high_{days}d"))
        columns.append(pl.when(enough).then(safe_log(pl.col("price") / low)).alias(f"dist_low_{days}d"))
    return grid.with_columns(columns)


def with_volume(grid: pl.LazyFrame) -> pl.LazyFrame:
    """Volume and market-cap dynamics: daily log change, ratio to 30-day mean, z-score, turnover."""
    log_volume = safe_log(pl.col("volume_24h"))
    grid = grid.with_columns(log_volume.alias("_log_volume"))
    mean_volume = window_mean(pl.col("volume_24h"), VOLUME_WINDOW, min_obs=10).over(COIN)
    mean_log = window_mean(pl.col("_log_volume"), VOLUME_WINDOW, min_obs=10).over(COIN)
    std_log = window_std(pl.col("_log_volume"), VOLUME_WINDOW, min_obs=10).over(COIN)
    return grid.with_columns(
        (pl.col("_log_volume") - pl.col("_log_volume").shift(1).over(COIN)).alias("volume_logchg_1d"),
        safe_log(safe_ratio(pl.col("volume_24h"), mean_volume)).alias("volume_vs_mean_30d"),
        pl.when(std_log > 0).then((pl.col("_log_volume") - mean_log) / std_log).alias("volume_z_30d"),
        safe_log(safe_ratio(pl.col("volume_24h"), pl.col("market_cap"))).alias("turnover_log"),
        # Caps are not carried forward: a missing cap (e.g. SHIB's early history) stays missing.
        safe_log(pl.col("market_cap") / pl.col("market_cap").shift(7).over(COIN)).alias("mcap_logchg_7d"),
    )


def market_features(grid: pl.LazyFrame) -> pl.LazyFrame:
    """All per-coin market features on the calendar grid (adds ``r_1d`` and MARKET_COLUMNS)."""
    return (
        grid.pipe(with_returns).pipe(with_volatility).pipe(with_rsi).pipe(with_macd).pipe(with_ranges).pipe(with_volume)
    )


__all__ = [
    "MARKET_COLUMNS",
    "MARKET_LOOKBACK_DAYS",
    "coin_calendar",
    "market_features",
]
