"""Which sources the platform reads, chosen by settings, and the clock they agree on."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from khalsi.ingest.market import MarketSource, ReplayMarketSource
from khalsi.settings import MarketSource as MarketSourceName
from khalsi.settings import Settings
from khalsi.sources.exports import bundled_export_paths

_PROCESS_START = time.monotonic()


@lru_cache(maxsize=1)
def bundled_history_end() -> datetime:
    """The day after the newest bundled snapshot: the replay's default "now"."""
    newest = max(path.read_text(encoding="utf-8").rstrip().rsplit("\n", 1)[-1][:10] for path in bundled_export_paths())
    return datetime.fromisoformat(newest).replace(tzinfo=UTC) + timedelta(days=1)


def source_clock(settings: Settings) -> Callable[[], datetime]:
    """"Now" for the configured source.

    CoinGecko: the wall clock. Replay: ``KHALSI_REPLAY_START`` (default: the end of the bundled
    history) moving forward at ``KHALSI_REPLAY_SPEED`` simulated seconds per wall second since the
    process started (0 = frozen), so the real-time parts have something to react to offline.
    """
    if settings.market_source is MarketSourceName.COINGECKO:
        return lambda: datetime.now(UTC)
    start = (
        datetime.fromisoformat(settings.replay_start).replace(tzinfo=UTC)
        if settings.replay_start
        else bundled_history_end()
    )
    speed = settings.replay_speed
    return lambda: start + timedelta(seconds=(time.monotonic() - _PROCESS_START) * speed)


def market_source_from_settings(settings: Settings) -> MarketSource:
    """The market source ``KHALSI_MARKET_SOURCE`` names."""
    if settings.market_source is MarketSourceName.REPLAY:
        return ReplayMarketSource(now=source_clock(settings))
    from khalsi.ingest.coingecko_source import CoinGeckoMarketSource

    return CoinGeckoMarketSource(settings)
