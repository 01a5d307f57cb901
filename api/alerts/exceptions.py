"""Domain errors of alerts; the router turns them into HTTP answers."""

from __future__ import annotations


class AlertError(Exception):
    """Base of the alert errors."""


class UnknownSymbolError(AlertError):
    def __init__(self, symbol: str) -> None:
        super().__init__(f"no tracked coin has the symbol {symbol.upper()!r}")
        self.symbol = symbol


class AlertLimitReachedError(AlertError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"an account can hold at most {limit} alerts; delete one first")
        self.limit = limit
