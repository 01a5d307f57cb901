"""Portfolio valuation in exact decimal arithmetic: pure functions over plain values, no I/O.

Why Decimal everywhere: quantities and average prices are stored as NUMERIC(38, 18), and a float
cannot hold them (``0.1 + 0.2 != 0.3``; 18 decimals of a 20-digit quantity need ~38 significant
digits, a double has ~16). Products and sums are computed in a 100-digit context, so they are exact
(a 38-digit quantity times a 17-digit price has at most 55 digits): nothing is rounded except
percentages (a ratio rarely terminates) and the weighted average price of a holding (rounded to the
column's 18 decimals). Totals are therefore exactly the sums of the amounts shown per position.

The stored market price is a double (``market_data.price``); it enters through its shortest
decimal representation (``repr``), i.e. the number CoinGecko sent, not the binary approximation.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext
from enum import StrEnum

EXACT_CONTEXT = Context(prec=100, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
PERCENT_QUANTUM = Decimal("0.0001")
# The scale of portfolios.avg_price: a holding's weighted average is shown at the precision stored.
AVG_PRICE_QUANTUM = Decimal("1e-18")
HUNDRED = Decimal(100)


class PriceStatus(StrEnum):
    """Why a position has (or has not) a market value."""

    FRESH = "fresh"
    STALE = "stale"  # valued, but the latest stored price is older than the allowed age
    NO_PRICE = "no_price"  # the coin is tracked but no usable price is stored
    COIN_NOT_TRACKED = "coin_not_tracked"  # the symbol is no longer in the coins table
    AMBIGUOUS_SYMBOL = "ambiguous_symbol"  # several tracked coins share the stored symbol

    @property
    def priced(self) -> bool:
        return self in (PriceStatus.FRESH, PriceStatus.STALE)


@dataclass(frozen=True)
class TrackedCoin:
    coin_id: str
    symbol: str
    name: str


@dataclass(frozen=True)
class Quote:
    """The latest stored market price of a coin, at or before the platform's "now"."""

    coin_id: str
    price: Decimal
    at: datetime


@dataclass(frozen=True)
class Lot:
    """One stored position (a buy): the caller's row of ``portfolios``."""

    id: uuid.UUID
    symbol: str
    quantity: Decimal
    avg_price: Decimal
    entry_date: datetime


@dataclass(frozen=True)
class Pricing:
    """What is known of a coin's price, shared by every lot of that coin."""

    status: PriceStatus
    note: str | None
    coin: TrackedCoin | None = None
    quote: Quote | None = None
    age_hours: float | None = None


@dataclass(frozen=True)
class Amounts:
    """Cost, value and unrealised profit of some quantity; value fields are None when unpriced."""

    quantity: Decimal
    cost_basis: Decimal
    market_value: Decimal | None
    unrealised_pnl: Decimal | None
    unrealised_pnl_pct: Decimal | None
    allocation_pct: Decimal | None = None


@dataclass(frozen=True)
class LotValuation:
    lot: Lot
    pricing: Pricing
    amounts: Amounts


@dataclass(frozen=True)
class HoldingValuation:
    """Every lot of one coin (or of one unresolved symbol) taken together."""

    symbol: str
    pricing: Pricing
    amounts: Amounts
    avg_price: Decimal
    position_ids: list[uuid.UUID]


@dataclass(frozen=True)
class Totals:
    positions: int
    priced_positions: int
    stale_positions: int
    unpriced_positions: int
    cost_basis: Decimal  # of every position
    priced_cost_basis: Decimal  # of the positions that have a market value
    market_value: Decimal  # of the priced positions only
    unrealised_pnl: Decimal  # market_value - priced_cost_basis
    unrealised_pnl_pct: Decimal | None

    @property
    def complete(self) -> bool:
        return self.unpriced_positions == 0


@dataclass(frozen=True)
class PortfolioValuation:
    lots: list[LotValuation]
    holdings: list[HoldingValuation]
    totals: Totals
    as_of: datetime
    max_price_age: timedelta


def price_from_double(value: float) -> Decimal | None:
    """A stored double as the decimal it was written from; None if it cannot be a price."""
    if not math.isfinite(value) or value <= 0:
        return None
    return Decimal(repr(value))


def percent(part: Decimal, whole: Decimal) -> Decimal | None:
    """``part / whole`` in percent, rounded half-even to 4 decimals; None when ``whole`` is zero."""
    if whole == 0:
        return None
    with localcontext(EXACT_CONTEXT):
        return (part * HUNDRED / whole).quantize(PERCENT_QUANTUM)


