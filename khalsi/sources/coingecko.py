"""The CoinGecko API v3 client: typed results, a shared rate budget, retries, and clear errors.

Facts this follows (``khalsi/bundled/coingecko/COINGECKO_API_FACTS.md``): keyless and Demo plans
use ``api.coingecko.com`` (Demo key in ``x-cg-demo-api-key``), Pro uses ``pro-api.coingecko.com``
(``x-cg-pro-api-key``); limits differ between doc versions, so the budget is configuration; error
bodies come in three JSON shapes, and a 429 or a Cloudflare block may not be JSON at all; no
rate-limit header is documented, so ``Retry-After``/``retry-after-ms`` are honoured only when sent.

Every successful response body is kept (``client.last_raw`` and the optional ``on_raw`` callback)
because the ingest flow stores raw responses next to what it parsed.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx
import polars as pl
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from khalsi.settings import CoinGeckoPlan, CoinGeckoSettings, Settings
from khalsi.sources.exports import CoinInfo
from khalsi.sources.ratelimit import RateLimiter, limiter_for

T = TypeVar("T")

DEMO_KEY_HEADER = "x-cg-demo-api-key"
PRO_KEY_HEADER = "x-cg-pro-api-key"
USER_AGENT = "khalsi/0.1 (+https://github.com/khalsi)"
MAX_PER_PAGE = 250
DAY_MS = 86_400_000

# The SDK retries these too (COINGECKO_API_FACTS.md [D]); 409 is not a CoinGecko answer.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
ERROR_MISSING_KEY = 10002
ERROR_PLAN_RESTRICTED = 10005
ERROR_PRO_KEY_ON_PUBLIC_HOST = 10010
ERROR_DEMO_KEY_ON_PRO_HOST = 10011
ERROR_CDN_BLOCKED = 1020


# --- errors ----------------------------------------------------------------------------------------


class CoinGeckoError(Exception):
    """Any failed CoinGecko call; carries what the server said, never the API key."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: int | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_code = error_code
        self.url = url
        self.retry_after = retry_after


class BadRequestError(CoinGeckoError):
    """400/422: the request itself is wrong (unknown currency, bad parameter)."""


class RateLimitedError(CoinGeckoError):
    """429: over the plan's rate limit, still so after every retry."""


class AuthError(CoinGeckoError):
    """401 / 10002: the API key is missing or wrong."""


class WrongKeyTypeError(AuthError):
    """10010/10011: a Pro key on the public host or a Demo key on the Pro host."""


class PlanRestrictedError(CoinGeckoError):
    """10005: the endpoint is not available on this plan."""


class NotFoundError(CoinGeckoError):
    """404: unknown coin or path."""


class UpstreamUnavailableError(CoinGeckoError):
    """5xx, timeouts, connection errors or a CDN block (1020), still so after every retry."""


class InvalidResponseError(CoinGeckoError):
    """A 200 whose body is not JSON or not the documented shape."""


# --- response models -------------------------------------------------------------------------------


class _Model(BaseModel):
    # CoinGecko adds fields over time; unknown ones are kept, not refused.
    model_config = ConfigDict(extra="allow")


class Ping(_Model):
    gecko_says: str


class Roi(_Model):
    times: float | None = None
    currency: str | None = None
    percentage: float | None = None


class MarketCoin(_Model):
    """One row of ``/coins/markets``."""

    id: str
    symbol: str
    name: str
    image: str | None = None
    current_price: float | None = None
    market_cap: float | None = None
    market_cap_rank: int | None = None
    fully_diluted_valuation: float | None = None
    total_volume: float | None = None
    high_24h: float | None = None
    low_24h: float | None = None
    price_change_24h: float | None = None
    price_change_percentage_24h: float | None = None
    market_cap_change_24h: float | None = None
    market_cap_change_percentage_24h: float | None = None
    circulating_supply: float | None = None
    total_supply: float | None = None
    max_supply: float | None = None
    ath: float | None = None
    ath_change_percentage: float | None = None
    ath_date: datetime | None = None
    atl: float | None = None
    atl_change_percentage: float | None = None
    atl_date: datetime | None = None
    roi: Roi | None = None
    last_updated: datetime | None = None


class MarketChart(_Model):
    """``/coins/{id}/market_chart[/range]``: ``[unix_ms, value]`` pairs; the arrays may differ in length."""

    prices: list[tuple[int, float | None]]
    market_caps: list[tuple[int, float | None]]
    total_volumes: list[tuple[int, float | None]]


