"""Domain errors of portfolios; the router turns them into HTTP answers (422 with the field, 409)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

# The 422 message names the tracked symbols; past this many it says how many more there are.
MAX_SYMBOLS_NAMED = 100


class PortfolioError(Exception):
    """Base of the portfolio errors."""


class InvalidPositionFieldError(PortfolioError):
    """A request field that is well-formed but refused by what is stored (coin, date)."""

    def __init__(self, field: str, value: object, message: str, kind: str) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.kind = kind


class UnknownCoinError(InvalidPositionFieldError):
    def __init__(self, field: str, value: str, tracked_symbols: Sequence[str]) -> None:
        named = list(tracked_symbols[:MAX_SYMBOLS_NAMED])
        more = len(tracked_symbols) - len(named)
        listing = ", ".join(named) + (f" and {more} more" if more > 0 else "") if named else "none yet"
        super().__init__(field, value, f"{value!r} is not a tracked coin; tracked symbols: {listing}", "unknown_coin")
        self.tracked_symbols = list(tracked_symbols)


class AmbiguousSymbolError(InvalidPositionFieldError):
    """Positions are stored by symbol (the seed's schema), so a symbol two tracked coins share is refused."""

    def __init__(self, field: str, value: str, symbol: str, coin_ids: Sequence[str]) -> None:
        ids = ", ".join(coin_ids)
        super().__init__(
            field,
            value,
            f"the symbol {symbol!r} is shared by several tracked coins ({ids}); positions are kept by symbol, "
            "so this coin cannot be held until they are told apart",
            "ambiguous_symbol",
        )
        self.coin_ids = list(coin_ids)


class EntryDateInFutureError(InvalidPositionFieldError):
    def __init__(self, entry_date: datetime, now: datetime) -> None:
        super().__init__(
            "entry_date",
            entry_date.isoformat(),
            f"entry_date {entry_date.isoformat()} is after the platform's current time {now.isoformat()}",
            "entry_date_in_future",
        )


class PositionLimitReachedError(PortfolioError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"a portfolio holds at most {limit} positions: delete or edit one first")
        self.limit = limit
