"""The online feature store: each coin's latest feature vector, written after ingest, read by serving.

The pipeline calls :func:`publish_latest_features` after each ingest. It computes
``features.latest_feature_vectors`` from the Parquet lake (the same code that builds training rows,
so serving sees exactly the training row of that coin and day) and writes it:

- to Redis when ``settings.redis.url`` is set: one hash per coin (``khalsi:online:coin:<coin_id>``
  with ``symbol``, ``timestamp``, ``price`` and ``features`` as a JSON list, null where missing), a
  meta hash (feature names, coins, digest, publication time), a version counter
  (``khalsi:online:version``) bumped in the same MULTI/EXEC transaction, and a message on
  ``khalsi:online:updates`` carrying the new version;
- else to ``KHALSI_HOME/online/features.json``, replaced atomically (temporary file, then rename).

Publishing the same vectors again keeps the version (a content digest is compared), so readers only
reload when something changed. Readers poll :meth:`OnlineFeatureStore.version` (one Redis GET or one
``stat``) and call :meth:`OnlineFeatureStore.read` only when it moved; the service keeps the result
in memory as a numpy matrix (:class:`FeatureSnapshot`), so no request touches the store.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from khalsi.settings import Settings

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

REDIS_PREFIX = "khalsi:online:"
VERSION_KEY = f"{REDIS_PREFIX}version"
META_KEY = f"{REDIS_PREFIX}meta"
COIN_KEY_PREFIX = f"{REDIS_PREFIX}coin:"
UPDATES_CHANNEL = f"{REDIS_PREFIX}updates"
ONLINE_DIR = "online"
ONLINE_FILE = "features.json"


class FeatureStoreError(RuntimeError):
    """The online store holds something unreadable (a partial write, a foreign format)."""


@dataclass(frozen=True)
class FeatureRow:
    """One coin's latest vector as stored: the key columns and the feature values (None = missing)."""

    coin_id: str
    symbol: str
    timestamp: datetime
    price: float
    values: tuple[float | None, ...]


