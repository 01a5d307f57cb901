"""Request and response bodies of portfolios.

Numbers: every quantity, price, amount and percentage of the portfolio's own arithmetic is a JSON
**string** holding a plain decimal (``"0.00001234"``, never ``"1.234E-5"``, no trailing zeros), so
no client parses money into a float by accident. Requests accept strings or JSON numbers (a JSON
number is read through its shortest decimal form: ``0.1`` is 0.1). Model outputs passed through
from the ``predictions`` table (probabilities, confidence, price targets) and ``price_age_hours``
stay JSON numbers: they are estimates stored as floats, not money the portfolio adds up.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator, model_validator

from api.portfolios.valuation import EXACT_CONTEXT, PriceStatus

# The column is NUMERIC(38, 18): 20 digits before the point, 18 after. Anything finer would be
# rounded by PostgreSQL without a word, so it is refused instead.
MAX_DIGITS = 38
MAX_DECIMAL_PLACES = 18
# No coin has traded above a billion dollars a unit: a larger average price is a typo.
MAX_AVG_PRICE = 1_000_000_000
# The Bitcoin genesis block: no crypto position was opened before it.
EARLIEST_ENTRY_DATE = datetime(2009, 1, 3, tzinfo=UTC)
SYMBOL_PATTERN = r"^[^\s\x00-\x1f\x7f]+$"  # printable, no spaces (PostgreSQL text refuses NUL)
COIN_ID_PATTERN = r"^[A-Za-z0-9._-]+$"


def plain_decimal(value: Decimal) -> str:
    """A decimal as a plain string: no exponent, no trailing zeros, ``"0"`` for any zero."""
    if value == 0:
        return "0"
    return format(value.normalize(EXACT_CONTEXT), "f")


DecimalString = Annotated[Decimal, PlainSerializer(plain_decimal, return_type=str, when_used="json")]
Quantity = Annotated[
    Decimal,
    Field(gt=0, max_digits=MAX_DIGITS, decimal_places=MAX_DECIMAL_PLACES, description="units held, > 0"),
]
AvgPrice = Annotated[
    Decimal,
    Field(
        gt=0,
        le=MAX_AVG_PRICE,
        max_digits=MAX_DIGITS,
        decimal_places=MAX_DECIMAL_PLACES,
        description="USD paid per unit, > 0",
    ),
]


def _checked_entry_date(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # A date or time without an offset is read as UTC (the platform's clock is UTC).
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if aware < EARLIEST_ENTRY_DATE:
        raise ValueError(f"entry_date must not be before {EARLIEST_ENTRY_DATE.date().isoformat()} (the first block)")
    return aware.astimezone(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class PositionCreate(_Strict):
    """A buy: name the coin by ``symbol`` or by CoinGecko ``coin_id`` (exactly one)."""

    symbol: str | None = Field(default=None, min_length=1, max_length=20, pattern=SYMBOL_PATTERN, examples=["BTC"])
    coin_id: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=COIN_ID_PATTERN, examples=["bitcoin"]
    )
    quantity: Quantity
    avg_price: AvgPrice
    entry_date: datetime | None = Field(default=None, description="when bought (UTC if no offset); default now")

    @field_validator("entry_date")
    @classmethod
    def _entry_date_rules(cls, value: datetime | None) -> datetime | None:
        return _checked_entry_date(value)

    @model_validator(mode="after")
    def _one_coin_reference(self) -> PositionCreate:
        if (self.symbol is None) == (self.coin_id is None):
            raise ValueError("name the coin with exactly one of 'symbol' or 'coin_id'")
        return self


class PositionUpdate(_Strict):
    """Fields to change; the coin itself cannot change (delete the position and add another)."""

    quantity: Quantity | None = None
    avg_price: AvgPrice | None = None
    entry_date: datetime | None = None

    @field_validator("entry_date")
    @classmethod
    def _entry_date_rules(cls, value: datetime | None) -> datetime | None:
        return _checked_entry_date(value)

    @model_validator(mode="after")
    def _something_to_change(self) -> PositionUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one of 'quantity', 'avg_price', 'entry_date'")
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
        return self


class PricedFields(BaseModel):
    """The latest stored price behind a valuation, and why there is none when there is none."""

    price_status: PriceStatus = Field(
        description="fresh | stale (valued, price older than max_price_age_hours) | no_price | coin_not_tracked "
        "| ambiguous_symbol (the last three: market_value and P&L are null)"
    )
    price_note: str | None = Field(description="why the position is stale or unpriced; null when fresh")
    price: DecimalString | None = Field(description="USD per unit, latest stored at or before as_of")
    price_at: datetime | None = Field(description="timestamp of that market_data row")
    price_age_hours: float | None


class AmountFields(BaseModel):
    quantity: DecimalString
    cost_basis: DecimalString = Field(description="quantity x avg_price")
    market_value: DecimalString | None = Field(description="quantity x price; null when unpriced")
    unrealised_pnl: DecimalString | None = Field(description="market_value - cost_basis")
    unrealised_pnl_pct: DecimalString | None = Field(description="unrealised_pnl / cost_basis x 100, 4 decimals")


class PositionPublic(PricedFields, AmountFields):
    """One stored position (a lot), valued at the latest stored price of its coin."""

    id: uuid.UUID
    coin_id: str | None = Field(description="null when the stored symbol no longer names one tracked coin")
    symbol: str
    name: str | None
    avg_price: DecimalString
    entry_date: datetime


class PortfolioPosition(PositionPublic):
    allocation_pct: DecimalString | None = Field(description="share of the priced market value, 4 decimals")


class PredictionPublic(BaseModel):
    """The latest stored prediction of a horizon for a coin (written by the score flow)."""

    timeframe: str
    probability_up: float | None
    probability_down: float | None
    confidence: float | None
    price_target: float | None
    price_target_low: float | None
    price_target_high: float | None
    model_name: str | None
    model_version: str
    feature_timestamp: datetime
    created_at: datetime
    expires_at: datetime | None
    expired: bool = Field(description="expires_at is at or before as_of: a newer data point exists or is due")


class HoldingPublic(PricedFields, AmountFields):
    """Every position of one coin taken together."""

    coin_id: str | None
    symbol: str
    name: str | None
    avg_price: DecimalString = Field(description="cost_basis / quantity (weighted), rounded to 18 decimals")
    allocation_pct: DecimalString | None
    position_ids: list[uuid.UUID]
    predictions: dict[str, PredictionPublic] | None = Field(
        description="latest prediction per horizon ('1d', '7d'); null when not requested"
    )


class PortfolioTotals(BaseModel):
    positions: int
    priced_positions: int
    stale_positions: int
    unpriced_positions: int
    complete: bool = Field(description="every position has a market value (stale ones included)")
    cost_basis: DecimalString = Field(description="of every position")
    priced_cost_basis: DecimalString = Field(description="of the positions with a market value")
    market_value: DecimalString = Field(description="of the positions with a market value")
    unrealised_pnl: DecimalString = Field(description="market_value - priced_cost_basis")
    unrealised_pnl_pct: DecimalString | None


class PortfolioPublic(BaseModel):
    as_of: datetime = Field(description="the platform's clock when valued (the replay's time in replay mode)")
    currency: Literal["usd"] = "usd"
    max_price_age_hours: float
    totals: PortfolioTotals
    holdings: list[HoldingPublic]
    positions: list[PortfolioPosition]


def error_detail(field: str, message: str, kind: str, value: Any, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of a 422 ``detail`` list, shaped like FastAPI's own validation errors."""
    entry: dict[str, Any] = {"type": kind, "loc": ["body", field], "msg": message, "input": value}
    if ctx:
        entry["ctx"] = ctx
    return entry