class TrendingCoinData(_Model):
    price: float | None = None
    price_btc: str | float | None = None
    price_change_percentage_24h: dict[str, float | None] | None = None
    market_cap: str | None = None
    market_cap_btc: str | None = None
    total_volume: str | None = None
    total_volume_btc: str | None = None
    sparkline: str | None = None


class TrendingCoinItem(_Model):
    id: str
    coin_id: int | None = None
    name: str
    symbol: str
    market_cap_rank: int | None = None
    thumb: str | None = None
    small: str | None = None
    large: str | None = None
    slug: str | None = None
    price_btc: float | None = None
    score: int | None = None
    data: TrendingCoinData | None = None


class TrendingCoin(_Model):
    item: TrendingCoinItem


class TrendingNft(_Model):
    id: str
    name: str
    symbol: str | None = None
    native_currency_symbol: str | None = None
    floor_price_in_native_currency: float | None = None
    floor_price_24h_percentage_change: float | None = None


class TrendingCategory(_Model):
    id: int | str
    name: str
    slug: str | None = None
    market_cap_1h_change: float | None = None
    coins_count: int | str | None = None


class Trending(_Model):
    """``/search/trending``: the coins, NFTs and categories people search for most."""

    coins: list[TrendingCoin]
    nfts: list[TrendingNft] = []
    categories: list[TrendingCategory] = []


class CommunityData(_Model):
    """Social reach CoinGecko tracks for a coin; any field may be absent or null."""

    facebook_likes: int | None = None
    twitter_followers: int | None = None
    reddit_average_posts_48h: float | None = None
    reddit_average_comments_48h: float | None = None
    reddit_subscribers: int | None = None
    reddit_accounts_active_48h: float | None = None
    telegram_channel_user_count: int | None = None


class CoinMarketData(_Model):
    current_price: dict[str, float | None] = {}
    market_cap: dict[str, float | None] = {}
    total_volume: dict[str, float | None] = {}
    market_cap_rank: int | None = None
    price_change_percentage_24h: float | None = None
    circulating_supply: float | None = None
    total_supply: float | None = None
    max_supply: float | None = None
    last_updated: datetime | None = None


class CoinDetail(_Model):
    """``/coins/{id}``: identity, market data and community data."""

    id: str
    symbol: str
    name: str
    market_cap_rank: int | None = None
    sentiment_votes_up_percentage: float | None = None
    sentiment_votes_down_percentage: float | None = None
    watchlist_portfolio_users: int | None = None
    market_data: CoinMarketData | None = None
    community_data: CommunityData | None = None
    developer_data: dict[str, Any] | None = None
    last_updated: datetime | None = None


class CoinListEntry(_Model):
    id: str
    symbol: str
    name: str
    platforms: dict[str, str | None] | None = None


class GlobalMarket(_Model):
    active_cryptocurrencies: int | None = None
    markets: int | None = None
    total_market_cap: dict[str, float] = {}
    total_volume: dict[str, float] = {}
    market_cap_percentage: dict[str, float] = {}
    market_cap_change_percentage_24h_usd: float | None = None
    updated_at: int | None = None


class Global(_Model):
    data: GlobalMarket


# ``/simple/price``: coin id -> {"usd": .., "usd_market_cap": .., "usd_24h_vol": .., "usd_24h_change":
# .., "last_updated_at": unix_s}; optional keys appear only when asked for.
SimplePrice = dict[str, dict[str, float | None]]

_PING = TypeAdapter(Ping)
_MARKETS = TypeAdapter(list[MarketCoin])
_CHART = TypeAdapter(MarketChart)
_SIMPLE_PRICE: TypeAdapter[SimplePrice] = TypeAdapter(SimplePrice)
_TRENDING = TypeAdapter(Trending)
_COIN = TypeAdapter(CoinDetail)
_COINS_LIST = TypeAdapter(list[CoinListEntry])
_GLOBAL = TypeAdapter(Global)


@dataclass(frozen=True)
class RawResponse:
    """One successful response exactly as received, for the raw store."""

    path: str
    params: dict[str, str]
    status_code: int
    body: bytes
    fetched_at: datetime


# --- error bodies and retry hints ------------------------------------------------------------------


