"""Labels from future prices, joined on the calendar (never by row position).

For a row of coin c at day t and a horizon of H days: ``future_price`` is c's price at exactly
t + H days, ``label_up`` is 1 when it is higher than today's price (0 otherwise) and
``fwd_log_return`` is log(future / today), the target of the quantile models. A row whose day
t + H is missing (the end of the history, or a gap in the data) has no label: null, never filled.
A row-shift would silently turn "7 days ahead" into "8 days ahead" across a missing day.

``label_at`` (t + H) is when the label becomes known; training code keeps only rows whose label
was known before the test window starts.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

LABEL = "label_up"
FWD_RETURN = "fwd_log_return"
FUTURE_PRICE = "future_price"
LABEL_AT = "label_at"
TRAILING_RETURN = "trailing_log_return"

_KEYS = ["coin_id", "timestamp"]


def _price_shifted(frame: pl.LazyFrame, days: int, alias: str) -> pl.LazyFrame:
    """Each coin's price ``days`` calendar days later (negative: earlier), keyed by today's row."""
    return frame.select(
        pl.col("coin_id"),
        (pl.col("timestamp") - timedelta(days=days)).alias("timestamp"),
        pl.col("price").alias(alias),
    ).unique(subset=_KEYS, keep="first")


def add_labels(frame: pl.LazyFrame, horizon_days: int) -> pl.LazyFrame:
    """Add ``future_price``, ``label_up``, ``fwd_log_return`` and ``label_at`` for horizon H days."""
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
    future = _price_shifted(frame, horizon_days, FUTURE_PRICE)
    valid = (
        pl.col(FUTURE_PRICE).is_not_null()
        & pl.col("price").is_not_null()
        & (pl.col(FUTURE_PRICE) > 0)
        & (pl.col("price") > 0)
    )
    return (
        frame.join(future, on=_KEYS, how="left")
        .with_columns(
            pl.when(valid).then(pl.col(FUTURE_PRICE)).alias(FUTURE_PRICE),
        )
        .with_columns(
            pl.when(valid).then((pl.col(FUTURE_PRICE) > pl.col("price")).cast(pl.Int8)).alias(LABEL),
            pl.when(valid).then((pl.col(FUTURE_PRICE) / pl.col("price")).log()).alias(FWD_RETURN),
            (pl.col("timestamp") + timedelta(days=horizon_days)).alias(LABEL_AT),
        )
    )


def add_trailing_return(frame: pl.LazyFrame, horizon_days: int) -> pl.LazyFrame:
    """Add ``trailing_log_return``: log(price today / price H calendar days ago), null if unknown.

    Only past prices are used, so it is a legitimate input for the momentum baseline.
    """
    past = _price_shifted(frame, -horizon_days, "_past_price")
    valid = pl.col("_past_price").is_not_null() & (pl.col("_past_price") > 0) & (pl.col("price") > 0)
    return (
        frame.join(past, on=_KEYS, how="left")
        .with_columns(pl.when(valid).then((pl.col("price") / pl.col("_past_price")).log()).alias(TRAILING_RETURN))
        .drop("_past_price")
    )


def labelled_rows(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Only the rows that have a label."""
    return frame.filter(pl.col(LABEL).is_not_null())
