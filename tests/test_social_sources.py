"""Social post sources on the bundled real files, Fear & Greed over HTTP, and the daily aggregates."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from khalsi.lake import FEAR_GREED_SCHEMA, MARKET_WIDE, SOCIAL_DAILY_SCHEMA, scan_social_daily, write_social_daily
from khalsi.sources.exports import BUNDLED_SOCIAL_DIR, read_fear_greed_csv
from khalsi.sources.fear_greed import BUNDLED_FEAR_GREED_CSV, FearGreedClient, fear_greed_replay_server
from khalsi.sources.sentiment import VADER_SCORER
from khalsi.sources.social import (
    FINBERT_SCORER,
    SOCIAL_DAILY_DB_SCHEMA,
    SOCIAL_POST_SCHEMA,
    BundledFinbertSource,
    BundledHeadlinesSource,
    BundledRedditSource,
    FearGreedSource,
    SocialDataError,
    SocialSource,
    daily_social_aggregates,
    fear_greed_daily,
)

FINBERT_CSV = BUNDLED_SOCIAL_DIR / "news_sentiment_scores.csv"
HEADLINES_DIR = BUNDLED_SOCIAL_DIR / "news_headlines_2024"
REDDIT_DIR = BUNDLED_SOCIAL_DIR / "reddit_2025"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.fixture(scope="module")
async def reddit_posts() -> pl.DataFrame:
    """Every bundled Reddit post, scored once for the module (a few seconds)."""
    return await BundledRedditSource().fetch()


# --- the sources -----------------------------------------------------------------------------------


def test_every_post_source_satisfies_the_protocol() -> None:
    for source in (BundledFinbertSource(), BundledHeadlinesSource(), BundledRedditSource()):
        assert isinstance(source, SocialSource)
    assert len({BundledFinbertSource.name, BundledHeadlinesSource.name, BundledRedditSource.name}) == 3


async def test_finbert_rows_keep_the_authors_scores_market_wide() -> None:
    posts = await BundledFinbertSource().fetch()
    assert posts.schema == pl.Schema(SOCIAL_POST_SCHEMA)
    raw = pl.read_csv(FINBERT_CSV, infer_schema_length=0)
    # Identical rows (same day, same 16-digit probabilities: the same text) are one post.
    distinct = raw.unique()
    assert posts.height == distinct.height < raw.height
    assert posts.get_column("external_id").is_unique().all()
    expected = distinct.select(
        pl.col("Date").str.to_date().alias("day"), pl.col("sentiment_score").cast(pl.Float64).alias("sentiment")
    ).sort("day", "sentiment")
    got = posts.select(pl.col("published_at").dt.date().alias("day"), "sentiment").sort("day", "sentiment")
    assert got.equals(expected)
    assert set(posts.get_column("scorer")) == {FINBERT_SCORER}
    assert posts.get_column("coins").list.len().max() == 0
    assert posts.get_column("text").null_count() == posts.height
    assert (posts.get_column("published_at").dt.time() == datetime.min.time()).all()


async def test_finbert_ids_survive_reordering_and_appends(tmp_path: Path) -> None:
    original = await BundledFinbertSource().fetch()
    again = await BundledFinbertSource().fetch()
    assert again.equals(original)
    # The same rows in another order with a new row appended: old ids unchanged, one new id.
    lines = FINBERT_CSV.read_text(encoding="utf-8").splitlines()
    shuffled = tmp_path / "scores.csv"
    new_row = "2025-01-01,reddit,0.9,0.0,0.0,0.9"
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:]), new_row]) + "\n", encoding="utf-8")
    moved = await BundledFinbertSource(shuffled).fetch()
    old_ids = set(original.get_column("external_id"))
    new_ids = set(moved.get_column("external_id"))
    assert old_ids < new_ids
    assert len(new_ids - old_ids) == 1


async def test_finbert_incremental_and_clock() -> None:
    since = utc(2024, 12, 1)
    recent = await BundledFinbertSource().fetch(since=since)
    everything = await BundledFinbertSource().fetch()
    assert recent.height == everything.filter(pl.col("published_at") >= since).height > 0
    assert recent.equals(everything.filter(pl.col("published_at") >= since))
    # Day-stamped rows are known only when their day is over.
    at_noon = await BundledFinbertSource(clock_now=lambda: utc(2024, 12, 31, 12)).fetch(since=since)
    days = set(at_noon.get_column("published_at").dt.date())
    assert date(2024, 12, 31) not in days
    assert max(days) == max(set(everything.get_column("published_at").dt.date()) - {date(2024, 12, 31)})


async def test_headline_pulls_overlap_and_are_deduplicated(tmp_path: Path) -> None:
    posts = await BundledHeadlinesSource().fetch()
    assert posts.schema == pl.Schema(SOCIAL_POST_SCHEMA)
    raw = pl.concat([pl.read_csv(path) for path in sorted(HEADLINES_DIR.glob("*.csv"))])
    stories = raw.unique(["date", "headline"])
    assert raw.height > stories.height == posts.height
    assert posts.get_column("external_id").is_unique().all()
    assert set(posts.get_column("scorer")) == {VADER_SCORER}
    # Each pull alone yields ids that are a subset of the combined ones: a story has one id.
    combined = set(posts.get_column("external_id"))
    for path in sorted(HEADLINES_DIR.glob("*.csv")):
        single = tmp_path / path.stem
        single.mkdir()
        shutil.copy(path, single / path.name)
        alone = await BundledHeadlinesSource(single).fetch()
        assert set(alone.get_column("external_id")) < combined
    # The same pull delivered twice changes nothing.
    doubled = tmp_path / "doubled"
    doubled.mkdir()
    for path in HEADLINES_DIR.glob("*.csv"):
        shutil.copy(path, doubled / path.name)
        shutil.copy(path, doubled / f"again-{path.name}")
    assert (await BundledHeadlinesSource(doubled).fetch()).equals(posts)
    monad = posts.filter(pl.col("text").str.starts_with("paradigm leads $225 million round for monad labs"))
    assert monad.height == 1
    assert monad.get_column("coins").to_list() == [["ethereum", "solana"]]
    assert monad.get_column("text").item().count("\n") == 1  # headline, then description


async def test_reddit_ids_scores_and_mentions(reddit_posts: pl.DataFrame) -> None:
    raw = pl.concat([pl.read_csv(path, infer_schema_length=0) for path in sorted(REDDIT_DIR.glob("*.csv"))])
    assert reddit_posts.schema == pl.Schema(SOCIAL_POST_SCHEMA)
    assert reddit_posts.height == raw.get_column("unified_id").n_unique()
    assert set(reddit_posts.get_column("external_id")) == set(raw.get_column("unified_id"))
    # The one id crawled twice (an edited post) keeps its first version.
    edited = reddit_posts.filter(pl.col("external_id") == "p_1oi5oxi")
    assert edited.get_column("published_at").to_list() == [utc(2025, 10, 28, 10, 27, 17)]
    assert reddit_posts.get_column("sentiment").is_between(-1, 1).all()
    assert set(reddit_posts.get_column("scorer")) == {VADER_SCORER}
    link = reddit_posts.filter(pl.col("external_id") == "c_nkmr4oc").get_column("coins").item().to_list()
    assert link == ["bitcoin", "chainlink"]
    # The file's crypto_mentions column is empty; ours is not.
    assert raw.get_column("crypto_mentions").null_count() == raw.height
    assert (reddit_posts.get_column("coins").list.len() > 0).sum() > 1000


async def test_reddit_incremental_fetch_matches_the_full_one(reddit_posts: pl.DataFrame) -> None:
    since = utc(2025, 10, 27, 12)
    recent = await BundledRedditSource().fetch(since=since)
    assert recent.height > 0
    assert recent.equals(reddit_posts.filter(pl.col("published_at") >= since))
    clocked = await BundledRedditSource(clock_now=lambda: utc(2025, 10, 28)).fetch(since=since)
    assert clocked.get_column("published_at").max() <= utc(2025, 10, 28)  # type: ignore[operator]
    assert clocked.height == recent.filter(pl.col("published_at") <= utc(2025, 10, 28)).height


async def test_bad_files_and_naive_times_are_refused_clearly(tmp_path: Path) -> None:
    bad_dates = tmp_path / "bad"
    bad_dates.mkdir()
    (bad_dates / "posts.csv").write_text(
        "unified_id,text_content,created_date\nc_1,hello BTC,2025-10-01 10:00:00\nc_2,bye,yesterday\n"
    )
    with pytest.raises(SocialDataError, match=r"posts\.csv.*'yesterday'"):
        await BundledRedditSource(bad_dates).fetch()
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "news.csv").write_text("date,title\n2024-01-01 00:00:00,x\n")
    with pytest.raises(SocialDataError, match=r"news\.csv: missing columns \['headline', 'description'\]"):
        await BundledHeadlinesSource(missing).fetch()
    with pytest.raises(SocialDataError, match="no input files"):
        await BundledRedditSource(tmp_path / "empty").fetch()
    with pytest.raises(ValueError, match="timezone-aware"):
        await BundledRedditSource().fetch(since=datetime(2025, 10, 1))  # naive on purpose


# --- Fear & Greed over HTTP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_url() -> Iterator[str]:
    # The replay is "at" the last bundled day; the sources below may think it is another day.
    with fear_greed_replay_server(BUNDLED_FEAR_GREED_CSV, clock_now=lambda: utc(2024, 12, 31, 9)) as url:
        yield url


async def test_fear_greed_source_incremental(replay_url: str) -> None:
    history = read_fear_greed_csv(BUNDLED_FEAR_GREED_CSV)
    async with FearGreedClient(base_url=replay_url, max_retries=0) as client:
        everything = await FearGreedSource(client).fetch()
        week = await FearGreedSource(client, clock_now=lambda: utc(2024, 12, 31, 9)).fetch(since=utc(2024, 12, 25, 15))
        # A source whose clock lags far behind the server still reaches back to `since`.
        lagging = FearGreedSource(client, clock_now=lambda: utc(2020, 3, 1))
        since_2020 = await lagging.fetch(since=utc(2020, 2, 25))
    assert everything.schema == pl.Schema(FEAR_GREED_SCHEMA)
    assert everything.height == history.height
    assert everything.select("day", "value", "classification").equals(history.sort("day"))
    assert week.get_column("day").to_list() == [date(2024, 12, d) for d in range(25, 32)]
    assert week.get_column("available_at").to_list() == [utc(2024, 12, d) for d in range(25, 32)]
    assert since_2020.equals(everything.filter(pl.col("day") >= date(2020, 2, 25)))


# --- daily aggregates ------------------------------------------------------------------------------


def posts_frame(rows: list[tuple[str, str, datetime, float, list[str]]], tz: str = "UTC") -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "source": [r[0] for r in rows],
            "external_id": [r[1] for r in rows],
            "published_at": [r[2] for r in rows],
            "sentiment": [r[3] for r in rows],
            "coins": [r[4] for r in rows],
        },
        schema={
            "source": pl.String(),
            "external_id": pl.String(),
            "published_at": pl.Datetime("us", tz),
            "sentiment": pl.Float64(),
            "coins": pl.List(pl.String()),
        },
    )


TINY_POSTS = [
    ("news", "1", utc(2024, 1, 1, 10), 0.5, ["bitcoin"]),
    ("news", "2", utc(2024, 1, 1, 23, 59, 59), -0.1, ["bitcoin", "ethereum"]),
    ("news", "3", utc(2024, 1, 1, 5), 0.2, []),
    ("news", "2", utc(2024, 1, 1, 23, 59, 59), -0.1, ["bitcoin", "ethereum"]),  # re-fed: counts once
    ("reddit", "1", utc(2024, 1, 2, 0, 0), 0.4, ["ethereum"]),  # same id, other source: its own post
    ("reddit", "9", utc(2024, 1, 4, 12), -0.6, []),  # 2024-01-03 has no posts at all
]
TINY_FEAR_GREED = pl.LazyFrame(
    {
        "day": [date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 5)],
        "value": [60, 40, 30, 20],
        "classification": ["Greed", "Fear", "Fear", "Extreme Fear"],
    }
)


def test_daily_aggregates_hand_checked() -> None:
    daily = daily_social_aggregates(posts_frame(TINY_POSTS), TINY_FEAR_GREED).collect()
    assert daily.schema == pl.Schema(SOCIAL_DAILY_DB_SCHEMA)
    rows = [
        (r["day"], r["coin_id"], round(r["mean_sentiment"], 9), r["mention_count"], r["post_count"], r["fear_greed"])
        for r in daily.iter_rows(named=True)
    ]
    assert rows == [
        # 2024-01-01: posts 1, 2, 3 -> mean (0.5 - 0.1 + 0.2) / 3; two of three mention a coin.
        (date(2024, 1, 1), MARKET_WIDE, 0.2, 2, 3, 60),
        (date(2024, 1, 1), "bitcoin", 0.2, 2, 3, None),  # (0.5 - 0.1) / 2
        (date(2024, 1, 1), "ethereum", -0.1, 1, 3, None),
        (date(2024, 1, 2), MARKET_WIDE, 0.4, 1, 1, 40),
        (date(2024, 1, 2), "ethereum", 0.4, 1, 1, None),
        # 2024-01-03 stays missing (its Fear & Greed value alone makes no social row); no fill.
        (date(2024, 1, 4), MARKET_WIDE, -0.6, 0, 1, None),
    ]


def test_daily_aggregates_are_available_only_when_the_day_is_over() -> None:
    daily = daily_social_aggregates(posts_frame(TINY_POSTS), TINY_FEAR_GREED).collect()
    for row in daily.iter_rows(named=True):
        assert row["available_at"] == datetime.combine(row["day"] + timedelta(days=1), datetime.min.time(), UTC)
    # A post at 23:59:59 belongs to its day, so that day is not known a second before midnight.
    just_before = daily.filter(pl.col("available_at") <= utc(2024, 1, 1, 23, 59, 59))
    assert just_before.height == 0
    at_midnight = daily.filter(pl.col("available_at") <= utc(2024, 1, 2))
    assert set(at_midnight.get_column("day")) == {date(2024, 1, 1)}


def test_daily_aggregates_bucket_by_utc_day_whatever_the_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    # 2024-01-02 08:00 in Tokyo is 2024-01-01 23:00 UTC.
    posts = posts_frame([("news", "1", datetime(2024, 1, 2, 8, tzinfo=tokyo), 0.3, [])], tz="Asia/Tokyo")
    daily = daily_social_aggregates(posts, TINY_FEAR_GREED).collect()
    assert daily.get_column("day").to_list() == [date(2024, 1, 1)]
    assert daily.get_column("available_at").to_list() == [utc(2024, 1, 2)]


def test_daily_aggregates_write_to_the_lake(tmp_path: Path) -> None:
    daily = daily_social_aggregates(posts_frame(TINY_POSTS), TINY_FEAR_GREED).collect()
    write_social_daily(tmp_path, daily)
    stored = scan_social_daily(tmp_path).collect()
    assert stored.schema == pl.Schema(SOCIAL_DAILY_SCHEMA)
    assert stored.equals(daily.select(list(SOCIAL_DAILY_SCHEMA)))


def test_daily_aggregates_refuse_frames_without_needed_columns() -> None:
    with pytest.raises(ValueError, match=r"posts lacks columns \['coins'\]"):
        daily_social_aggregates(posts_frame(TINY_POSTS).drop("coins"), TINY_FEAR_GREED)


def test_fear_greed_rows_are_available_at_their_own_midnight() -> None:
    rows = fear_greed_daily(TINY_FEAR_GREED).collect()
    assert rows.schema == pl.Schema(FEAR_GREED_SCHEMA)
    assert rows.get_column("available_at").to_list() == [
        datetime.combine(day, datetime.min.time(), UTC) for day in rows.get_column("day")
    ]


async def test_daily_aggregates_on_real_posts(reddit_posts: pl.DataFrame) -> None:
    finbert = await BundledFinbertSource().fetch(since=utc(2024, 12, 1))
    posts = pl.concat([reddit_posts, finbert])
    fear_greed = read_fear_greed_csv(BUNDLED_FEAR_GREED_CSV).lazy()
    daily = daily_social_aggregates(posts.lazy(), fear_greed).collect()
    market = daily.filter(pl.col("coin_id") == MARKET_WIDE)
    assert market.get_column("post_count").sum() == posts.height
    assert market.get_column("day").is_unique().all()
    # Nothing is available before its last post was published.
    last_post = posts.group_by(pl.col("published_at").dt.date().alias("day")).agg(pl.col("published_at").max())
    checked = daily.join(last_post, on="day")
    assert checked.height == daily.height
    assert (checked.get_column("available_at") > checked.get_column("published_at")).all()
    # Per-coin mention counts add up to the posts' coin lists.
    coin_rows = daily.filter(pl.col("coin_id") != MARKET_WIDE)
    assert coin_rows.get_column("mention_count").sum() == posts.get_column("coins").list.len().sum()
    # The Fear & Greed value sits on 2024 market rows (the index ends 2024-12-31) and nowhere else.
    assert market.filter(pl.col("day").dt.year() == 2024).get_column("fear_greed").null_count() == 0
    assert (
        market.filter(pl.col("day").dt.year() == 2025).get_column("fear_greed").null_count()
        == market.filter(pl.col("day").dt.year() == 2025).height
    )
    assert coin_rows.get_column("fear_greed").null_count() == coin_rows.height
