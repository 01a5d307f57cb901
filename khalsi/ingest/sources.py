"""Which sources the platform reads, chosen by settings, and the clock they agree on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from khalsi.ingest.market import MarketSource, ReplayMarketSource
from khalsi.settings import MarketSource as MarketSourceName
from khalsi.settings import Settings
from khalsi.sources.exports import bundled_export_paths
from khalsi.sources.replay import ReplayClock


@lru_cache(maxsize=1)
def bundled_history_end() -> datetime:
    """The day after the newest bundled snapshot: the replay's default "now"."""
    newest = max(path.read_text(encoding="utf-8").rstrip().rsplit("\n", 1)[-1][:10] for path in bundled_export_paths())
    return datetime.fromisoformat(newest).replace(tzinfo=UTC) + timedelta(days=1)


@lru_cache(maxsize=8)
def _replay_clock(start: str, speed: float) -> ReplayClock:
    # One clock per process and configuration, so every part of the platform agrees on "now".
    return ReplayClock(start or bundled_history_end(), speed)


def source_clock(settings: Settings) -> Callable[[], datetime]:
    """ "Now" for the configured source.

    CoinGecko: the wall clock. Replay: ``KHALSI_REPLAY_START`` (default: the end of the bundled
    history) moving forward at ``KHALSI_REPLAY_SPEED`` simulated seconds per wall second from the
    first use in this process (0 = frozen), so the real-time parts have something to react to offline.
    """
    if settings.market_source is MarketSourceName.COINGECKO:
        return lambda: datetime.now(UTC)
    return _replay_clock(settings.replay_start, settings.replay_speed).now


def market_source_from_settings(settings: Settings) -> MarketSource:
    """The market source ``KHALSI_MARKET_SOURCE`` names."""
    if settings.market_source is MarketSourceName.REPLAY:
        return ReplayMarketSource(now=source_clock(settings))
    from khalsi.ingest.coingecko_source import CoinGeckoMarketSource

    return CoinGeckoMarketSource(settings)
