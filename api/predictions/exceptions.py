"""Domain errors of predictions; the router turns them into HTTP answers (or per-item statuses)."""

from __future__ import annotations


class PredictionError(Exception):
    """Why one (coin, horizon) got no prediction; ``code`` is stable for clients to branch on."""

    code = "prediction_error"


class UnknownCoinError(PredictionError):
    code = "unknown_coin"


class UnknownHorizonError(PredictionError):
    code = "unknown_horizon"


class StaleFeaturesError(PredictionError):
    """The coin's newest data is too old to predict from (ingestion is behind for it)."""

    code = "stale_features"


class NoChampionError(PredictionError):
    """No model has been promoted for the horizon."""

    code = "model_unavailable"


class PredictionUnavailableError(PredictionError):
    """The prediction service could not answer and no unexpired stored prediction exists."""

    code = "prediction_unavailable"


class MLServiceUnavailableError(Exception):
    """The prediction service is down, timed out, or answered something other than predictions."""
