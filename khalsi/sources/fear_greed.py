"""The Crypto Fear & Greed Index (alternative.me): an async client, and a replay server of the bundled CSV.

The API (``GET {base}/fng/?limit=N&format=json``, ``limit=0`` for the whole history) answers::

    {"name": "Fear and Greed Index",
     "data": [{"value": "40", "value_classification": "Fear", "timestamp": "1551157200",
               "time_until_update": "68499"}, ...],
     "metadata": {"error": null}}

newest first, values and unix-second timestamps as strings, ``time_until_update`` on today's entry
only. A day's value is published at 00:00 UTC of that day, which is when it becomes known.

The replay app serves the bundled CSV in exactly that shape, optionally as of a clock (so a replay
at 2020-03-15 cannot see 2020-03-16), with planned faults for tests of the client's retries.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import polars as pl
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from khalsi.lake import FEAR_GREED_SCHEMA
from khalsi.settings import Settings
from khalsi.sources.exports import BUNDLED_SOCIAL_DIR, read_fear_greed_csv

FEAR_GREED_NAME = "Fear and Greed Index"
BUNDLED_FEAR_GREED_CSV = BUNDLED_SOCIAL_DIR / "fear_greed_index.csv"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_BODY_SNIPPET = 200


# --- errors ----------------------------------------------------------------------------------------


class FearGreedError(Exception):
    """Any failed Fear & Greed call."""

    def __init__(self, message: str, *, status_code: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url


class FearGreedHTTPError(FearGreedError):
    """A non-retryable HTTP error (4xx other than 408/429), with the start of the body."""


class FearGreedUnavailableError(FearGreedError):
    """429, 5xx, timeouts or connection errors, still so after every retry."""


class FearGreedResponseError(FearGreedError):
    """A 200 whose body is not JSON, not the documented shape, or reports an error in ``metadata``."""


# --- the client ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FearGreedPoint:
    """One day of the index."""

    day: date
    value: int
    classification: str

    @property
    def available_at(self) -> datetime:
        """alternative.me publishes a day's value at 00:00 UTC of that day."""
        return datetime.combine(self.day, time(0), tzinfo=UTC)


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _BODY_SNIPPET else flat[:_BODY_SNIPPET] + "…"


def _retry_after_seconds(response: httpx.Response) -> float | None:
    header = response.headers.get("retry-after")
    if header is None:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        return None  # an HTTP-date: rare here, and the back-off covers it


def parse_fear_greed_body(body: bytes | str, *, url: str | None = None) -> list[FearGreedPoint]:
    """Parse an ``/fng/`` JSON body into points (in the body's order), or raise FearGreedResponseError."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        payload: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise FearGreedResponseError(
            f"Fear & Greed answered with a body that is not JSON: {_snippet(text)!r}", url=url
        ) from error
    if not isinstance(payload, dict):
        raise FearGreedResponseError(f"Fear & Greed body is not a JSON object: {_snippet(text)!r}", url=url)
    metadata = payload.get("metadata")
    if isinstance(metadata, dict) and metadata.get("error"):
        raise FearGreedResponseError(f"Fear & Greed reported an error: {metadata['error']}", url=url)
    data = payload.get("data")
    if not isinstance(data, list):
        raise FearGreedResponseError(f"Fear & Greed body has no 'data' list: {_snippet(text)!r}", url=url)
    points: list[FearGreedPoint] = []
    for index, entry in enumerate(data):
        try:
            if not isinstance(entry, dict):
                raise TypeError("entry is not an object")
            stamp = datetime.fromtimestamp(int(entry["timestamp"]), tz=UTC)
            classification = entry["value_classification"]
            if not isinstance(classification, str):
                raise TypeError("value_classification is not a string")
            points.append(FearGreedPoint(day=stamp.date(), value=int(entry["value"]), classification=classification))
        except (KeyError, TypeError, ValueError, OverflowError, OSError) as error:
            raise FearGreedResponseError(
                f"Fear & Greed entry {index} is malformed ({error}): {_snippet(json.dumps(entry))!r}", url=url
            ) from error
    return points


class FearGreedClient:
    """Async client for ``{base}/fng/``: retries with back-off on 429, 5xx and timeouts."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout_seconds: float = 10.0,
        max_retries: int = 4,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_seconds),
            transport=transport,
            headers={"accept": "application/json", "user-agent": "khalsi/0.1"},
        )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> FearGreedClient:
        """A client for the configured Fear & Greed host."""
        return cls(base_url=settings.social.fear_greed_url, **overrides)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_seconds)
        # Exponential with jitter, so several workers that failed together do not retry together.
        ceiling = min(self.backoff_initial_seconds * 2.0**attempt, self.backoff_max_seconds)
        return ceiling * random.uniform(0.5, 1.0)

    async def fetch(self, *, limit: int = 0) -> list[FearGreedPoint]:
        """The newest ``limit`` days (0 = the whole history), newest first as the API sends them."""
        if limit < 0:
            raise ValueError("limit must be >= 0 (0 means all)")
        params = {"limit": str(limit), "format": "json"}
        url = f"{self.base_url}/fng/"
        last_problem = "no attempt made"
        last_status: int | None = None
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                response = await self._http.get("/fng/", params=params)
            except httpx.TimeoutException as error:
                last_problem, last_status = f"timed out ({type(error).__name__})", None
            except httpx.TransportError as error:
                last_problem, last_status = f"connection failed ({type(error).__name__}: {error})", None
            else:
                if response.status_code == 200:
                    return parse_fear_greed_body(response.content, url=url)
                body = _snippet(response.text)
                if response.status_code not in RETRYABLE_STATUS:
                    raise FearGreedHTTPError(
                        f"Fear & Greed answered HTTP {response.status_code}: {body!r}",
                        status_code=response.status_code,
                        url=url,
                    )
                last_problem, last_status = f"HTTP {response.status_code}: {body!r}", response.status_code
                retry_after = _retry_after_seconds(response)
            if attempt < self.max_retries:
                await self._sleep(self._backoff(attempt, retry_after))
        raise FearGreedUnavailableError(
            f"Fear & Greed unavailable after {self.max_retries + 1} attempts; last: {last_problem}",
            status_code=last_status,
            url=url,
        )

    async def fetch_frame(self, *, limit: int = 0) -> pl.DataFrame:
        """Like :meth:`fetch`, as a frame ``day, value, classification, available_at`` sorted by day."""
        return fear_greed_points_frame(await self.fetch(limit=limit))


