"""What an alert is: a typed condition per ``alert_type``, the channels it notifies, its re-arm rule.

The seed's ``user_alerts`` row has one JSONB ``condition`` column; it holds the condition's own
fields (``{"price": 50000}``) beside two reserved keys, ``channels`` and ``cooldown_minutes``, so a
reader of the column sees the threshold directly.

Re-arm: ``cooldown_minutes`` null (the default) means one-shot: the alert fires once, then
``is_active`` turns false until its owner sets it true again (``PATCH``). A number N keeps the
alert active: it fires again, while its condition holds, at most once every N minutes after its
last firing (``triggered_at``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, TypeAdapter, ValidationError, field_validator

from khalsi.notify.targets import UnsafeTargetError, check_webhook_url

AlertType = Literal[
    "price_above",
    "price_below",
    "change_24h_above",
    "change_24h_below",
    "probability_up_above",
    "probability_up_below",
]
Horizon = Literal["1d", "7d"]
RESERVED_KEYS = ("channels", "cooldown_minutes")
MIN_COOLDOWN_MINUTES = 5
MAX_COOLDOWN_MINUTES = 30 * 24 * 60
MAX_CHANNELS = 5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class PriceCondition(_Strict):
    """``price_above`` / ``price_below``: the latest stored price (quote currency) against ``price``."""

    price: float = Field(gt=0, allow_inf_nan=False)


class ChangeCondition(_Strict):
    """``change_24h_above`` / ``change_24h_below``: the latest 24 h change, in percent, against ``percent``."""

    percent: float = Field(ge=-100, le=100_000, allow_inf_nan=False)


class ProbabilityCondition(_Strict):
    """``probability_up_*``: the newest stored probability that the price is up after ``horizon``."""

    horizon: Horizon
    probability: float = Field(gt=0, lt=1)


AlertCondition = PriceCondition | ChangeCondition | ProbabilityCondition
CONDITION_MODELS: dict[str, type[AlertCondition]] = {
    "price_above": PriceCondition,
    "price_below": PriceCondition,
    "change_24h_above": ChangeCondition,
    "change_24h_below": ChangeCondition,
    "probability_up_above": ProbabilityCondition,
    "probability_up_below": ProbabilityCondition,
}


class EmailChannel(_Strict):
    """E-mail; without ``address``, the account's own address at the time the alert fires."""

    type: Literal["email"] = "email"
    address: EmailStr | None = Field(default=None, max_length=255)


class WebhookChannel(_Strict):
    """A Discord-compatible webhook (``POST {"content": ...}``) at a public http(s) URL."""

    type: Literal["webhook"] = "webhook"
    url: str = Field(min_length=1, max_length=2048)

    @field_validator("url")
    @classmethod
    def _a_web_url(cls, value: str) -> str:
        # The form only; whether private addresses are allowed depends on the deployment's settings.
        try:
            return check_webhook_url(value, allow_private=True)
        except UnsafeTargetError as error:
            raise ValueError(str(error)) from error


ChannelSpec = Annotated[EmailChannel | WebhookChannel, Field(discriminator="type")]
_CHANNELS = TypeAdapter(list[ChannelSpec])


def unique_channels(channels: list[EmailChannel | WebhookChannel]) -> list[EmailChannel | WebhookChannel]:
    """Refuse the same target twice (it would notify twice per firing)."""
    seen = [channel.model_dump_json() for channel in channels]
    if len(set(seen)) != len(seen):
        raise ValueError("the same channel is listed twice")
    return channels


def parse_condition(alert_type: str, condition: dict[str, Any]) -> AlertCondition:
    """The typed condition of ``alert_type``; raises pydantic's ``ValidationError`` or ``KeyError``."""
    return CONDITION_MODELS[alert_type].model_validate(condition)


@dataclass(frozen=True)
class AlertRule:
    """An alert's stored ``condition`` document, split into its parts."""

    condition: dict[str, Any]
    channels: list[EmailChannel | WebhookChannel]
    cooldown_minutes: int | None

    def to_document(self) -> dict[str, Any]:
        return {
            **self.condition,
            "channels": [channel.model_dump(mode="json") for channel in self.channels],
            "cooldown_minutes": self.cooldown_minutes,
        }


def read_rule(document: dict[str, Any]) -> AlertRule:
    """Split a stored document; a row without channels (written before them) notifies its owner by e-mail.

    Raises ``ValueError`` (pydantic's ``ValidationError`` is one) if the channels or cooldown are malformed.
    """
    condition = {key: value for key, value in document.items() if key not in RESERVED_KEYS}
    raw_channels = document.get("channels") or [{"type": "email"}]
    channels = _CHANNELS.validate_python(raw_channels)
    cooldown = document.get("cooldown_minutes")
    if cooldown is not None and (not isinstance(cooldown, int) or isinstance(cooldown, bool) or cooldown < 1):
        raise ValueError(f"cooldown_minutes must be a positive integer, not {cooldown!r}")
    return AlertRule(condition=condition, channels=list(channels), cooldown_minutes=cooldown)


# --- evaluation against stored data -------------------------------------------------------------------


@dataclass(frozen=True)
class MarketObservation:
    """A coin's newest stored market snapshot."""

    coin_id: str
    price: float
    change_24h: float | None
    timestamp: datetime


@dataclass(frozen=True)
class PredictionObservation:
    """A coin's newest stored prediction for one horizon."""

    coin_id: str
    timeframe: str
    probability_up: float
    model_version: str
    feature_timestamp: datetime


@dataclass(frozen=True)
class Check:
    """Whether a condition holds now, what was observed, or why it could not be told."""

    holds: bool
    observed: dict[str, Any] | None = None
    missing: str | None = None


def _crossed(alert_type: str, value: float, threshold: float) -> bool:
    return value > threshold if alert_type.endswith("_above") else value < threshold


def check_condition(
    alert_type: str,
    condition: AlertCondition,
    *,
    market: MarketObservation | None,
    predictions: dict[str, PredictionObservation],
) -> Check:
    """Evaluate one typed condition against the newest observations of its coin (strict comparisons)."""
    if isinstance(condition, ProbabilityCondition):
        prediction = predictions.get(condition.horizon)
        if prediction is None:
            return Check(holds=False, missing="no_prediction")
        observed = {
            "probability_up": prediction.probability_up,
            "horizon": prediction.timeframe,
            "model_version": prediction.model_version,
            "as_of": prediction.feature_timestamp.isoformat(),
        }
        return Check(_crossed(alert_type, prediction.probability_up, condition.probability), observed)
    if market is None:
        return Check(holds=False, missing="no_market_data")
    if isinstance(condition, PriceCondition):
        observed = {"price": market.price, "as_of": market.timestamp.isoformat()}
        return Check(_crossed(alert_type, market.price, condition.price), observed)
    if market.change_24h is None or not math.isfinite(market.change_24h):
        return Check(holds=False, missing="no_change_24h")
    observed = {"change_24h": market.change_24h, "as_of": market.timestamp.isoformat()}
    return Check(_crossed(alert_type, market.change_24h, condition.percent), observed)


def safe_rule(document: dict[str, Any]) -> tuple[dict[str, Any], list[EmailChannel | WebhookChannel], int | None]:
    """The parts of a stored document for display, never raising (a malformed part shows empty)."""
    try:
        rule = read_rule(document)
    except (ValueError, ValidationError):
        condition = {key: value for key, value in document.items() if key not in RESERVED_KEYS}
        return condition, [], None
    return rule.condition, rule.channels, rule.cooldown_minutes
