"""Domain errors of market data; the router turns them into HTTP answers."""

from __future__ import annotations


class MarketError(Exception):
    """Base of the market errors."""


class CoinNotFoundError(MarketError):
    def __init__(self, coin: str) -> None:
        super().__init__(
            f"unknown coin {coin!r}: not a tracked CoinGecko id or symbol (GET /api/v1/market/coins lists them)"
        )


class AmbiguousSymbolError(MarketError):
    def __init__(self, symbol: str, coin_ids: list[str]) -> None:
        super().__init__(
            f"the symbol {symbol!r} belongs to several tracked coins ({', '.join(coin_ids)}): ask by CoinGecko id"
        )
