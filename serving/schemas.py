"""The prediction service's inputs, outputs and settings (pydantic, validated at the edge).

Confidence, defined once here and in every answer's documentation: ``confidence = |p_up - 0.5| * 2``
on the *calibrated* probability, i.e. how far the call is from a coin flip (0 = no information,
1 = certain). Because the probability is calibrated on out-of-fold predictions, ``max(p_up, p_down)``
is the model's own estimate of how often such a call is right; ``confidence`` is that figure
rescaled to 0..1. It is not a guarantee: it is only as good as the calibration on recent data.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from khalsi.settings import ServingSettings, Settings

MAX_ITEMS_PER_REQUEST = 256
_HORIZON = re.compile(r"^\s*(\d{1,3})\s*d?\s*$", re.IGNORECASE)


def serving_settings(settings: Settings) -> ServingSettings:
    """The serving section of the settings."""
    return settings.serving


def horizon_label(days: int) -> str:
    """The canonical name of a horizon, e.g. ``7d`` (as stored in ``predictions.timeframe``)."""
    return f"{days}d"


def parse_horizon(value: str) -> int | None:
    """Days of a horizon written ``7d``, ``7D`` or ``7``; None when it is not a horizon at all."""
    match = _HORIZON.match(value)
    return int(match.group(1)) if match else None


class PredictionItem(BaseModel):
    """One question: where is ``coin`` going over ``horizon``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coin: str = Field(min_length=1, max_length=100, description="CoinGecko id (e.g. 'bitcoin') or a unique symbol")
    horizon: str = Field(default="1d", min_length=1, max_length=10, description="'1d', '7d' (or days as a number)")
    # TreeSHAP costs ~10x a prediction (2-3 ms a row for 200 trees of depth 6), so it is opt-in.
    contributions: bool = Field(default=False, description="also return the top-k feature contributions")
    top_k: int | None = Field(default=None, ge=1, le=50, description="how many contributions (default 5)")

    @field_validator("horizon", mode="before")
    @classmethod
    def _days_as_number(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return horizon_label(value)
        return value


class ErrorCode(StrEnum):
    UNKNOWN_COIN = "unknown_coin"
    UNKNOWN_HORIZON = "unknown_horizon"
    STALE_FEATURES = "stale_features"
    MODEL_UNAVAILABLE = "model_unavailable"
    FEATURES_UNAVAILABLE = "features_unavailable"
    MODEL_FEATURE_MISMATCH = "model_feature_mismatch"


class ItemError(BaseModel):
    """Why one item got no prediction (the other items of the request are unaffected)."""

    code: ErrorCode
    message: str


class Contribution(BaseModel):
    """One feature's TreeSHAP contribution to the raw (uncalibrated) log-odds of "up"."""

    feature: str
    contribution: float
    value: float | None = Field(description="the feature's value in this vector (None = missing)")


class PriceTarget(BaseModel):
    """Price after the horizon: ``price * exp(q)`` for the model's return quantiles."""

    median: float
    low: float
    high: float
    low_quantile: float
    high_quantile: float
    # Nominal coverage of [low, high], e.g. 0.8 for q10..q90 (as trained, not a guarantee).
    interval: float


class PredictionResult(BaseModel):
    """The answer for one item: a prediction, or an error saying why there is none."""

    coin: str
    horizon: str
    coin_id: str | None = None
    symbol: str | None = None
    probability_up: float | None = None
    probability_down: float | None = None
    confidence: float | None = Field(default=None, description="|p_up - 0.5| * 2 on the calibrated probability")
    direction: Literal["up", "down"] | None = None
    price: float | None = Field(default=None, description="the price at the feature timestamp")
    price_target: PriceTarget | None = None
    model_name: str | None = None
    model_version: str | None = None
    feature_timestamp: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="when the next data point replaces this one")
    contributions: list[Contribution] | None = None
    error: ItemError | None = None


class PredictionResponse(BaseModel):
    """All items' answers, in request order."""

    results: list[PredictionResult]
    feature_version: int | None = None


class ServedModelStatus(BaseModel):
    """Which model version answers for a horizon."""

    horizon: str
    model_name: str
    model_version: str
    run_id: str | None
    loaded_at: datetime


class ServiceStatus(BaseModel):
    """What the service is serving right now (health and readiness report this)."""

    ready: bool
    models: list[ServedModelStatus]
    missing_horizons: list[str]
    feature_version: int | None
    feature_backend: str
    feature_published_at: datetime | None
    newest_feature_timestamp: datetime | None
    coins: int
    last_errors: dict[str, str]