@dataclass(frozen=True, eq=False)
class FeatureSnapshot:
    """Every coin's latest feature vector as one float64 matrix (NaN = missing), for the hot path."""

    version: int
    published_at: datetime
    digest: str
    feature_names: tuple[str, ...]
    coin_ids: tuple[str, ...]
    symbols: tuple[str, ...]
    timestamps: tuple[datetime, ...]
    prices: FloatArray
    matrix: FloatArray
    rows_by_coin: dict[str, int] = field(repr=False)
    rows_by_symbol: dict[str, int] = field(repr=False)
    _columns: dict[tuple[str, ...], IndexArray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(
        cls,
        rows: list[FeatureRow],
        *,
        feature_names: tuple[str, ...],
        version: int,
        published_at: datetime,
        digest: str,
    ) -> FeatureSnapshot:
        """Build the in-memory matrix from stored rows (sorted by coin id)."""
        ordered = sorted(rows, key=lambda row: row.coin_id)
        matrix = np.full((len(ordered), len(feature_names)), np.nan, dtype=np.float64)
        for i, row in enumerate(ordered):
            if len(row.values) != len(feature_names):
                raise FeatureStoreError(
                    f"{row.coin_id}: {len(row.values)} feature values for {len(feature_names)} feature names"
                )
            matrix[i] = [np.nan if value is None else value for value in row.values]
        symbols = tuple(row.symbol for row in ordered)
        # A symbol is accepted as a coin key only where it is unique: symbols are not (CoinGecko).
        symbol_counts: dict[str, int] = {}
        for symbol in symbols:
            symbol_counts[symbol.lower()] = symbol_counts.get(symbol.lower(), 0) + 1
        return cls(
            version=version,
            published_at=published_at,
            digest=digest,
            feature_names=feature_names,
            coin_ids=tuple(row.coin_id for row in ordered),
            symbols=symbols,
            timestamps=tuple(row.timestamp for row in ordered),
            prices=np.array([row.price for row in ordered], dtype=np.float64),
            matrix=np.ascontiguousarray(matrix),
            rows_by_coin={row.coin_id: i for i, row in enumerate(ordered)},
            rows_by_symbol={s.lower(): i for i, s in enumerate(symbols) if symbol_counts[s.lower()] == 1},
        )

    def row_of(self, coin: str) -> int | None:
        """The matrix row of a CoinGecko id (exact) or a unique symbol (any case), or None."""
        row = self.rows_by_coin.get(coin)
        if row is None:
            row = self.rows_by_symbol.get(coin.lower())
        return row

    def columns_for(self, names: tuple[str, ...]) -> IndexArray:
        """Matrix columns in the order a model expects; raises KeyError naming missing features."""
        cached = self._columns.get(names)
        if cached is not None:
            return cached
        position = {name: i for i, name in enumerate(self.feature_names)}
        missing = [name for name in names if name not in position]
        if missing:
            raise KeyError(f"the online store lacks features the model needs: {', '.join(missing)}")
        columns = np.array([position[name] for name in names], dtype=np.intp)
        self._columns[names] = columns
        return columns


def rows_from_frame(frame: pl.DataFrame, feature_names: list[str]) -> list[FeatureRow]:
    """Feature rows from a ``latest_feature_vectors`` frame."""
    rows: list[FeatureRow] = []
    for record in frame.select("coin_id", "symbol", "timestamp", "price", *feature_names).iter_rows():
        coin_id, symbol, timestamp, price, *values = record
        rows.append(
            FeatureRow(
                coin_id=str(coin_id),
                symbol=str(symbol),
                timestamp=timestamp,
                price=float(price),
                values=tuple(None if v is None or not math.isfinite(v) else float(v) for v in values),
            )
        )
    return rows


def content_digest(rows: list[FeatureRow], feature_names: tuple[str, ...]) -> str:
    """A digest of the vectors (not of when they were published), to skip no-op publications."""
    payload = json.dumps(
        {
            "features": list(feature_names),
            "rows": [
                [r.coin_id, r.symbol, r.timestamp.isoformat(), repr(r.price), [repr(v) for v in r.values]]
                for r in sorted(rows, key=lambda row: row.coin_id)
            ],
        },
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _row_payload(row: FeatureRow) -> dict[str, str]:
    # json.dumps writes floats with repr, which round-trips every float64 exactly.
    return {
        "symbol": row.symbol,
        "timestamp": row.timestamp.isoformat(),
        "price": repr(row.price),
        "features": json.dumps(list(row.values)),
    }


def _row_from_payload(coin_id: str, payload: dict[str, str]) -> FeatureRow:
    try:
        timestamp = datetime.fromisoformat(payload["timestamp"])
        values = json.loads(payload["features"])
        return FeatureRow(
            coin_id=coin_id,
            symbol=payload["symbol"],
            timestamp=timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC),
            price=float(payload["price"]),
            values=tuple(None if v is None else float(v) for v in values),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise FeatureStoreError(f"unreadable stored vector for {coin_id!r}: {error}") from error


@dataclass(frozen=True)
class PublishResult:
    """What a publication did."""

    backend: str
    version: int
    changed: bool
    coins: int
    newest_timestamp: datetime | None


class OnlineFeatureStore(Protocol):
    """Where the latest vectors live between the pipeline and the service."""

    backend: str

    def version(self) -> int:
        """The current version (0 before the first publication); cheap enough to poll."""
        ...

    def read(self) -> FeatureSnapshot | None:
        """The current snapshot, or None before the first publication."""
        ...

    def write(self, rows: list[FeatureRow], *, feature_names: tuple[str, ...], published_at: datetime) -> PublishResult:
        """Replace the stored vectors (keeping the version when nothing changed)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class RedisFeatureStore:
    """Vectors in Redis: a hash per coin, a meta hash and a version counter, written in one transaction."""

    backend = "redis"

    def __init__(self, url: str, *, password: str | None = None) -> None:
        import redis

        self._client: Any = redis.Redis.from_url(url, password=password, decode_responses=True)

    def version(self) -> int:
        """The stored version counter."""
        value = self._client.get(VERSION_KEY)
        return int(value) if value is not None else 0

    def read(self) -> FeatureSnapshot | None:
        """The vectors, read consistently: retried if a publication lands between the two reads."""
        for _ in range(5):
            meta: dict[str, str] = self._client.hgetall(META_KEY)
            if not meta:
                return None
            coins: list[str] = json.loads(meta["coins"])
            pipe = self._client.pipeline(transaction=True)
            pipe.get(VERSION_KEY)
            for coin_id in coins:
                pipe.hgetall(COIN_KEY_PREFIX + coin_id)
            version_now, *payloads = pipe.execute()
            if str(version_now) != meta["version"]:
                continue
            return FeatureSnapshot.from_rows(
                [_row_from_payload(coin_id, payload) for coin_id, payload in zip(coins, payloads, strict=True)],
                feature_names=tuple(json.loads(meta["feature_names"])),
                version=int(meta["version"]),
                published_at=datetime.fromisoformat(meta["published_at"]),
                digest=meta["digest"],
            )
        raise FeatureStoreError("the online store kept changing while being read")

    def write(self, rows: list[FeatureRow], *, feature_names: tuple[str, ...], published_at: datetime) -> PublishResult:
        """Write every coin hash, the meta hash and the bumped version atomically (WATCH/MULTI/EXEC)."""
        digest = content_digest(rows, feature_names)
        outcome: dict[str, Any] = {}

        def transaction(pipe: Any) -> None:
            current = int(pipe.get(VERSION_KEY) or 0)
            meta: dict[str, str] = pipe.hgetall(META_KEY)
            if meta.get("digest") == digest:
                outcome.update(version=current, changed=False)
                pipe.multi()
                return
            old_coins = set(json.loads(meta["coins"])) if meta else set()
            new_version = current + 1
            pipe.multi()
            for gone in old_coins - {row.coin_id for row in rows}:
                pipe.delete(COIN_KEY_PREFIX + gone)
            for row in rows:
                key = COIN_KEY_PREFIX + row.coin_id
                pipe.delete(key)
                pipe.hset(key, mapping=_row_payload(row))
            pipe.hset(
                META_KEY,
                mapping={
                    "version": str(new_version),
                    "feature_names": json.dumps(list(feature_names)),
                    "coins": json.dumps(sorted(row.coin_id for row in rows)),
                    "published_at": published_at.isoformat(),
                    "digest": digest,
                },
            )
            pipe.set(VERSION_KEY, new_version)
            pipe.publish(UPDATES_CHANNEL, str(new_version))
            outcome.update(version=new_version, changed=True)

        self._client.transaction(transaction, VERSION_KEY, META_KEY)
        return PublishResult(
            backend=self.backend,
            version=int(outcome["version"]),
            changed=bool(outcome["changed"]),
            coins=len(rows),
            newest_timestamp=max((row.timestamp for row in rows), default=None),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class FileFeatureStore:
    """Vectors in one JSON file under ``KHALSI_HOME/online/``, replaced atomically."""

    backend = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stat_key: tuple[int, int, int] | None = None
        self._stat_version = 0

    def _load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            document: dict[str, Any] = json.loads(raw)
        except json.JSONDecodeError as error:
            raise FeatureStoreError(f"{self.path} is not valid JSON: {error}") from error
        return document

    def version(self) -> int:
        """The file's version, re-read only when its inode, size or mtime changed."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return 0
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key != self._stat_key:
            document = self._load()
            self._stat_version = int(document["version"]) if document else 0
            self._stat_key = key
        return self._stat_version

    def read(self) -> FeatureSnapshot | None:
        """The stored vectors, or None before the first publication."""
        document = self._load()
        if document is None:
            return None
        try:
            rows = [_row_from_payload(coin_id, payload) for coin_id, payload in document["coins"].items()]
            return FeatureSnapshot.from_rows(
                rows,
                feature_names=tuple(document["feature_names"]),
                version=int(document["version"]),
                published_at=datetime.fromisoformat(document["published_at"]),
                digest=str(document["digest"]),
            )
        except KeyError as error:
            raise FeatureStoreError(f"{self.path} lacks {error}") from error

    def write(self, rows: list[FeatureRow], *, feature_names: tuple[str, ...], published_at: datetime) -> PublishResult:
        """Replace the file (temporary file, then rename) unless the vectors are unchanged."""
        digest = content_digest(rows, feature_names)
        current = self._load()
        newest = max((row.timestamp for row in rows), default=None)
        if current is not None and current.get("digest") == digest:
            return PublishResult(self.backend, int(current["version"]), False, len(rows), newest)
        version = (int(current["version"]) if current else 0) + 1
        document = {
            "version": version,
            "published_at": published_at.isoformat(),
            "digest": digest,
            "feature_names": list(feature_names),
            "coins": {row.coin_id: _row_payload(row) for row in sorted(rows, key=lambda r: r.coin_id)},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(document, out)
            os.replace(tmp_name, self.path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return PublishResult(self.backend, version, True, len(rows), newest)

    def close(self) -> None:
        """Nothing to release."""


def open_feature_store(settings: Settings) -> OnlineFeatureStore:
    """Redis when ``settings.redis.url`` is set, else the file under ``KHALSI_HOME/online/``."""
    if settings.redis.url:
        password = settings.redis.password.get_secret_value() if settings.redis.password else None
        return RedisFeatureStore(settings.redis.url, password=password)
    return FileFeatureStore(settings.home / ONLINE_DIR / ONLINE_FILE)


def compute_latest_features(settings: Settings, *, as_of: datetime | None = None) -> pl.DataFrame:
    """Each coin's latest feature row from the lake (the training code path, on a trailing slice)."""
    from features import latest_feature_vectors
    from khalsi.lake import scan_fear_greed, scan_market, scan_social_daily

    lake_dir = settings.lake_dir
    return latest_feature_vectors(
        scan_market(lake_dir), scan_fear_greed(lake_dir), scan_social_daily(lake_dir), as_of=as_of
    )


def publish_latest_features(settings: Settings, *, as_of: datetime | None = None) -> PublishResult:
    """Compute the latest vector per coin from the lake and write it to the online store."""
    from features import FEATURE_COLUMNS

    frame = compute_latest_features(settings, as_of=as_of)
    rows = rows_from_frame(frame, FEATURE_COLUMNS)
    store = open_feature_store(settings)
    try:
        return store.write(rows, feature_names=tuple(FEATURE_COLUMNS), published_at=datetime.now(UTC))
    finally:
        store.close()


def read_feature_snapshot(settings: Settings) -> FeatureSnapshot | None:
    """The online store's current snapshot (None before the first publication)."""
    store = open_feature_store(settings)
    try:
        return store.read()
    finally:
        store.close()
