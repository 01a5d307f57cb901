"""CoinGecko itself as a market source: the same interface as the bundled replay."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

import polars as pl

from khalsi.ingest.market import FetchedHistory
from khalsi.settings import Settings
from khalsi.sources.coingecko import CoinGeckoClient, CoinGeckoError, market_chart_to_frame
from khalsi.sources.exports import BUNDLED_COINS, COINS_BY_ID, CoinInfo


class CoinGeckoMarketSource:
    """Daily history from ``/coins/{id}/market_chart?interval=daily``, resumed from the last stored day."""

    name = "coingecko"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def coins(self) -> list[CoinInfo]:
        """The configured coins (``KHALSI_COINS``), or the bundled set when none are named."""
        if not self._settings.coins:
            return list(BUNDLED_COINS.values())
        return [COINS_BY_ID.get(coin_id) or CoinInfo(coin_id, coin_id, coin_id) for coin_id in self._settings.coins]

    async def daily_history(self, coin: CoinInfo, *, since: datetime | None) -> FetchedHistory:
        # `days` covers everything after `since` (plus the day itself, which the store skips);
        # asking for more than 90 days keeps CoinGecko's answer on the daily grid on every plan.
        days: int | Literal["max"] = "max"
        if since is not None:
            days = max(91, math.ceil((datetime.now(UTC) - since).total_seconds() / 86_400) + 1)
        try:
            async with CoinGeckoClient.from_settings(self._settings) as client:
                chart = await client.market_chart(coin.coin_id, days=days, interval="daily")
                raw = client.last_raw.body if client.last_raw is not None else b""
        except CoinGeckoError as error:
            # Name the coin: a run over many coins must say which one failed, not only "500".
            raise type(error)(
                f"{coin.coin_id}: {error.message}",
                status_code=error.status_code,
                error_code=error.error_code,
                url=error.url,
                retry_after=error.retry_after,
            ) from error
        rows = market_chart_to_frame(chart, coin)
        if since is not None:
            rows = rows.filter(pl.col("timestamp") > since)
        return FetchedHistory(coin=coin, rows=rows, raw=raw, raw_suffix="json")
