"""Point-in-time features for Khalsi's models, shared by training and online serving.

Public API:

- ``FEATURE_COLUMNS: list[str]``: the model inputs, in order (all Float64, nulls where a window
  has too little history; never NaN or inf).
- ``build_feature_frame(market, fear_greed, social_daily) -> pl.LazyFrame``: one row per market
  row with ``coin_id, symbol, timestamp, price`` and FEATURE_COLUMNS, sorted by coin and time.
  The row (c, t) uses only market rows with ``timestamp <= t`` and Fear & Greed / social rows
  with ``available_at <= t``. Inputs follow the lake schemas (``khalsi.lake``).
- ``load_feature_frame(lake_dir) -> pl.LazyFrame``: the same, scanned from the Parquet lake.
- ``latest_feature_vectors(market, fear_greed, social_daily, *, as_of=None, max_age=None)
  -> pl.DataFrame``: each coin's last row at or before ``as_of``, computed by the same code on a
  trailing slice of history and bit-identical to the training row of that (coin, timestamp).

- ``check_market(market)``: raises ``FeatureInputError`` (a ValueError naming the problem
  counts) unless market rows are unique per coin and 00:00 UTC day with a positive price.

Feature groups (see the modules for definitions and the reasons behind them):
``features.market`` (returns, volatility, RSI, MACD, ranges, volume/cap), ``features.market_factor``
(BTC and cap-weighted market returns, betas, correlations), ``features.social`` (Fear & Greed,
per-coin and market-wide sentiment and mentions), ``features.cross_section`` (each coin's rank and
z-score among the coins observed on the same day). Windows are calendar days on a per-coin daily
grid, computed by ``features.windows`` so that results never depend on how much history precedes
them.
"""

from features.pipeline import (
    FEATURE_COLUMNS,
    KEY_COLUMNS,
    ONLINE_HISTORY_DAYS,
    FeatureInputError,
    build_feature_frame,
    check_market,
    latest_feature_vectors,
    load_feature_frame,
)

__all__ = [
    "FEATURE_COLUMNS",
    "KEY_COLUMNS",
    "ONLINE_HISTORY_DAYS",
    "FeatureInputError",
    "build_feature_frame",
    "check_market",
    "latest_feature_vectors",
    "load_feature_frame",
]