def parse_error_body(body: bytes) -> tuple[int | None, str]:
    """CoinGecko's error code and message from any of its error shapes, or a text summary.

    Shapes: ``{"status":{"error_code","error_message"}}``, ``{"error":{"status":{...}}}``,
    ``{"error":"<string>"}``; anything else (plain text, a Cloudflare page) is summarised.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _summarise_text(body)
    if isinstance(data, dict):
        status = data.get("status")
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("status"), dict):
            status = error["status"]
        if isinstance(status, dict) and ("error_code" in status or "error_message" in status):
            code = status.get("error_code")
            return (int(code) if isinstance(code, int | float) else None), str(status.get("error_message") or "")
        if isinstance(error, str):
            return None, error
    return None, _clip(body.decode("utf-8", errors="replace"))


def _summarise_text(body: bytes) -> tuple[int | None, str]:
    text = body.decode("utf-8", errors="replace")
    code = ERROR_CDN_BLOCKED if re.search(r"error\s*(code)?[:\s]*1020", text, re.IGNORECASE) else None
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    return code, _clip(title.group(1) if title else text)


def _clip(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def retry_after_seconds(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """The server's requested wait: ``retry-after-ms``, then ``Retry-After`` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def error_from_response(response: httpx.Response) -> CoinGeckoError:
    """The exception that says what a non-200 response means."""
    status = response.status_code
    code, message = parse_error_body(response.content)
    try:
        url: str | None = str(response.request.url)
    except RuntimeError:  # a response built by hand has no request
        url = None
    retry_after = retry_after_seconds(response.headers)
    text = f"CoinGecko {status}" + (f" (error {code})" if code is not None else "") + f": {message}"
    kwargs: dict[str, Any] = {
        "status_code": status,
        "error_code": code,
        "url": url,
        "retry_after": retry_after,
    }
    if code == ERROR_PLAN_RESTRICTED:
        return PlanRestrictedError(text, **kwargs)
    if code in (ERROR_PRO_KEY_ON_PUBLIC_HOST, ERROR_DEMO_KEY_ON_PRO_HOST):
        return WrongKeyTypeError(text, **kwargs)
    if code == ERROR_MISSING_KEY or status == 401:
        return AuthError(text, **kwargs)
    if status == 429 or code == 429:
        return RateLimitedError(text, **kwargs)
    if status == 404:
        return NotFoundError(text, **kwargs)
    if status in (400, 422):
        return BadRequestError(text, **kwargs)
    if status == 408 or status >= 500 or code == ERROR_CDN_BLOCKED:
        return UpstreamUnavailableError(text, **kwargs)
    return CoinGeckoError(text, **kwargs)


def _is_retryable(response: httpx.Response, error: CoinGeckoError) -> bool:
    # A Cloudflare 1020 page often marks an IP briefly throttled, so it is worth the bounded retries.
    return (
        response.status_code in RETRYABLE_STATUS
        or response.status_code >= 500
        or (error.error_code == ERROR_CDN_BLOCKED)
    )


# --- the client ------------------------------------------------------------------------------------


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _unix_seconds(value: int | float | datetime) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone; pass an aware datetime or unix seconds")
        return int(value.timestamp())
    return int(value)


