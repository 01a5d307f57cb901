"""``khalsi import``: load CoinGecko "Export Data" and Fear & Greed CSVs through the same gate."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from khalsi.ingest import social, store
from khalsi.ingest.market import FetchedHistory
from khalsi.ingest.pipeline import BatchOutcome, load_market_batch, run_gate
from khalsi.ingest.sources import source_clock
from khalsi.settings import Settings
from khalsi.sources.exports import (
    CsvKind,
    UnrecognisedFileError,
    coin_for_export,
    detect_csv_kind,
    read_coingecko_export,
    read_fear_greed_csv,
)
from khalsi.sources.social import fear_greed_daily

FLOW_NAME = "import"


def plan_import(paths: list[Path], *, coin_id: str | None = None) -> list[tuple[Path, CsvKind]]:
    """Recognise and parse every file before touching anything: one bad file refuses the whole import."""
    if coin_id is not None and len(paths) != 1:
        raise UnrecognisedFileError("--coin names the coin of a single file; give one path with it")
    planned = []
    for path in paths:
        if not path.is_file():
            raise UnrecognisedFileError(f"{path}: no such file")
        kind = detect_csv_kind(path)
        # Parsed now, not when its turn comes: a malformed value in the last file must not leave
        # the files before it imported.
        if kind is CsvKind.COINGECKO_EXPORT:
            read_coingecko_export(path, coin_for_export(path, coin_id))  # also fails if the coin cannot be told
        else:
            read_fear_greed_csv(path)
        planned.append((path, kind))
    return planned


def import_files(
    engine: Engine, settings: Settings, paths: list[Path], *, coin_id: str | None = None
) -> list[BatchOutcome]:
    """Import the files; each is validated and stored, or quarantined, on its own run."""
    planned = plan_import(paths, coin_id=coin_id)
    now = source_clock(settings)()
    outcomes: list[BatchOutcome] = []
    fear_greed_loaded = False
    for path, kind in planned:
        if kind is CsvKind.COINGECKO_EXPORT:
            coin = coin_for_export(path, coin_id)
            store.ensure_coins(engine, [coin])
            fetched = FetchedHistory(
                coin=coin, rows=read_coingecko_export(path, coin), raw=path.read_bytes(), raw_suffix="csv"
            )
            outcomes.append(
                load_market_batch(
                    engine, settings, fetched=fetched, source_name=f"import:{path.name}", now=now, flow_name=FLOW_NAME
                )
            )
        else:
            frame = fear_greed_daily(read_fear_greed_csv(path).lazy()).collect()
            batch = social.fear_greed_batch(engine, settings, f"import:{path.name}", frame)
            outcomes.append(run_gate(engine, settings, batch, flow_name=FLOW_NAME))
            fear_greed_loaded = True
    if fear_greed_loaded:
        # The market-wide daily rows carry the index: recompute them with what was just stored.
        outcomes.append(run_gate(engine, settings, social.social_daily_batch(engine, settings), flow_name=FLOW_NAME))
    return outcomes
