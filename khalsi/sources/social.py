"""Social data sources (bundled FinBERT scores, news headlines, Reddit, Fear & Greed) and daily aggregates.

Every post source returns a polars frame with :data:`SOCIAL_POST_SCHEMA`, whose columns are those of
the ``social_posts`` table (``SocialPost(**row)`` works for each row of ``frame.to_dicts()``), so
validation can run on the frame before anything is stored. ``external_id`` is stable: the same
input row gives the same id on every run, so re-ingesting is an upsert on ``(source, external_id)``.

Fetching is incremental: ``since`` returns rows published at or after it (inclusive: re-reading the
watermark's own instant is harmless thanks to the stable ids). Sources also take an optional
``clock_now`` so a replay of history never sees a post before its time.

Timestamps in the bundled files carry no zone; they are read as UTC (Reddit's ``created_utc``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

import polars as pl

from khalsi.lake import FEAR_GREED_SCHEMA, MARKET_WIDE, SOCIAL_DAILY_SCHEMA
from khalsi.sources.exports import BUNDLED_SOCIAL_DIR, CoinInfo
from khalsi.sources.fear_greed import FearGreedClient, fear_greed_points_frame
from khalsi.sources.sentiment import VADER_SCORER, SentimentScorer, default_scorer, mentions_many

FINBERT_SCORER = "finbert-precomputed"

SOCIAL_POST_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "external_id": pl.String(),
    "published_at": pl.Datetime("us", "UTC"),
    "text": pl.String(),
    "sentiment": pl.Float64(),
    "positive": pl.Float64(),
    "negative": pl.Float64(),
    "neutral": pl.Float64(),
    "scorer": pl.String(),
    "coins": pl.List(pl.String()),
}

# The social_daily table's extra column beside the lake schema: the day's index on '_market' rows.
SOCIAL_DAILY_DB_SCHEMA: dict[str, pl.DataType] = {**SOCIAL_DAILY_SCHEMA, "fear_greed": pl.Int64()}

Clock = Callable[[], datetime]


class SocialDataError(ValueError):
    """A social data file that is missing, lacks columns, or has unparsable values."""


@runtime_checkable
class SocialSource(Protocol):
    """A source of scored social posts."""

    @property
    def name(self) -> str:
        """The ``social_posts.source`` value of every row it returns."""
        ...

    async def fetch(self, *, since: datetime | None = None) -> pl.DataFrame:
        """Posts published at or after ``since`` (all when ``None``), as :data:`SOCIAL_POST_SCHEMA`."""
        ...


def stable_id(*parts: str) -> str:
    """A short, run-independent id for a row: SHA-256 of its parts (unit-separator joined), 32 hex chars."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def empty_posts() -> pl.DataFrame:
    """An empty post frame with the schema."""
    return pl.DataFrame(schema=SOCIAL_POST_SCHEMA)


def _require_aware(moment: datetime | None, what: str) -> None:
    if moment is not None and moment.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {moment!r}")


def _read_strings(paths: Sequence[Path], required: Sequence[str]) -> pl.DataFrame:
    """Read CSVs with every column as text (parsing is ours to do, with clear errors)."""
    if not paths:
        raise SocialDataError("no input files found")
    frames: list[pl.DataFrame] = []
    for path in paths:
        try:
            frame = pl.read_csv(path, infer_schema_length=0)
        except (OSError, pl.exceptions.PolarsError) as error:
            raise SocialDataError(f"{path}: cannot be read as CSV ({error})") from error
        missing = [column for column in required if column not in frame.columns]
        if missing:
            raise SocialDataError(f"{path}: missing columns {missing}; found {frame.columns}")
        frames.append(frame.select(required).with_columns(pl.lit(path.name).alias("_file")))
    return pl.concat(frames)


