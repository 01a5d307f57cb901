"""Window arithmetic that gives bit-identical results however much history precedes the window.

Polars' plain ``rolling_sum``/``rolling_mean``/``rolling_std`` slide a running sum (add the new
value, subtract the old one), so the float result at row t carries rounding from every earlier
row: the same day computed from a trailing slice of history differs from the full-history value
in the last bits. That would make the online vector differ from the training row. The weighted
variants compute every window afresh (a dot product over exactly the window), so a feature here
depends on the values inside its window and nothing else. Weighted windows refuse nulls, so
nulls become zeros in the sums and a separate count of the non-null values decides the mean and
whether the window has enough observations. Max/min windows compare, never add, so the plain
ones are already exact.
"""

from __future__ import annotations

import polars as pl

DAY = "1d"


def window_count(expr: pl.Expr, size: int) -> pl.Expr:
    """How many non-null values the trailing ``size``-row window holds."""
    return expr.is_not_null().cast(pl.Float64).rolling_sum(size, weights=[1.0] * size, min_samples=1)


def window_sum(expr: pl.Expr, size: int) -> pl.Expr:
    """Sum of the non-null values in the trailing ``size``-row window (exact, see module doc)."""
    return expr.cast(pl.Float64).fill_null(0.0).rolling_sum(size, weights=[1.0] * size, min_samples=1)


def window_mean(expr: pl.Expr, size: int, *, min_obs: int) -> pl.Expr:
    """Mean of the non-null values in the window; null with fewer than ``min_obs`` of them."""
    count = window_count(expr, size)
    return pl.when(count >= min_obs).then(window_sum(expr, size) / count)


def window_std(expr: pl.Expr, size: int, *, min_obs: int) -> pl.Expr:
    """Sample standard deviation of the non-null values in the window (null below ``min_obs``)."""
    count = window_count(expr, size)
    total = window_sum(expr, size)
    squares = window_sum(expr * expr, size)
    mean = total / count
    variance = (squares - total * mean) / (count - 1)
    # The sum-of-squares form loses ~1e-16 * mean^2 to rounding: below a margin over that, the
    # window is constant and its spread is exactly zero (not noise that a z-score would divide by).
    spread = pl.when(variance > 1e-10 * mean * mean).then(variance.sqrt()).otherwise(0.0)
    return pl.when(count >= max(min_obs, 2)).then(spread)


def window_weighted_mean(expr: pl.Expr, weights: list[float]) -> pl.Expr:
    """Weighted mean over a full window (oldest weight first); null unless every value is present."""
    size = len(weights)
    total = sum(weights)
    normalised = [weight / total for weight in weights]
    value = expr.cast(pl.Float64).fill_null(0.0).rolling_sum(size, weights=normalised)
    return pl.when(window_count(expr, size) == size).then(value)


def truncated_ema_weights(span: int, *, length_factor: int = 3) -> list[float]:
    """EMA weights (alpha = 2/(span+1)) cut at ``length_factor * span`` days, oldest first.

    A true EMA remembers all history, so a value computed from a trailing slice never equals the
    full-history one exactly; truncating at 3 spans keeps all but ~0.3% of the weight of span 26.
    """
    alpha = 2.0 / (span + 1)
    size = length_factor * span
    return [(1.0 - alpha) ** age for age in range(size - 1, -1, -1)]


def safe_log(expr: pl.Expr) -> pl.Expr:
    """Natural log of positive values, null otherwise (never -inf or NaN)."""
    return pl.when(expr > 0).then(expr.log())


def safe_ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """``numerator / denominator``, null where the denominator is zero or null."""
    return pl.when(denominator != 0).then(numerator / denominator)


def available_day(available_at: pl.Expr) -> pl.Expr:
    """The first 00:00 UTC market timestamp at which a row stamped ``available_at`` is known."""
    floor = available_at.dt.truncate(DAY)
    return pl.when(floor == available_at).then(floor).otherwise(floor.dt.offset_by(DAY))
