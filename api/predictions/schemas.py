"""Request and response bodies of predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The horizons training declares and serving answers (training.config.HORIZONS).
Horizon = Literal["1d", "7d"]
COIN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
COIN_MAX_LENGTH = 100
# A page of a watch list: bounded, so one request cannot hold a connection to the service for long.
MAX_BATCH_ITEMS = 50


class PredictionQuery(BaseModel):
    """One question: where is ``coin`` going over ``horizon``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    coin: str = Field(
        min_length=1,
        max_length=COIN_MAX_LENGTH,
        pattern=COIN_PATTERN,
        description="CoinGecko id (e.g. 'bitcoin') or a unique symbol (e.g. 'BTC'), any case",
    )
    horizon: Horizon = "1d"


class BatchPredictionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[PredictionQuery] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class PriceTargetPublic(BaseModel):
    """Price after the horizon from the model's return quantiles."""

    median: float
    low: float
    high: float
    interval: float | None = Field(description="nominal coverage of [low, high], e.g. 0.8 (as trained)")


class PredictionPublic(BaseModel):
    """A calibrated call on one coin and horizon, live from the service or stored by the score flow."""

    coin_id: str
    symbol: str
    horizon: Horizon
    probability_up: float
    probability_down: float
    confidence: float = Field(description="|p_up - 0.5| * 2 on the calibrated probability (0 = coin flip)")
    direction: Literal["up", "down"]
    price: float | None = Field(description="the price at feature_timestamp")
    price_target: PriceTargetPublic | None
    model_name: str | None
    model_version: str
    feature_timestamp: datetime = Field(description="the data point the prediction was made from")
    generated_at: datetime = Field(description="when the prediction was computed")
    expires_at: datetime | None = Field(description="when the next data point replaces it")
    source: Literal["live", "stored"] = Field(
        description="'live': the prediction service answered now; 'stored': it could not, this is the score flow's"
    )
    fallback_reason: str | None = Field(default=None, description="why the service's answer was not used")


class ItemErrorPublic(BaseModel):
    code: str = Field(
        description="unknown_coin, unknown_horizon, stale_features, model_unavailable or prediction_unavailable"
    )
    message: str


class BatchItemResult(BaseModel):
    """One item's answer: a prediction (status 200) or an error with the status it would have alone."""

    coin: str
    horizon: Horizon
    status: int = Field(description="200, or the HTTP status of the error (404, 409, 422, 503)")
    prediction: PredictionPublic | None = None
    error: ItemErrorPublic | None = None


class BatchPredictionResponse(BaseModel):
    """Every item's answer, in request order."""

    results: list[BatchItemResult]