def fear_greed_points_frame(points: list[FearGreedPoint]) -> pl.DataFrame:
    """Points as the lake's Fear & Greed frame, oldest first."""
    return pl.DataFrame(
        {
            "day": [point.day for point in points],
            "value": [point.value for point in points],
            "classification": [point.classification for point in points],
            "available_at": [point.available_at for point in points],
        },
        schema=FEAR_GREED_SCHEMA,
    ).sort("day")


# --- the replay server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFault:
    """A response the replay app gives instead of the real one (for retry tests)."""

    status_code: int = 503
    body: str = "Service Unavailable"
    media_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before answering: longer than the client's timeout makes a real timeout.
    delay_seconds: float = 0.0


class FaultPlan:
    """Faults to serve, in order, before normal answers resume; counts every request (thread-safe)."""

    def __init__(self) -> None:
        self._faults: deque[PlannedFault] = deque()
        self._lock = threading.Lock()
        self.requests_seen = 0

    def add(self, *faults: PlannedFault) -> None:
        """Queue faults for the next requests."""
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        """Drop the queued faults and reset the request count."""
        with self._lock:
            self._faults.clear()
            self.requests_seen = 0

    def next(self) -> PlannedFault | None:
        """Count a request and return the fault to serve for it, if any."""
        with self._lock:
            self.requests_seen += 1
            return self._faults.popleft() if self._faults else None


def fear_greed_replay_app(
    csv_path: Path = BUNDLED_FEAR_GREED_CSV,
    *,
    clock_now: Callable[[], datetime] | None = None,
    faults: FaultPlan | None = None,
) -> Starlette:
    """An ASGI app answering ``/fng/`` like alternative.me from an alternative.me CSV, as of ``clock_now``."""
    history = read_fear_greed_csv(csv_path).sort("day", descending=True)
    days: list[date] = history.get_column("day").to_list()
    values: list[int] = history.get_column("value").to_list()
    labels: list[str] = history.get_column("classification").to_list()

    def error_body(message: str) -> JSONResponse:
        # alternative.me reports bad parameters in metadata.error with an empty data list.
        return JSONResponse({"name": FEAR_GREED_NAME, "data": [], "metadata": {"error": message}})

    async def fng(request: Request) -> Response:
        fault = faults.next() if faults is not None else None
        if fault is not None:
            if fault.delay_seconds:
                await asyncio.sleep(fault.delay_seconds)
            return Response(
                fault.body, status_code=fault.status_code, media_type=fault.media_type, headers=fault.headers
            )
        raw_limit = request.query_params.get("limit", "1")
        try:
            limit = int(raw_limit)
        except ValueError:
            return error_body(f"limit must be an integer, got {raw_limit!r}")
        if limit < 0:
            return error_body("limit must be >= 0")
        if request.query_params.get("format", "json") != "json":
            return error_body("the replay serves format=json only")
        if "date_format" in request.query_params:
            return error_body("the replay does not support date_format")
        now = clock_now() if clock_now is not None else datetime.now(UTC)
        if now.tzinfo is None:
            raise ValueError("clock_now must return an aware datetime")
        today = now.astimezone(UTC).date()
        # A day is published at its own 00:00 UTC, so every day up to today is known now.
        start = next((i for i, day in enumerate(days) if day <= today), len(days))
        stop = len(days) if limit == 0 else min(len(days), start + limit)
        data: list[dict[str, str]] = []
        for i in range(start, stop):
            midnight = datetime.combine(days[i], time(0), tzinfo=UTC)
            entry = {
                "value": str(values[i]),
                "value_classification": labels[i],
                "timestamp": str(int(midnight.timestamp())),
            }
            if days[i] == today:
                entry["time_until_update"] = str(int((midnight + timedelta(days=1) - now).total_seconds()))
            data.append(entry)
        return JSONResponse({"name": FEAR_GREED_NAME, "data": data, "metadata": {"error": None}})

    return Starlette(routes=[Route("/fng/", fng), Route("/fng", fng)])


@contextmanager
def serve_in_thread(app: ASGIApp, *, startup_timeout_seconds: float = 10.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port in a daemon thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        waited = 0.0
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the test server stopped during start-up")
            if waited >= startup_timeout_seconds:
                raise RuntimeError(f"the test server did not start within {startup_timeout_seconds}s")
            threading.Event().wait(0.02)
            waited += 0.02
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout_seconds)
        sock.close()


@contextmanager
def fear_greed_replay_server(
    csv_path: Path = BUNDLED_FEAR_GREED_CSV,
    *,
    clock_now: Callable[[], datetime] | None = None,
    faults: FaultPlan | None = None,
) -> Iterator[str]:
    """The replay app served over real HTTP; yields the base URL to give a :class:`FearGreedClient`."""
    with serve_in_thread(fear_greed_replay_app(csv_path, clock_now=clock_now, faults=faults)) as base_url:
        yield base_url