class CoinGeckoClient:
    """An async CoinGecko v3 client; use as ``async with CoinGeckoClient(settings) as client``."""

    def __init__(
        self,
        settings: CoinGeckoSettings,
        *,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: RateLimiter | None = None,
        redis_url: str | None = None,
        on_raw: Callable[[RawResponse], None] | None = None,
    ) -> None:
        self.settings = settings
        self.base_url = (base_url or settings.base_url).rstrip("/")
        self.limiter = limiter or limiter_for(self.base_url, settings.calls_per_minute, redis_url=redis_url)
        self.on_raw = on_raw
        self.last_raw: RawResponse | None = None
        headers = {"accept": "application/json", "user-agent": USER_AGENT}
        if settings.api_key is not None and settings.plan is not CoinGeckoPlan.KEYLESS:
            header = PRO_KEY_HEADER if settings.plan is CoinGeckoPlan.PRO else DEMO_KEY_HEADER
            headers[header] = settings.api_key.get_secret_value()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(settings.timeout_seconds, connect=min(5.0, settings.timeout_seconds)),
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CoinGeckoClient:
        """A client from the platform settings, sharing its rate budget through Redis when configured."""
        overrides.setdefault("redis_url", settings.redis.url or None)
        return cls(settings.coingecko, **overrides)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- endpoints --

    async def ping(self) -> Ping:
        """``/ping``: is the API up."""
        return await self._get("/ping", {}, _PING)

    async def markets(
        self,
        *,
        vs_currency: str | None = None,
        ids: Sequence[str] | None = None,
        per_page: int = MAX_PER_PAGE,
        max_pages: int | None = None,
        order: str = "market_cap_desc",
        price_change_percentage: Sequence[str] | None = None,
    ) -> list[MarketCoin]:
        """``/coins/markets``, following pages until a short page (or ``max_pages``)."""
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be 1..{MAX_PER_PAGE}, got {per_page}")
        if max_pages is not None and max_pages < 1:
            raise ValueError(f"max_pages must be at least 1, got {max_pages}")
        params: dict[str, str] = {
            "vs_currency": vs_currency or self.settings.vs_currency,
            "order": order,
            "per_page": str(per_page),
        }
        if ids is not None:
            params["ids"] = ",".join(ids)
        if price_change_percentage:
            params["price_change_percentage"] = ",".join(price_change_percentage)
        rows: list[MarketCoin] = []
        page = 1
        while max_pages is None or page <= max_pages:
            batch = await self._get("/coins/markets", {**params, "page": str(page)}, _MARKETS)
            rows.extend(batch)
            if len(batch) < per_page:
                break
            page += 1
        return rows

    async def market_chart(
        self,
        coin_id: str,
        *,
        days: int | float | Literal["max"],
        interval: Literal["daily"] | None = None,
        vs_currency: str | None = None,
    ) -> MarketChart:
        """``/coins/{id}/market_chart``: the last ``days`` days (daily points beyond 90 days)."""
        params = {"vs_currency": vs_currency or self.settings.vs_currency, "days": str(days)}
        if interval is not None:
            params["interval"] = interval
        return await self._get(f"/coins/{coin_id}/market_chart", params, _CHART)

    async def market_chart_range(
        self,
        coin_id: str,
        *,
        start: int | float | datetime,
        end: int | float | datetime,
        vs_currency: str | None = None,
    ) -> MarketChart:
        """``/coins/{id}/market_chart/range`` between two instants (unix seconds or aware datetimes)."""
        start_s, end_s = _unix_seconds(start), _unix_seconds(end)
        if end_s < start_s:
            raise ValueError(f"end ({end_s}) is before start ({start_s})")
        params = {
            "vs_currency": vs_currency or self.settings.vs_currency,
            "from": str(start_s),
            "to": str(end_s),
        }
        return await self._get(f"/coins/{coin_id}/market_chart/range", params, _CHART)

    async def simple_price(
        self,
        ids: Sequence[str],
        *,
        vs_currencies: Sequence[str] | None = None,
        include_market_cap: bool = False,
        include_24hr_vol: bool = False,
        include_24hr_change: bool = False,
        include_last_updated_at: bool = False,
    ) -> SimplePrice:
        """``/simple/price``: current prices (and optional cap, volume, change, update time)."""
        params = {
            "ids": ",".join(ids),
            "vs_currencies": ",".join(vs_currencies or [self.settings.vs_currency]),
            "include_market_cap": _flag(include_market_cap),
            "include_24hr_vol": _flag(include_24hr_vol),
            "include_24hr_change": _flag(include_24hr_change),
            "include_last_updated_at": _flag(include_last_updated_at),
        }
        return await self._get("/simple/price", params, _SIMPLE_PRICE)

    async def trending(self) -> Trending:
        """``/search/trending``."""
        return await self._get("/search/trending", {}, _TRENDING)

    async def coin(
        self,
        coin_id: str,
        *,
        community_data: bool = True,
        market_data: bool = True,
        developer_data: bool = False,
        tickers: bool = False,
        localization: bool = False,
        sparkline: bool = False,
    ) -> CoinDetail:
        """``/coins/{id}``: a coin's details, with community (social) data by default."""
        params = {
            "localization": _flag(localization),
            "tickers": _flag(tickers),
            "market_data": _flag(market_data),
            "community_data": _flag(community_data),
            "developer_data": _flag(developer_data),
            "sparkline": _flag(sparkline),
        }
        return await self._get(f"/coins/{coin_id}", params, _COIN)

    async def coins_list(self) -> list[CoinListEntry]:
        """``/coins/list``: every coin id CoinGecko knows."""
        return await self._get("/coins/list", {}, _COINS_LIST)

    async def global_market(self) -> Global:
        """``/global``: whole-market totals."""
        return await self._get("/global", {}, _GLOBAL)

    # -- transport --

    async def _get(self, path: str, params: Mapping[str, str], adapter: TypeAdapter[T]) -> T:
        data, raw = await self._request(path, params)
        try:
            parsed = adapter.validate_python(data)
        except ValidationError as error:
            raise InvalidResponseError(
                f"CoinGecko {path}: 200 body does not match the documented shape: "
                f"{error.error_count()} problem(s), first: {_clip(str(error.errors()[0]), 300)}",
                status_code=raw.status_code,
                url=f"{self.base_url}{path}",
            ) from error
        self.last_raw = raw
        if self.on_raw is not None:
            self.on_raw(raw)
        return parsed

    def _backoff(self, attempt: int, hint: float | None) -> float:
        cap = self.settings.backoff_max_seconds
        if hint is not None:
            return min(hint, cap)
        # Exponential with downward jitter (as the official SDK): callers retrying together spread out.
        base = min(self.settings.backoff_initial_seconds * (2.0**attempt), cap)
        return base * (1.0 - 0.25 * random.random())

    async def _request(self, path: str, params: Mapping[str, str]) -> tuple[Any, RawResponse]:
        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            await self.limiter.acquire()
            try:
                response = await self._http.get(path, params=dict(params))
            except httpx.TimeoutException as error:
                if last:
                    raise UpstreamUnavailableError(
                        f"CoinGecko {path}: timed out after {attempts} attempt(s)", url=self.base_url + path
                    ) from error
                await asyncio.sleep(self._backoff(attempt, None))
                continue
            except httpx.TransportError as error:
                if last:
                    raise UpstreamUnavailableError(
                        f"CoinGecko {path}: connection failed after {attempts} attempt(s): {error!r}",
                        url=self.base_url + path,
                    ) from error
                await asyncio.sleep(self._backoff(attempt, None))
                continue
            if response.status_code == 200:
                try:
                    data = json.loads(response.content)
                except (ValueError, UnicodeDecodeError) as error:
                    raise InvalidResponseError(
                        f"CoinGecko {path}: 200 body is not JSON: {_summarise_text(response.content)[1]}",
                        status_code=200,
                        url=str(response.url),
                    ) from error
                raw = RawResponse(
                    path=path,
                    params=dict(params),
                    status_code=200,
                    body=response.content,
                    fetched_at=datetime.now(UTC),
                )
                return data, raw
            failure = error_from_response(response)
            if last or not _is_retryable(response, failure):
                raise failure
            await asyncio.sleep(self._backoff(attempt, failure.retry_after))
        raise AssertionError("unreachable: the last attempt returns or raises")


