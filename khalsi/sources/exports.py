"""Readers for the CSV formats Khalsi accepts, and the bundled real data that uses them.

- CoinGecko "Export Data": ``snapped_at,price,market_cap,total_volume`` (coin from the file name);
- alternative.me Fear & Greed: ``value,value_classification,timestamp[,time_until_update]``.

Parsing here is strict about shape (a clear error naming the file) and neutral about content:
deciding which rows are acceptable is validation's job (``khalsi.validation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import polars as pl

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
BUNDLED_DAILY_DIR = BUNDLED_DIR / "coingecko" / "daily"
BUNDLED_API_DIR = BUNDLED_DIR / "coingecko" / "api"
BUNDLED_SOCIAL_DIR = BUNDLED_DIR / "social"


@dataclass(frozen=True)
class CoinInfo:
    coin_id: str
    symbol: str
    name: str


# The bundled coins: file stem (the export's symbol) -> CoinGecko id and display name.
BUNDLED_COINS: dict[str, CoinInfo] = {
    info.symbol: info
    for info in (
        CoinInfo("bitcoin", "btc", "Bitcoin"),
        CoinInfo("ethereum", "eth", "Ethereum"),
        CoinInfo("binancecoin", "bnb", "BNB"),
        CoinInfo("solana", "sol", "Solana"),
        CoinInfo("ripple", "xrp", "XRP"),
        CoinInfo("cardano", "ada", "Cardano"),
        CoinInfo("dogecoin", "doge", "Dogecoin"),
        CoinInfo("shiba-inu", "shib", "Shiba Inu"),
        CoinInfo("sui", "sui", "Sui"),
        CoinInfo("aptos", "apt", "Aptos"),
        CoinInfo("worldcoin-wld", "wld", "Worldcoin"),
        CoinInfo("litecoin", "ltc", "Litecoin"),
        CoinInfo("chainlink", "link", "Chainlink"),
        CoinInfo("tron", "trx", "TRON"),
        CoinInfo("bitcoin-cash", "bch", "Bitcoin Cash"),
        CoinInfo("ethereum-classic", "etc", "Ethereum Classic"),
        CoinInfo("eos", "eos", "EOS"),
    )
}
COINS_BY_ID: dict[str, CoinInfo] = {info.coin_id: info for info in BUNDLED_COINS.values()}

COINGECKO_EXPORT_COLUMNS = ("snapped_at", "price", "market_cap", "total_volume")
FEAR_GREED_COLUMNS = ("value", "value_classification", "timestamp")


class CsvKind(StrEnum):
    COINGECKO_EXPORT = "coingecko-export"
    FEAR_GREED = "fear-greed"


ACCEPTED_FORMATS = (
    "CoinGecko 'Export Data' CSV (header: snapped_at,price,market_cap,total_volume) or "
    "alternative.me Fear & Greed CSV (header: value,value_classification,timestamp[,time_until_update])"
)


class UnrecognisedFileError(ValueError):
    """A file that is none of the accepted formats, or is malformed."""


def detect_csv_kind(path: Path) -> CsvKind:
    """Recognise a CSV by its header line."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            header = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UnrecognisedFileError(
            f"{path}: cannot be read as text ({error}); accepted: {ACCEPTED_FORMATS}"
        ) from error
    columns = tuple(part.strip().lower() for part in header.split(","))
    if columns == COINGECKO_EXPORT_COLUMNS:
        return CsvKind.COINGECKO_EXPORT
    if columns[:3] == FEAR_GREED_COLUMNS and set(columns[3:]) <= {"time_until_update"}:
        return CsvKind.FEAR_GREED
    raise UnrecognisedFileError(f"{path}: header {header!r} is not a known format; accepted: {ACCEPTED_FORMATS}")


def coin_for_export(path: Path, coin_id: str | None = None) -> CoinInfo:
    """The coin an export belongs to: the given id, or the file name (``btc-usd-max.csv``)."""
    if coin_id is not None:
        known = COINS_BY_ID.get(coin_id)
        return known or CoinInfo(coin_id, path.name.split("-")[0].lower(), coin_id)
    stem = path.name.split("-")[0].lower()
    if stem in BUNDLED_COINS:
        return BUNDLED_COINS[stem]
    if stem in COINS_BY_ID:
        return COINS_BY_ID[stem]
    raise UnrecognisedFileError(
        f"{path}: cannot tell the coin from the file name; name it <symbol>-usd-max.csv "
        f"(one of {', '.join(sorted(BUNDLED_COINS))}) or pass --coin <coingecko-id>"
    )


def read_coingecko_export(path: Path, coin: CoinInfo) -> pl.DataFrame:
    """A CoinGecko export as raw rows: ``coin_id, symbol, timestamp, price, market_cap, total_volume``.

    Values are kept as given (zeros included); an unparsable value is a clear error.
    """
    if detect_csv_kind(path) is not CsvKind.COINGECKO_EXPORT:
        raise UnrecognisedFileError(f"{path}: not a CoinGecko export; accepted: {ACCEPTED_FORMATS}")
    try:
        raw = pl.read_csv(
            path,
            schema={
                "snapped_at": pl.String(),
                "price": pl.Float64(),
                "market_cap": pl.Float64(),
                "total_volume": pl.Float64(),
            },
        )
        timestamps = raw.get_column("snapped_at").str.strptime(
            pl.Datetime("us", "UTC"), "%Y-%m-%d %H:%M:%S UTC", strict=True
        )
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError) as error:
        raise UnrecognisedFileError(
            f"{path}: malformed CoinGecko export ({error}); accepted: {ACCEPTED_FORMATS}"
        ) from error
    return raw.select(
        pl.lit(coin.coin_id).alias("coin_id"),
        pl.lit(coin.symbol).alias("symbol"),
        timestamps.alias("timestamp"),
        pl.col("price"),
        pl.col("market_cap"),
        pl.col("total_volume"),
    )


def read_fear_greed_csv(path: Path) -> pl.DataFrame:
    """An alternative.me Fear & Greed CSV as ``day, value, classification``."""
    if detect_csv_kind(path) is not CsvKind.FEAR_GREED:
        raise UnrecognisedFileError(f"{path}: not a Fear & Greed CSV; accepted: {ACCEPTED_FORMATS}")
    try:
        raw = pl.read_csv(path, schema_overrides={"value": pl.Int64(), "timestamp": pl.String()})
        days = raw.get_column("timestamp").str.strptime(pl.Date(), "%Y-%m-%d", strict=True)
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError) as error:
        raise UnrecognisedFileError(
            f"{path}: malformed Fear & Greed CSV ({error}); accepted: {ACCEPTED_FORMATS}"
        ) from error
    return raw.select(days.alias("day"), pl.col("value"), pl.col("value_classification").alias("classification"))


def bundled_export_paths() -> list[Path]:
    """The bundled CoinGecko exports, one per coin."""
    return sorted(BUNDLED_DAILY_DIR.glob("*-usd-max.csv"))