def pricing_for(
    symbol: str,
    *,
    coins_by_symbol: Mapping[str, Sequence[TrackedCoin]],
    quotes: Mapping[str, Quote],
    now: datetime,
    max_age: timedelta,
) -> Pricing:
    """Resolve a stored symbol to its tracked coin and judge the coin's latest price."""
    candidates = coins_by_symbol.get(symbol.lower(), ())
    if not candidates:
        return Pricing(PriceStatus.COIN_NOT_TRACKED, f"{symbol!r} is not a tracked coin any more: no price to value it")
    if len(candidates) > 1:
        ids = ", ".join(sorted(coin.coin_id for coin in candidates))
        return Pricing(PriceStatus.AMBIGUOUS_SYMBOL, f"{symbol!r} names several tracked coins ({ids}): cannot price it")
    coin = candidates[0]
    quote = quotes.get(coin.coin_id)
    if quote is None:
        return Pricing(PriceStatus.NO_PRICE, f"no market price is stored for {coin.coin_id!r}", coin=coin)
    age = now - quote.at
    age_hours = round(age.total_seconds() / 3600, 2)
    if age > max_age:
        limit_hours = max_age.total_seconds() / 3600
        note = f"the latest price is {age_hours:g} h old (more than {limit_hours:g} h): valued, but stale"
        return Pricing(PriceStatus.STALE, note, coin=coin, quote=quote, age_hours=age_hours)
    return Pricing(PriceStatus.FRESH, None, coin=coin, quote=quote, age_hours=age_hours)


def amounts_for(quantity: Decimal, cost_basis: Decimal, pricing: Pricing) -> Amounts:
    """Market value and unrealised P&L of ``quantity`` bought for ``cost_basis``."""
    if pricing.quote is None or not pricing.status.priced:
        return Amounts(quantity, cost_basis, None, None, None)
    with localcontext(EXACT_CONTEXT):
        market_value = quantity * pricing.quote.price
        pnl = market_value - cost_basis
    return Amounts(quantity, cost_basis, market_value, pnl, percent(pnl, cost_basis))


def cost_basis_of(lot: Lot) -> Decimal:
    with localcontext(EXACT_CONTEXT):
        return lot.quantity * lot.avg_price


def _with_allocation(amounts: Amounts, total_market_value: Decimal) -> Amounts:
    if amounts.market_value is None:
        return amounts
    return replace(amounts, allocation_pct=percent(amounts.market_value, total_market_value))


def value_portfolio(
    lots: Sequence[Lot],
    *,
    coins_by_symbol: Mapping[str, Sequence[TrackedCoin]],
    quotes: Mapping[str, Quote],
    now: datetime,
    max_age: timedelta,
) -> PortfolioValuation:
    """Value every lot, group lots by coin, and total; unpriced lots stay listed with None values."""
    pricing_by_symbol = {
        lot.symbol.lower(): pricing_for(
            lot.symbol, coins_by_symbol=coins_by_symbol, quotes=quotes, now=now, max_age=max_age
        )
        for lot in lots
    }
    valued = []
    for lot in lots:
        pricing = pricing_by_symbol[lot.symbol.lower()]
        valued.append(LotValuation(lot, pricing, amounts_for(lot.quantity, cost_basis_of(lot), pricing)))

    with localcontext(EXACT_CONTEXT):
        cost_basis = sum((v.amounts.cost_basis for v in valued), Decimal(0))
        priced = [v for v in valued if v.amounts.market_value is not None]
        priced_cost_basis = sum((v.amounts.cost_basis for v in priced), Decimal(0))
        market_value = sum((v.amounts.market_value or Decimal(0) for v in priced), Decimal(0))
        pnl = market_value - priced_cost_basis
    totals = Totals(
        positions=len(valued),
        priced_positions=len(priced),
        stale_positions=sum(1 for v in valued if v.pricing.status is PriceStatus.STALE),
        unpriced_positions=len(valued) - len(priced),
        cost_basis=cost_basis,
        priced_cost_basis=priced_cost_basis,
        market_value=market_value,
        unrealised_pnl=pnl,
        unrealised_pnl_pct=percent(pnl, priced_cost_basis),
    )

    valued = [replace(v, amounts=_with_allocation(v.amounts, market_value)) for v in valued]
    holdings = [
        replace(holding, amounts=_with_allocation(holding.amounts, market_value)) for holding in _holdings(valued)
    ]
    # Largest holdings first; unpriced ones last (they have no value to rank by).
    holdings.sort(key=lambda h: (h.amounts.market_value is None, -(h.amounts.market_value or 0), h.symbol))
    return PortfolioValuation(lots=valued, holdings=holdings, totals=totals, as_of=now, max_price_age=max_age)


def _holdings(valued: Sequence[LotValuation]) -> list[HoldingValuation]:
    groups: dict[str, list[LotValuation]] = {}
    for item in valued:
        key = item.pricing.coin.coin_id if item.pricing.coin else f"symbol:{item.lot.symbol.lower()}"
        groups.setdefault(key, []).append(item)
    holdings = []
    for items in groups.values():
        pricing = items[0].pricing
        with localcontext(EXACT_CONTEXT):
            quantity = sum((i.lot.quantity for i in items), Decimal(0))
            cost_basis = sum((i.amounts.cost_basis for i in items), Decimal(0))
            avg_price = (cost_basis / quantity).quantize(AVG_PRICE_QUANTUM)
        holdings.append(
            HoldingValuation(
                symbol=pricing.coin.symbol if pricing.coin else items[0].lot.symbol,
                pricing=pricing,
                amounts=amounts_for(quantity, cost_basis, pricing),
                avg_price=avg_price,
                position_ids=[i.lot.id for i in items],
            )
        )
    return holdings