# --- to the export's frame -------------------------------------------------------------------------

FRAME_SCHEMA: dict[str, pl.DataType] = {
    "coin_id": pl.String(),
    "symbol": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"),
    "price": pl.Float64(),
    "market_cap": pl.Float64(),
    "total_volume": pl.Float64(),
}


def _series(points: list[tuple[int, float | None]], name: str) -> pl.DataFrame:
    frame = pl.DataFrame(
        {"ms": [point[0] for point in points], name: [point[1] for point in points]},
        schema={"ms": pl.Int64(), name: pl.Float64()},
    )
    # A repeated timestamp would multiply rows in the join; the later value is the corrected one.
    return frame.unique("ms", keep="last", maintain_order=True)


def market_chart_to_frame(chart: MarketChart, coin: CoinInfo, *, keep_live_point: bool = False) -> pl.DataFrame:
    """A market chart as export rows: ``coin_id, symbol, timestamp, price, market_cap, total_volume``.

    The three arrays are matched on timestamp (a value missing from one array is null). CoinGecko
    appends the current moment to daily charts; that point is off the 00:00 UTC grid and covers a
    day still in progress, so it is dropped unless ``keep_live_point``.
    """
    merged = (
        _series(chart.prices, "price")
        .join(_series(chart.market_caps, "market_cap"), on="ms", how="full", coalesce=True)
        .join(_series(chart.total_volumes, "total_volume"), on="ms", how="full", coalesce=True)
        .sort("ms")
    )
    if not keep_live_point and merged.height >= 2:
        last, before = merged.get_column("ms").tail(2).to_list()[::-1]
        if last % DAY_MS != 0 and before % DAY_MS == 0:
            merged = merged.head(merged.height - 1)
    return merged.select(
        pl.lit(coin.coin_id, pl.String()).alias("coin_id"),
        pl.lit(coin.symbol, pl.String()).alias("symbol"),
        pl.from_epoch("ms", time_unit="ms").dt.replace_time_zone("UTC").dt.cast_time_unit("us").alias("timestamp"),
        pl.col("price"),
        pl.col("market_cap"),
        pl.col("total_volume"),
    )
