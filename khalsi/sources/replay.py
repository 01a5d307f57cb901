"""A local CoinGecko: recorded real responses and the bundled daily history, served in the API's shapes.

The platform has no internet, so the real :class:`~khalsi.sources.coingecko.CoinGeckoClient` talks
to this server over real HTTP (in tests, and when ``market_source=replay``).

- Recorded responses (``khalsi/bundled/coingecko/api``) for ``/ping``, ``/search/trending``,
  ``/global`` and ``/coins/bitcoin``: real snapshots, served as recorded whatever the clock says.
- Computed from the bundled daily CSVs, as of the replay clock's "now": ``/coins/markets``,
  ``/simple/price``, ``/coins/{id}/market_chart[/range]``, ``/coins/list`` and ``/coins/{id}`` for
  the other bundled coins. Only ``vs_currency=usd`` exists (400 otherwise). The history is daily,
  so charts are daily at every ``days`` (real CoinGecko is hourly up to 90 days); like CoinGecko,
  a chart ends with a "now" point when the latest day is in progress (carrying that day's values,
  since the replay cannot know intraday prices). Fields the daily history cannot give (high/low
  24 h, supplies, FDV) are null.
- :class:`ReplayClock`: "now" is ``start`` plus elapsed wall time times ``speed`` (0 = frozen).
  Rows after "now" are never served, so history plays forward like a live feed.
- Faults for tests (:class:`FaultPlan`, also over HTTP at ``/_replay/faults``) and key checks
  (:class:`KeyMode`) reproduce CoinGecko's failure shapes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from khalsi.sources.exports import (
    BUNDLED_API_DIR,
    CoinInfo,
    bundled_export_paths,
    coin_for_export,
    read_coingecko_export,
)

API_PREFIX = "/api/v3"
ADMIN_PREFIX = "/_replay"
DAY_MS = 86_400_000
SUPPORTED_VS_CURRENCY = "usd"
MAX_PER_PAGE = 250
MARKET_ORDERS = frozenset({"market_cap_desc", "market_cap_asc", "volume_desc", "volume_asc", "id_asc", "id_desc"})
# price_change_percentage=<tf> windows the daily history can answer; "1h" is answered with null.
CHANGE_WINDOWS_DAYS = {"24h": 1, "7d": 7, "14d": 14, "30d": 30, "200d": 200, "1y": 365}

# Verbatim from COINGECKO_API_FACTS.md (quoted in several public repositories).
RATE_LIMIT_JSON = (
    '{"status":{"error_code":429,"error_message":"You\'ve exceeded the Rate Limit. Please visit '
    'https://www.coingecko.com/en/api/pricing to subscribe to our API plans for higher rate limits."}}'
)
RATE_LIMIT_TEXT = "429 Too Many Requests Throttled"  # l2beat/l2beat#4730
CLOUDFLARE_BLOCK_HTML = (
    "<!DOCTYPE html><html><head><title>Access denied | api.coingecko.com used Cloudflare to restrict "
    "access</title></head><body><h1>Error 1020</h1><p>Access denied</p><p>This website is using a "
    "security service to protect itself from online attacks.</p><p>Cloudflare Ray ID: 0000000000000000"
    "</p></body></html>"
)


# --- the clock -------------------------------------------------------------------------------------


def parse_instant(value: str | date | datetime) -> datetime:
    """A UTC instant from ``YYYY-MM-DD``, an ISO datetime (naive means UTC), a date or a datetime."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as error:
            raise ValueError(f"{value!r} is not a date (YYYY-MM-DD) or ISO datetime") from error
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ReplayClock:
    """The replay's "now": ``start`` plus elapsed wall time times ``speed`` (0 keeps it frozen)."""

    def __init__(
        self,
        start: str | date | datetime,
        speed: float = 0.0,
        *,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self._wall = wall
        self._lock = threading.Lock()
        self._start = parse_instant(start)
        self._speed = speed
        self._anchor = wall()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        """The replayed current instant (UTC)."""
        return datetime.fromtimestamp(self.now_ms() / 1000, UTC)

    def now_ms(self) -> int:
        """The replayed current instant as unix milliseconds."""
        with self._lock:
            elapsed = (self._wall() - self._anchor) * self._speed
            return int(self._start.timestamp() * 1000 + elapsed * 1000)

    def reset(self, *, start: str | date | datetime | None = None, speed: float | None = None) -> None:
        """Jump to ``start`` and/or change ``speed``; time keeps flowing from the current instant."""
        if speed is not None and speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        current = self.now() if start is None else parse_instant(start)
        with self._lock:
            self._start = current
            self._anchor = self._wall()
            if speed is not None:
                self._speed = speed


# --- the history -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoinHistory:
    """One coin's daily rows, sorted, as parallel lists (bisect answers "as of" questions)."""

    coin: CoinInfo
    ms: list[int]
    price: list[float | None]
    market_cap: list[float | None]
    total_volume: list[float | None]
    # Index of the all-time high / low price among rows[0..i], for ath/atl "as of" any row.
    ath_index: list[int]
    atl_index: list[int]

    @classmethod
    def from_rows(
        cls,
        coin: CoinInfo,
        rows: Iterable[tuple[int, float | None, float | None, float | None]],
    ) -> CoinHistory:
        """Build from ``(unix_ms, price, market_cap, total_volume)`` rows in any order."""
        ordered = sorted(rows, key=lambda row: row[0])
        ath_index: list[int] = []
        atl_index: list[int] = []
        for i, (_, price, _, _) in enumerate(ordered):
            best_high = ath_index[-1] if ath_index else i
            best_low = atl_index[-1] if atl_index else i
            high_price, low_price = ordered[best_high][1], ordered[best_low][1]
            if price is not None and (high_price is None or price > high_price):
                best_high = i
            if price is not None and (low_price is None or price < low_price):
                best_low = i
            ath_index.append(best_high)
            atl_index.append(best_low)
        return cls(
            coin=coin,
            ms=[row[0] for row in ordered],
            price=[row[1] for row in ordered],
            market_cap=[row[2] for row in ordered],
            total_volume=[row[3] for row in ordered],
            ath_index=ath_index,
            atl_index=atl_index,
        )

    def latest_index(self, now_ms: int) -> int | None:
        """The last row at or before ``now_ms``, or None before the coin's history starts."""
        index = bisect_right(self.ms, now_ms) - 1
        return index if index >= 0 else None

    def index_near(self, target_ms: int, *, tolerance_ms: int = DAY_MS // 2) -> int | None:
        """The last row at or before ``target_ms`` if it is within ``tolerance_ms`` of it."""
        index = bisect_right(self.ms, target_ms) - 1
        if index < 0 or target_ms - self.ms[index] > tolerance_ms:
            return None
        return index

    def window(self, start_ms: int, end_ms: int) -> range:
        """Row indices with ``start_ms <= ms <= end_ms``."""
        return range(bisect_left(self.ms, start_ms), bisect_right(self.ms, end_ms))


@dataclass(frozen=True)
class ReplayData:
    """The histories the replay serves, by CoinGecko id."""

    coins: dict[str, CoinHistory]

    @classmethod
    def from_exports(cls, paths: Iterable[Path]) -> ReplayData:
        """Read CoinGecko export CSVs (coin from each file name)."""
        coins: dict[str, CoinHistory] = {}
        for path in paths:
            coin = coin_for_export(path)
            frame = read_coingecko_export(path, coin)
            ms = frame.get_column("timestamp").dt.epoch("ms").to_list()
            rows = zip(
                ms,
                frame.get_column("price").to_list(),
                frame.get_column("market_cap").to_list(),
                frame.get_column("total_volume").to_list(),
                strict=True,
            )
            coins[coin.coin_id] = CoinHistory.from_rows(coin, rows)
        if not coins:
            raise ValueError("no CoinGecko export to replay")
        return cls(coins=coins)

    @property
    def first_ms(self) -> int:
        return min(history.ms[0] for history in self.coins.values())

    @property
    def last_ms(self) -> int:
        return max(history.ms[-1] for history in self.coins.values())

    def clock(self, start: str | date | datetime | None = None, speed: float = 0.0) -> ReplayClock:
        """A clock at ``start`` (default: the last day of the history), refusing days outside it."""
        if start is None:
            return ReplayClock(datetime.fromtimestamp(self.last_ms / 1000, UTC), speed)
        instant = parse_instant(start)
        instant_ms = int(instant.timestamp() * 1000)
        if not self.first_ms <= instant_ms < self.last_ms + DAY_MS:
            first = datetime.fromtimestamp(self.first_ms / 1000, UTC).date()
            last = datetime.fromtimestamp(self.last_ms / 1000, UTC).date()
            raise ValueError(f"replay start {instant.isoformat()} is outside the history ({first} .. {last})")
        return ReplayClock(instant, speed)


@lru_cache(maxsize=1)
def bundled_replay_data() -> ReplayData:
    """The bundled daily history (read once per process)."""
    return ReplayData.from_exports(bundled_export_paths())


@lru_cache(maxsize=8)
def _recorded(name: str) -> bytes:
    return (BUNDLED_API_DIR / name).read_bytes()


# --- faults, keys and the request log ---------------------------------------------------------------


class FaultKind(StrEnum):
    RATE_LIMIT_JSON = "rate_limit_json"  # 429, CoinGecko's JSON body
    RATE_LIMIT_TEXT = "rate_limit_text"  # 429, plain text
    SERVER_ERROR = "server_error"  # 500
    UNAVAILABLE = "unavailable"  # 503
    CLOUDFLARE_BLOCK = "cloudflare_block"  # 403, Cloudflare's HTML page (error 1020)
    SLOW = "slow"  # the normal answer after ``delay_seconds``
    MALFORMED_BODY = "malformed_body"  # 200, not JSON
    WRONG_SHAPE = "wrong_shape"  # 200, JSON of the wrong shape


@dataclass(frozen=True)
class Fault:
    """One injected failure; ``path_prefix`` (after ``/api/v3``) limits which requests it hits."""

    kind: FaultKind
    retry_after: str | None = None
    retry_after_ms: str | None = None
    delay_seconds: float = 1.0
    path_prefix: str | None = None


class FaultPlan:
    """Faults queued for the next matching requests; thread-safe (the server has its own thread)."""

    def __init__(self) -> None:
        self._queue: list[Fault] = []
        self._lock = threading.Lock()

    def inject(self, fault: Fault, *, times: int = 1) -> None:
        """Make the next ``times`` matching requests fail with ``fault``."""
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            self._queue.extend([fault] * times)

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._queue.clear()

    def pending(self) -> int:
        """How many faults are still queued."""
        with self._lock:
            return len(self._queue)

    def take(self, path: str) -> Fault | None:
        """Pop the first queued fault that applies to ``path`` (relative to ``/api/v3``)."""
        with self._lock:
            for index, fault in enumerate(self._queue):
                if fault.path_prefix is None or path.startswith(fault.path_prefix):
                    return self._queue.pop(index)
        return None


class KeyMode(StrEnum):
    NONE = "none"  # keyless: any or no key is accepted
    DEMO = "demo"  # the public host with a Demo key required
    PRO = "pro"  # the Pro host


@dataclass(frozen=True)
class ServedRequest:
    path: str
    query: str
    status: int


class RequestLog:
    """The last requests the API answered (admin calls excluded), to count attempts in tests."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._entries: deque[ServedRequest] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, entry: ServedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self, path_prefix: str = "") -> list[ServedRequest]:
        """Requests whose path (relative to ``/api/v3``) starts with ``path_prefix``."""
        with self._lock:
            return [entry for entry in self._entries if entry.path.startswith(path_prefix)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass
class ReplayState:
    """Everything a running replay server shares with the code that started it."""

    data: ReplayData
    clock: ReplayClock
    faults: FaultPlan = field(default_factory=FaultPlan)
    requests: RequestLog = field(default_factory=RequestLog)
    key_mode: KeyMode = KeyMode.NONE
    api_key: str | None = None


# --- responses -------------------------------------------------------------------------------------


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(content, separators=(",", ":"), allow_nan=False)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _status_error(status: int, code: int, message: str, *, nested: bool = False) -> Response:
    payload: dict[str, Any] = {"status": {"error_code": code, "error_message": message}}
    return _json({"error": payload} if nested else payload, status)


class _RequestError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _truthy(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in {"true", "1", "yes"}


def _pct_change(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return (new - old) / old * 100.0


def _diff(new: float | None, old: float | None) -> float | None:
    return None if new is None or old is None else new - old


def _require_usd(value: str | None, name: str) -> None:
    if value is None or not value.strip():
        raise _RequestError(_error(400, f"Missing parameter {name}"))
    currencies = [part.strip().lower() for part in value.split(",") if part.strip()]
    if not currencies or any(currency != SUPPORTED_VS_CURRENCY for currency in currencies):
        raise _RequestError(_error(400, f"invalid {name}"))


def _ids(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip().lower() for part in value.split(",") if part.strip()]


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _RequestError(_error(400, f"invalid {name}")) from None
    if not low <= value <= high:
        raise _RequestError(_error(400, f"invalid {name}: must be {low}..{high}"))
    return value


def _market_caps_at(data: ReplayData, now_ms: int) -> dict[str, float]:
    caps: dict[str, float] = {}
    for coin_id, history in data.coins.items():
        index = history.latest_index(now_ms)
        cap = history.market_cap[index] if index is not None else None
        if cap:
            caps[coin_id] = cap
    return caps


def _ranks_at(data: ReplayData, now_ms: int) -> dict[str, int]:
    # Ranked among the bundled coins only; a zero market cap gets no rank, as on CoinGecko.
    caps = _market_caps_at(data, now_ms)
    ordered = sorted(caps, key=lambda coin_id: (-caps[coin_id], coin_id))
    return {coin_id: rank for rank, coin_id in enumerate(ordered, start=1)}


def _market_row(history: CoinHistory, index: int, rank: int | None, change_windows: list[str]) -> dict[str, Any]:
    row_ms = history.ms[index]
    price, cap = history.price[index], history.market_cap[index]
    day_before = history.index_near(row_ms - DAY_MS)
    old_price = history.price[day_before] if day_before is not None else None
    old_cap = history.market_cap[day_before] if day_before is not None else None
    ath_i, atl_i = history.ath_index[index], history.atl_index[index]
    ath, atl = history.price[ath_i], history.price[atl_i]
    row: dict[str, Any] = {
        "id": history.coin.coin_id,
        "symbol": history.coin.symbol,
        "name": history.coin.name,
        "image": None,
        "current_price": price,
        "market_cap": cap,
        "market_cap_rank": rank,
        "fully_diluted_valuation": None,
        "total_volume": history.total_volume[index],
        "high_24h": None,
        "low_24h": None,
        "price_change_24h": _diff(price, old_price),
        "price_change_percentage_24h": _pct_change(price, old_price),
        "market_cap_change_24h": _diff(cap, old_cap),
        "market_cap_change_percentage_24h": _pct_change(cap, old_cap),
        "circulating_supply": None,
        "total_supply": None,
        "max_supply": None,
        "ath": ath,
        "ath_change_percentage": _pct_change(price, ath),
        "ath_date": _iso(history.ms[ath_i]),
        "atl": atl,
        "atl_change_percentage": _pct_change(price, atl),
        "atl_date": _iso(history.ms[atl_i]),
        "roi": None,
        "last_updated": _iso(row_ms),
    }
    for window in change_windows:
        days = CHANGE_WINDOWS_DAYS.get(window)
        past = history.index_near(row_ms - days * DAY_MS) if days is not None else None
        row[f"price_change_percentage_{window}_in_currency"] = (
            _pct_change(price, history.price[past]) if past is not None else None
        )
    return row


def _chart(history: CoinHistory, indices: range, now_ms: int, end_ms: int) -> dict[str, Any]:
    prices = [[history.ms[i], history.price[i]] for i in indices]
    caps = [[history.ms[i], history.market_cap[i]] for i in indices]
    volumes = [[history.ms[i], history.total_volume[i]] for i in indices]
    latest = history.latest_index(now_ms)
    # CoinGecko ends a chart with "now" while the current day is in progress.
    if latest is not None and end_ms >= now_ms and 0 < now_ms - history.ms[latest] < DAY_MS:
        prices.append([now_ms, history.price[latest]])
        caps.append([now_ms, history.market_cap[latest]])
        volumes.append([now_ms, history.total_volume[latest]])
    return {"prices": prices, "market_caps": caps, "total_volumes": volumes}


# --- the app ---------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _fault_response(fault: Fault) -> Response | None:
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["retry-after"] = fault.retry_after
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = fault.retry_after_ms
    match fault.kind:
        case FaultKind.RATE_LIMIT_JSON:
            return Response(RATE_LIMIT_JSON, 429, headers=headers, media_type="application/json")
        case FaultKind.RATE_LIMIT_TEXT:
            return Response(RATE_LIMIT_TEXT, 429, headers=headers, media_type="text/plain")
        case FaultKind.SERVER_ERROR:
            return Response("Internal Server Error", 500, headers=headers, media_type="text/plain")
        case FaultKind.UNAVAILABLE:
            return Response(
                "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
                503,
                headers=headers,
                media_type="text/html",
            )
        case FaultKind.CLOUDFLARE_BLOCK:
            return Response(CLOUDFLARE_BLOCK_HTML, 403, headers=headers, media_type="text/html")
        case FaultKind.MALFORMED_BODY:
            return Response('{"prices": [[1711843200000, 69702.3', 200, media_type="application/json")
        case FaultKind.WRONG_SHAPE:
            return _json({"unexpected": "shape", "prices": "not-a-list"})
        case FaultKind.SLOW:
            return None


def _key_failure(state: ReplayState, request: Request) -> Response | None:
    headers, query = request.headers, request.query_params
    demo_key = headers.get("x-cg-demo-api-key") or query.get("x_cg_demo_api_key")
    pro_key = headers.get("x-cg-pro-api-key") or query.get("x_cg_pro_api_key")
    if state.key_mode is KeyMode.DEMO:
        if pro_key and not demo_key:
            # docs.coingecko.com/docs/errors-and-rate-limits: 10010 = a Pro key on the public host.
            return _status_error(
                401,
                10010,
                "If you are using Pro API key, please change your root URL from api.coingecko.com "
                "to pro-api.coingecko.com",
            )
        if demo_key != state.api_key:
            message = "Missing API key" if not demo_key else "Invalid API key"
            return _status_error(401, 10002, message)
    elif state.key_mode is KeyMode.PRO:
        if demo_key and not pro_key:
            return _status_error(
                401,
                10011,
                "If you are using Demo API key, please change your root URL from pro-api.coingecko.com "
                "to api.coingecko.com",
            )
        if pro_key != state.api_key:
            message = "Missing API key" if not pro_key else "Invalid API key"
            # Some CoinGecko 401s nest the status object under "error" (TundraSoft wiki).
            return _status_error(401, 10002, message, nested=True)
    return None


def create_replay_app(state: ReplayState) -> Starlette:
    """The replay server as an ASGI app over ``state``."""

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            path = request.url.path.removeprefix(API_PREFIX)
            response: Response | None = None
            fault = state.faults.take(path)
            if fault is not None:
                if fault.kind is FaultKind.SLOW:
                    await asyncio.sleep(fault.delay_seconds)
                else:
                    response = _fault_response(fault)
            if response is None:
                response = _key_failure(state, request)
            if response is None:
                try:
                    response = await handler(request)
                except _RequestError as bad:
                    response = bad.response
            state.requests.add(ServedRequest(path, request.url.query, response.status_code))
            return response

        return endpoint

    async def ping(request: Request) -> Response:
        return Response(_recorded("Ping.json"), media_type="application/json")

    async def trending(request: Request) -> Response:
        return Response(_recorded("GetTrendingSearches.json"), media_type="application/json")

    async def global_data(request: Request) -> Response:
        return Response(_recorded("GetGlobalData.json"), media_type="application/json")

    async def coins_list(request: Request) -> Response:
        now_ms = state.clock.now_ms()
        with_platforms = _truthy(request.query_params.get("include_platform"), False)
        listed: list[dict[str, Any]] = []
        for coin_id, history in sorted(state.data.coins.items()):
            if history.latest_index(now_ms) is None:
                continue
            entry: dict[str, Any] = {"id": coin_id, "symbol": history.coin.symbol, "name": history.coin.name}
            if with_platforms:
                entry["platforms"] = {}
            listed.append(entry)
        return _json(listed)

    async def markets(request: Request) -> Response:
        query = request.query_params
        _require_usd(query.get("vs_currency"), "vs_currency")
        order = query.get("order", "market_cap_desc")
        if order not in MARKET_ORDERS:
            raise _RequestError(_error(400, "invalid order"))
        per_page = _int_param(request, "per_page", 100, 1, MAX_PER_PAGE)
        page = _int_param(request, "page", 1, 1, 1_000_000)
        wanted = _ids(query.get("ids"))
        windows = [part.strip() for part in query.get("price_change_percentage", "").split(",") if part.strip()]
        now_ms = state.clock.now_ms()
        ranks = _ranks_at(state.data, now_ms)
        rows: list[dict[str, Any]] = []
        for coin_id, history in state.data.coins.items():
            if wanted is not None and coin_id not in wanted:
                continue
            index = history.latest_index(now_ms)
            if index is not None:
                rows.append(_market_row(history, index, ranks.get(coin_id), windows))
        key, _, direction = order.rpartition("_")
        column = {"market_cap": "market_cap", "volume": "total_volume", "id": "id"}[key]
        rows.sort(key=lambda row: row["id"])
        if column == "id":
            rows.sort(key=lambda row: row["id"], reverse=direction == "desc")
        else:
            rows.sort(key=lambda row: row[column] or 0.0, reverse=direction == "desc")
        return _json(rows[(page - 1) * per_page : page * per_page])

    async def simple_price(request: Request) -> Response:
        query = request.query_params
        wanted = _ids(query.get("ids"))
        if not wanted:
            raise _RequestError(_error(400, "Missing parameter ids"))
        _require_usd(query.get("vs_currencies"), "vs_currencies")
        now_ms = state.clock.now_ms()
        result: dict[str, dict[str, float | None]] = {}
        for coin_id in wanted:
            history = state.data.coins.get(coin_id)
            index = history.latest_index(now_ms) if history is not None else None
            if history is None or index is None:
                continue  # CoinGecko leaves unknown ids out
            quote: dict[str, float | None] = {"usd": history.price[index]}
            if _truthy(query.get("include_market_cap"), False):
                quote["usd_market_cap"] = history.market_cap[index]
            if _truthy(query.get("include_24hr_vol"), False):
                quote["usd_24h_vol"] = history.total_volume[index]
            if _truthy(query.get("include_24hr_change"), False):
                before = history.index_near(history.ms[index] - DAY_MS)
                old = history.price[before] if before is not None else None
                quote["usd_24h_change"] = _pct_change(history.price[index], old)
            if _truthy(query.get("include_last_updated_at"), False):
                quote["last_updated_at"] = history.ms[index] // 1000
            result[coin_id] = quote
        return _json(result)

    def history_for(request: Request, now_ms: int) -> CoinHistory:
        history = state.data.coins.get(request.path_params["coin_id"].lower())
        if history is None or history.latest_index(now_ms) is None:
            raise _RequestError(_error(404, "coin not found"))
        return history

    async def market_chart(request: Request) -> Response:
        query = request.query_params
        now_ms = state.clock.now_ms()
        history = history_for(request, now_ms)
        _require_usd(query.get("vs_currency"), "vs_currency")
        interval = query.get("interval")
        if interval not in (None, "", "daily"):
            # hourly / 5m granularity is Enterprise-only (COINGECKO_API_FACTS.md).
            raise _RequestError(
                _status_error(401, 10005, "You may not have access to this endpoint. Please check your API plan.")
            )
        days_text = (query.get("days") or "").strip().lower()
        if days_text == "max":
            start_ms = history.ms[0]
        else:
            try:
                days = float(days_text)
            except ValueError:
                raise _RequestError(_error(400, "invalid days")) from None
            if not days > 0:
                raise _RequestError(_error(400, "invalid days"))
            start_ms = now_ms - int(days * DAY_MS)
        return _json(_chart(history, history.window(start_ms, now_ms), now_ms, now_ms))

    async def market_chart_range(request: Request) -> Response:
        query = request.query_params
        now_ms = state.clock.now_ms()
        history = history_for(request, now_ms)
        _require_usd(query.get("vs_currency"), "vs_currency")
        try:
            start_ms = int(float(query["from"]) * 1000)
            end_ms = int(float(query["to"]) * 1000)
        except (KeyError, ValueError):
            raise _RequestError(_error(400, "from and to must be unix timestamps in seconds")) from None
        indices = history.window(start_ms, min(end_ms, now_ms))
        return _json(_chart(history, indices, now_ms, end_ms))

    async def coin(request: Request) -> Response:
        query = request.query_params
        coin_id = request.path_params["coin_id"].lower()
        now_ms = state.clock.now_ms()
        keep = {
            "market_data": _truthy(query.get("market_data"), True),
            "community_data": _truthy(query.get("community_data"), True),
            "developer_data": _truthy(query.get("developer_data"), True),
            "tickers": _truthy(query.get("tickers"), True),
            "localization": _truthy(query.get("localization"), True),
        }
        recorded = json.loads(_recorded("GetAssetDetails.json"))
        if coin_id == recorded["id"]:
            document: dict[str, Any] = recorded
        else:
            history = history_for(request, now_ms)
            index = history.latest_index(now_ms)
            assert index is not None  # history_for refuses coins without rows yet
            rank = _ranks_at(state.data, now_ms).get(coin_id)
            row = _market_row(history, index, rank, [])
            document = {
                "id": coin_id,
                "symbol": history.coin.symbol,
                "name": history.coin.name,
                "web_slug": coin_id,
                "market_cap_rank": rank,
                "localization": {"en": history.coin.name},
                "market_data": {
                    "current_price": {"usd": row["current_price"]},
                    "market_cap": {"usd": row["market_cap"]},
                    "total_volume": {"usd": row["total_volume"]},
                    "market_cap_rank": rank,
                    "price_change_percentage_24h": row["price_change_percentage_24h"],
                    "last_updated": row["last_updated"],
                },
                # The daily history holds no social data; CoinGecko sends nulls for untracked fields.
                "community_data": {
                    "facebook_likes": None,
                    "twitter_followers": None,
                    "reddit_average_posts_48h": None,
                    "reddit_average_comments_48h": None,
                    "reddit_subscribers": None,
                    "reddit_accounts_active_48h": None,
                    "telegram_channel_user_count": None,
                },
                "developer_data": None,
                "tickers": [],
                "last_updated": row["last_updated"],
            }
        for key, wanted in keep.items():
            if not wanted:
                document.pop(key, None)
        return _json(document)

    async def unknown_path(request: Request) -> Response:
        return _error(404, "Incorrect path. Please check https://www.coingecko.com/api/documentation")

    async def admin_faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.faults.clear()
        elif request.method == "POST":
            spec = await request.json()
            try:
                times = int(spec.pop("times", 1))
                spec["kind"] = FaultKind(spec["kind"])
                state.faults.inject(Fault(**spec), times=times)
            except (KeyError, TypeError, ValueError) as error:
                return _error(400, f"bad fault spec: {error}")
        return _json({"pending": state.faults.pending()})

    async def admin_clock(request: Request) -> Response:
        if request.method == "POST":
            spec = await request.json()
            try:
                state.clock.reset(start=spec.get("start"), speed=spec.get("speed"))
            except (TypeError, ValueError) as error:
                return _error(400, f"bad clock spec: {error}")
        return _json({"now": state.clock.now().isoformat(), "speed": state.clock.speed})

    api = API_PREFIX
    routes = [
        Route(f"{api}/ping", guarded(ping)),
        Route(f"{api}/search/trending", guarded(trending)),
        Route(f"{api}/global", guarded(global_data)),
        Route(f"{api}/coins/list", guarded(coins_list)),
        Route(f"{api}/coins/markets", guarded(markets)),
        Route(f"{api}/simple/price", guarded(simple_price)),
        Route(f"{api}/coins/{{coin_id}}/market_chart/range", guarded(market_chart_range)),
        Route(f"{api}/coins/{{coin_id}}/market_chart", guarded(market_chart)),
        Route(f"{api}/coins/{{coin_id}}", guarded(coin)),
        Route(f"{ADMIN_PREFIX}/faults", admin_faults, methods=["GET", "POST", "DELETE"]),
        Route(f"{ADMIN_PREFIX}/clock", admin_clock, methods=["GET", "POST"]),
        Route(f"{api}/{{rest:path}}", guarded(unknown_path)),
    ]
    return Starlette(routes=routes)


# --- running it ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayServer:
    """A running replay server: where it listens and the state it shares with its starter."""

    base_url: str
    state: ReplayState

    @property
    def api_url(self) -> str:
        """The CoinGecko-style root, e.g. ``http://127.0.0.1:PORT/api/v3``."""
        return self.base_url + API_PREFIX

    @property
    def clock(self) -> ReplayClock:
        return self.state.clock

    @property
    def faults(self) -> FaultPlan:
        return self.state.faults

    @property
    def requests(self) -> RequestLog:
        return self.state.requests


def build_state(
    *,
    start: str | date | datetime | None = None,
    speed: float = 0.0,
    key_mode: KeyMode = KeyMode.NONE,
    api_key: str | None = None,
    data: ReplayData | None = None,
) -> ReplayState:
    """The shared state of a replay server (bundled history unless ``data`` is given)."""
    if key_mode is not KeyMode.NONE and not api_key:
        raise ValueError(f"key_mode={key_mode} needs an api_key to check against")
    history = data or bundled_replay_data()
    return ReplayState(data=history, clock=history.clock(start, speed), key_mode=key_mode, api_key=api_key)


def _config(app: Starlette, *, log_level: str, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Config:
    # Slow-fault handlers sleep; don't let them hold a shutdown for long.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        loop="asyncio",
        timeout_graceful_shutdown=2,
    )


@contextmanager
def run_replay_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    start: str | date | datetime | None = None,
    speed: float = 0.0,
    key_mode: KeyMode = KeyMode.NONE,
    api_key: str | None = None,
    data: ReplayData | None = None,
    startup_timeout: float = 15.0,
) -> Iterator[ReplayServer]:
    """Run the replay server in a background thread (``port=0`` picks a free port); stop on exit."""
    state = build_state(start=start, speed=speed, key_mode=key_mode, api_key=api_key, data=data)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    bound_port = listener.getsockname()[1]
    server = uvicorn.Server(_config(create_replay_app(state), log_level="warning"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name=f"replay-{bound_port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"replay server on {host}:{bound_port} did not start")
            time.sleep(0.01)
        url_host = f"[{host}]" if ":" in host else host
        yield ReplayServer(base_url=f"http://{url_host}:{bound_port}", state=state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def serve_replay(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    start: str | date | datetime | None = None,
    speed: float = 0.0,
    key_mode: KeyMode = KeyMode.NONE,
    api_key: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the replay in the foreground until interrupted (what ``khalsi replay serve`` runs)."""
    state = build_state(start=start, speed=speed, key_mode=key_mode, api_key=api_key)
    uvicorn.Server(_config(create_replay_app(state), log_level=log_level, host=host, port=port)).run()