def _parse_utc(frame: pl.DataFrame, column: str, fmt: str) -> pl.Series:
    parsed = frame.get_column(column).str.strptime(pl.Datetime("us"), fmt, strict=False)
    bad = frame.filter(parsed.is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise SocialDataError(
            f"{row['_file']}: {bad.height} unparsable {column!r} value(s), e.g. {row[column]!r} (expected {fmt})"
        )
    return parsed.dt.replace_time_zone("UTC")


def _to_float(frame: pl.DataFrame, column: str) -> pl.Series:
    parsed = frame.get_column(column).cast(pl.Float64(), strict=False)
    bad = frame.filter(parsed.is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise SocialDataError(f"{row['_file']}: {bad.height} non-numeric {column!r} value(s), e.g. {row[column]!r}")
    return parsed


def _window(frame: pl.DataFrame, *, since: datetime | None, visible_until: datetime | None) -> pl.DataFrame:
    """Rows with ``published_at >= since`` whose ``_known_at`` is not after the clock."""
    if since is not None:
        frame = frame.filter(pl.col("published_at") >= since)
    if visible_until is not None:
        frame = frame.filter(pl.col("_known_at") <= visible_until)
    return frame


def _scored(
    frame: pl.DataFrame, *, source: str, scorer: SentimentScorer, coins: Iterable[CoinInfo] | None
) -> pl.DataFrame:
    """VADER scores and mentions for a frame with ``external_id, published_at, text``."""
    texts: list[str] = frame.get_column("text").to_list()
    scores = scorer.score_frame(texts)
    return pl.DataFrame(
        {
            "source": [source] * frame.height,
            "external_id": frame.get_column("external_id"),
            "published_at": frame.get_column("published_at"),
            "text": frame.get_column("text"),
            "sentiment": scores.get_column("compound"),
            "positive": scores.get_column("positive"),
            "negative": scores.get_column("negative"),
            "neutral": scores.get_column("neutral"),
            "scorer": [VADER_SCORER] * frame.height,
            "coins": mentions_many(texts, coins),
        },
        schema=SOCIAL_POST_SCHEMA,
    ).sort("published_at", "external_id")


class _BundledSource:
    """Shared plumbing: clock, scorer, and running the blocking load in a thread."""

    name: str

    def __init__(
        self,
        *,
        clock_now: Clock | None = None,
        scorer: SentimentScorer | None = None,
        coins: Iterable[CoinInfo] | None = None,
    ) -> None:
        self._clock_now = clock_now
        self._scorer = scorer
        self._coins = None if coins is None else tuple(coins)

    @property
    def scorer(self) -> SentimentScorer:
        return self._scorer or default_scorer()

    def _visible_until(self) -> datetime | None:
        if self._clock_now is None:
            return None
        now = self._clock_now()
        _require_aware(now, "clock_now()")
        return now

    async def fetch(self, *, since: datetime | None = None) -> pl.DataFrame:
        """Posts published at or after ``since`` (all when ``None``), as :data:`SOCIAL_POST_SCHEMA`."""
        _require_aware(since, "since")
        # Reading and scoring are CPU-bound: keep them off the event loop.
        return await asyncio.to_thread(self.load, since=since)

    def load(self, *, since: datetime | None = None) -> pl.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError


class _BundledFolderSource(_BundledSource):
    """A bundled source read from every CSV of one folder (``default_directory`` unless given)."""

    default_directory: Path

    def __init__(
        self,
        directory: Path | None = None,
        *,
        clock_now: Clock | None = None,
        scorer: SentimentScorer | None = None,
        coins: Iterable[CoinInfo] | None = None,
    ) -> None:
        super().__init__(clock_now=clock_now, scorer=scorer, coins=coins)
        self.directory = directory or self.default_directory


class BundledFinbertSource(_BundledSource):
    """``news_sentiment_scores.csv``: posts and headlines scored with FinBERT by the data's author.

    There is no text, so no coin mentions: every row is market-wide. Rows carry only a date, so
    they are stamped 00:00 UTC of it and become visible (under a clock) only when the day is over.
    Identical rows (same day, same FinBERT probabilities to 16 digits, i.e. the same text) get the
    same id and are kept once.
    """

    name = "bundled-finbert"
    COLUMNS = ("Date", "source", "positive", "negative", "neutral", "sentiment_score")

    def __init__(
        self, path: Path = BUNDLED_SOCIAL_DIR / "news_sentiment_scores.csv", *, clock_now: Clock | None = None
    ) -> None:
        super().__init__(clock_now=clock_now)
        self.path = path

    def load(self, *, since: datetime | None = None) -> pl.DataFrame:
        """Read, parse and window the file (blocking; :meth:`fetch` runs it in a thread)."""
        raw = _read_strings([self.path], self.COLUMNS)
        published = _parse_utc(raw, "Date", "%Y-%m-%d")
        ids = [stable_id(*row) for row in raw.select(self.COLUMNS).iter_rows()]
        frame = pl.DataFrame(
            {
                "source": [self.name] * raw.height,
                "external_id": ids,
                "published_at": published,
                "text": pl.Series([None] * raw.height, dtype=pl.String()),
                "sentiment": _to_float(raw, "sentiment_score"),
                "positive": _to_float(raw, "positive"),
                "negative": _to_float(raw, "negative"),
                "neutral": _to_float(raw, "neutral"),
                "scorer": [FINBERT_SCORER] * raw.height,
                "coins": pl.Series([[] for _ in range(raw.height)], dtype=pl.List(pl.String())),
            },
            schema=SOCIAL_POST_SCHEMA,
        ).with_columns((pl.col("published_at") + timedelta(days=1)).alias("_known_at"))
        frame = frame.unique("external_id", keep="first", maintain_order=True)
        frame = _window(frame, since=since, visible_until=self._visible_until())
        return frame.drop("_known_at").sort("published_at", "external_id")


class BundledHeadlinesSource(_BundledFolderSource):
    """``news_headlines_2024/*.csv``: headlines with descriptions, scored with VADER.

    The folder holds overlapping pulls; a story's id is the hash of its timestamp and headline,
    so a story present in both pulls is kept once. Headlines are lower-cased in the data; the
    description keeps its case, so both are scored and searched together.
    """

    name = "bundled-news-2024"
    COLUMNS = ("date", "headline", "description")

    default_directory = BUNDLED_SOCIAL_DIR / "news_headlines_2024"

    def load(self, *, since: datetime | None = None) -> pl.DataFrame:
        """Read, dedupe, window and score the pulls (blocking; :meth:`fetch` runs it in a thread)."""
        raw = _read_strings(sorted(self.directory.glob("*.csv")), self.COLUMNS)
        raw = raw.filter(pl.col("headline").str.strip_chars().str.len_chars() > 0)
        published = _parse_utc(raw, "date", "%Y-%m-%d %H:%M:%S")
        headlines = raw.get_column("headline").str.strip_chars()
        frame = pl.DataFrame(
            {
                "external_id": [stable_id(d, h) for d, h in zip(raw.get_column("date"), headlines, strict=True)],
                "published_at": published,
                "text": raw.select(
                    pl.concat_str(
                        [pl.col("headline").str.strip_chars(), pl.col("description").str.strip_chars()],
                        separator="\n",
                        ignore_nulls=True,
                    )
                ).to_series(),
            }
        ).with_columns(pl.col("published_at").alias("_known_at"))
        frame = frame.unique("external_id", keep="first", maintain_order=True)
        frame = _window(frame, since=since, visible_until=self._visible_until())
        return _scored(frame, source=self.name, scorer=self.scorer, coins=self._coins)


class BundledRedditSource(_BundledFolderSource):
    """``reddit_2025/*.csv``: posts and comments from four crypto subreddits, VADER-scored.

    ``unified_id`` (``p_``/``c_`` + Reddit id) is the external id. The data has one id twice (a
    post crawled again after an edit); the earliest version is kept, as it is what was first known.
    The file's ``crypto_mentions`` column is empty, so mentions are detected from the text.
    """

    name = "bundled-reddit-2025"
    COLUMNS = ("unified_id", "text_content", "created_date")

    default_directory = BUNDLED_SOCIAL_DIR / "reddit_2025"

    def load(self, *, since: datetime | None = None) -> pl.DataFrame:
        """Read, dedupe, window and score the files (blocking; :meth:`fetch` runs it in a thread)."""
        raw = _read_strings(sorted(self.directory.glob("*.csv")), self.COLUMNS)
        raw = raw.filter(pl.col("unified_id").is_not_null() & pl.col("text_content").is_not_null())
        frame = (
            pl.DataFrame(
                {
                    "external_id": raw.get_column("unified_id").str.strip_chars(),
                    "published_at": _parse_utc(raw, "created_date", "%Y-%m-%d %H:%M:%S"),
                    "text": raw.get_column("text_content"),
                }
            )
            .sort("published_at", "external_id", "text")
            .unique("external_id", keep="first", maintain_order=True)
            .with_columns(pl.col("published_at").alias("_known_at"))
        )
        frame = _window(frame, since=since, visible_until=self._visible_until())
        return _scored(frame, source=self.name, scorer=self.scorer, coins=self._coins)


class FearGreedSource:
    """The Fear & Greed Index through :class:`FearGreedClient`, as rows for the ``fear_greed`` table.

    The API has no date filter, only ``limit`` counted back from its newest day, so an incremental
    fetch asks for enough days to reach ``since`` and doubles the request until it does (the
    server's "today" may differ from ours, as in a replay).
    """

    name = "alternative.me-fear-greed"

    def __init__(self, client: FearGreedClient, *, clock_now: Clock | None = None) -> None:
        self._client = client
        self._clock_now = clock_now

    async def fetch(self, *, since: datetime | None = None) -> pl.DataFrame:
        """Days on or after ``since``'s UTC day (all when ``None``) with FEAR_GREED_SCHEMA, oldest first."""
        _require_aware(since, "since")
        if since is None:
            return fear_greed_points_frame(await self._client.fetch(limit=0))
        now = self._clock_now() if self._clock_now is not None else datetime.now(UTC)
        _require_aware(now, "clock_now()")
        first_day = since.astimezone(UTC).date()
        limit = max(2, (now.astimezone(UTC).date() - first_day).days + 2)
        while True:
            points = await self._client.fetch(limit=limit)
            reached = len(points) < limit or any(point.day < first_day for point in points)
            if reached:
                break
            limit *= 2
        return fear_greed_points_frame([point for point in points if point.day >= first_day])


# --- daily point-in-time aggregates ----------------------------------------------------------------


def _next_midnight(day: pl.Expr) -> pl.Expr:
    return day.dt.offset_by("1d").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _require_columns(frame: pl.LazyFrame, columns: Iterable[str], what: str) -> None:
    present = frame.collect_schema().names()
    missing = [column for column in columns if column not in present]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; has {present}")


def daily_social_aggregates(posts: pl.LazyFrame, fear_greed: pl.LazyFrame) -> pl.LazyFrame:
    """Per UTC day and coin (and ``'_market'``): mean sentiment, mention and post counts, point-in-time.

    - ``post_count``: posts seen that day (all sources given), the same on every row of the day;
    - ``mention_count``: of those, the posts that mention the coin (on ``'_market'``: any coin);
    - ``mean_sentiment``: mean ``sentiment`` of the posts that mention the coin (``'_market'``: all);
    - ``available_at``: the next 00:00 UTC, when the day's posts are all known;
    - ``fear_greed``: that day's index on ``'_market'`` rows (null elsewhere, and on days without it).

    A coin gets a row only on days it is mentioned and a day only if it has posts: missing stays
    missing (no fill here; features decide). Posts repeated under the same ``(source,
    external_id)`` count once. The output has the lake's SOCIAL_DAILY schema plus ``fear_greed``
    (for the ``social_daily`` table; the lake writer keeps only its own columns).
    """
    _require_columns(posts, ("source", "external_id", "published_at", "sentiment", "coins"), "posts")
    _require_columns(fear_greed, ("day", "value"), "fear_greed")
    unique_posts = (
        posts.select("source", "external_id", "published_at", "sentiment", "coins")
        .unique(["source", "external_id"], keep="first", maintain_order=True)
        .select(
            pl.col("published_at").dt.convert_time_zone("UTC").dt.date().alias("day"),
            pl.col("sentiment").cast(pl.Float64()),
            pl.col("coins").list.unique().alias("coins"),
        )
    )
    market = unique_posts.group_by("day").agg(
        pl.col("sentiment").mean().alias("mean_sentiment"),
        (pl.col("coins").list.len() > 0).sum().cast(pl.Int64()).alias("mention_count"),
        pl.len().cast(pl.Int64()).alias("post_count"),
    )
    per_coin = (
        unique_posts.explode("coins")
        .drop_nulls("coins")
        .rename({"coins": "coin_id"})
        .group_by("day", "coin_id")
        .agg(
            pl.col("sentiment").mean().alias("mean_sentiment"),
            pl.len().cast(pl.Int64()).alias("mention_count"),
        )
        .join(market.select("day", "post_count"), on="day", how="left")
    )
    index = (
        fear_greed.select(pl.col("day").cast(pl.Date()), pl.col("value").cast(pl.Int64()).alias("fear_greed"))
        .drop_nulls("day")
        # One value per day: a duplicated day must not duplicate the market row.
        .group_by("day")
        .agg(pl.col("fear_greed").first())
    )
    market_rows = market.with_columns(pl.lit(MARKET_WIDE).alias("coin_id")).join(index, on="day", how="left")
    coin_rows = per_coin.with_columns(pl.lit(None, dtype=pl.Int64()).alias("fear_greed"))
    columns = list(SOCIAL_DAILY_DB_SCHEMA)
    return (
        pl.concat(
            [
                market_rows.with_columns(_next_midnight(pl.col("day")).alias("available_at")).select(columns),
                coin_rows.with_columns(_next_midnight(pl.col("day")).alias("available_at")).select(columns),
            ]
        )
        .select([pl.col(name).cast(dtype) for name, dtype in SOCIAL_DAILY_DB_SCHEMA.items()])
        .sort("day", "coin_id")
    )


def fear_greed_daily(fear_greed: pl.LazyFrame) -> pl.LazyFrame:
    """Fear & Greed rows in FEAR_GREED_SCHEMA with ``available_at`` = 00:00 UTC of their own day."""
    _require_columns(fear_greed, ("day", "value", "classification"), "fear_greed")
    return (
        fear_greed.with_columns(pl.col("day").cast(pl.Date()))
        .with_columns(pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("available_at"))
        .select([pl.col(name).cast(dtype) for name, dtype in FEAR_GREED_SCHEMA.items()])
        .sort("day")
    )
