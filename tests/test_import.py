"""``khalsi import``: files recognised by header, held to the same gate, refused whole when any is bad."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from khalsi import cli, lake
from khalsi.db.engine import create_sync_engine
from khalsi.db.migrate import upgrade
from khalsi.db.models import FearGreed, IngestionRun, MarketData, SocialDaily
from khalsi.ingest.importer import import_files
from khalsi.settings import Settings, get_settings
from khalsi.sources.exports import BUNDLED_SOCIAL_DIR, UnrecognisedFileError
from tests.factories import (
    bundled_csv_rows,
    bundled_path,
    bundled_raw,
    classify,
    count_rows,
    isolated_khalsi_env,
    table_rows,
    write_export,
    write_fear_greed_csv,
)

runner = CliRunner()


@pytest.fixture
def cli_home(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The CLI reads settings from the environment and exports Prefect's variables: undo both after."""
    saved = dict(os.environ)
    monkeypatch.chdir(tmp_path)
    isolated_khalsi_env(monkeypatch, HOME=str(home), ENVIRONMENT="test")
    # Rich wraps at 80 columns when not on a terminal; a long path must stay on one line.
    monkeypatch.setattr(cli.console, "width", 400)
    yield home
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


@pytest.fixture
def cli_engine(cli_home: Path) -> Iterator[Engine]:
    engine = create_sync_engine(get_settings())
    upgrade(engine)
    yield engine
    engine.dispose()


def renamed_export(tmp_path: Path, coin_id: str = "sui") -> Path:
    """A bundled export under a name that does not tell the coin (as a download often is)."""
    target = tmp_path / "downloads" / "export (3).csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundled_path(coin_id), target)
    return target


def small_fear_greed(tmp_path: Path) -> Path:
    days = [date(2024, 3, 1) + timedelta(days=offset) for offset in range(10)]
    values = [20, 25, 40, 50, 55, 60, 70, 75, 80, 90]
    return write_fear_greed_csv(tmp_path / "fng.csv", [(d, v, classify(v)) for d, v in zip(days, values, strict=True)])


def test_cli_imports_an_export_and_a_fear_greed_csv(cli_home: Path, cli_engine: Engine, tmp_path: Path) -> None:
    export = renamed_export(tmp_path)
    result = runner.invoke(cli.app, ["import", str(export), "--coin", "sui"])
    assert result.exit_code == 0, result.output
    assert "market_daily/sui" in result.output
    assert "succeeded" in result.output
    rows = len(bundled_csv_rows("sui"))
    assert count_rows(cli_engine, MarketData, MarketData.coin_id == "sui") == rows

    fear_greed = BUNDLED_SOCIAL_DIR / "fear_greed_index.csv"
    result = runner.invoke(cli.app, ["import", str(fear_greed)])
    assert result.exit_code == 0, result.output
    assert "fear_greed/fear-greed" in result.output
    assert "social_daily/social-daily" in result.output  # rebuilt with the index (no posts yet: no rows)
    days = len({row["timestamp"] for row in csv_rows(fear_greed)})
    assert count_rows(cli_engine, FearGreed) == days
    settings = get_settings()
    assert lake.scan_fear_greed(settings.lake_dir).collect().height == days
    assert lake.scan_market(settings.lake_dir).collect().height == rows


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_reimport_stores_nothing_twice(cli_home: Path, cli_engine: Engine, tmp_path: Path) -> None:
    settings = get_settings()
    files = [bundled_path("aptos"), small_fear_greed(tmp_path)]
    first = import_files(cli_engine, settings, files)
    # Market, Fear & Greed, then the daily aggregates (none without posts: a day needs posts).
    assert [o.status for o in first] == ["succeeded", "succeeded", "up-to-date"]
    assert first[0].rows_rejected == 1  # APT's partial listing day, refused as in ingestion
    stored = {model: table_rows(cli_engine, model) for model in (MarketData, FearGreed, SocialDaily)}

    again = import_files(cli_engine, settings, files)
    assert [o.rows_stored for o in again] == [0, 0, 0]
    assert {model: table_rows(cli_engine, model) for model in stored} == stored


def unknown_header(tmp_path: Path) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text("date,open,high,low,close\n2024-01-01,1,2,0.5,1.5\n", encoding="utf-8")
    return path


def not_a_csv(tmp_path: Path) -> Path:
    path = tmp_path / "chart.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd")
    return path


def malformed_numbers(tmp_path: Path) -> Path:
    path = tmp_path / "btc-usd-max.csv"
    rows = bundled_raw("bitcoin").tail(3)
    write_export(path, rows)
    text = path.read_text(encoding="utf-8").splitlines()
    text[2] = text[2].replace(",", ",12,34x,", 1).rsplit(",", 1)[0]  # "12,34x" is no number
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def malformed_fear_greed_day(tmp_path: Path) -> Path:
    return write_fear_greed_csv(tmp_path / "fng-bad.csv", [(date(2024, 1, 1), "fifty", "Neutral")])


BAD_FILES: dict[str, tuple[Callable[[Path], Path], bool]] = {
    # name: (builder, whether the message lists the accepted formats)
    "unknown header": (unknown_header, True),
    "not a csv": (not_a_csv, True),
    "malformed numbers": (malformed_numbers, False),
    "malformed fear & greed value": (malformed_fear_greed_day, False),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_refuses_the_whole_import(case: str, cli_home: Path, cli_engine: Engine, tmp_path: Path) -> None:
    build, lists_formats = BAD_FILES[case]
    bad = build(tmp_path)
    good = [bundled_path("sui"), small_fear_greed(tmp_path)]  # recognised, and listed first

    result = runner.invoke(cli.app, ["import", *map(str, good), str(bad)])
    assert result.exit_code == 2, result.output
    assert "refused:" in result.output
    assert str(bad) in result.output
    if lists_formats:
        assert "snapped_at,price,market_cap,total_volume" in result.output
        assert "value,value_classification,timestamp" in result.output
    # Nothing was imported, not even the good files, and no run was started.
    for model in (MarketData, FearGreed, SocialDaily, IngestionRun):
        assert count_rows(cli_engine, model) == 0, model.__tablename__


def test_an_export_whose_coin_cannot_be_told_is_refused(cli_home: Path, cli_engine: Engine, tmp_path: Path) -> None:
    settings: Settings = get_settings()
    export = renamed_export(tmp_path)
    with pytest.raises(UnrecognisedFileError, match=r"cannot tell the coin from the file name.*--coin"):
        import_files(cli_engine, settings, [export])
    with pytest.raises(UnrecognisedFileError, match="--coin names the coin of a single file"):
        import_files(cli_engine, settings, [export, bundled_path("aptos")], coin_id="sui")
    with cli_engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(MarketData)).scalar_one() == 0
