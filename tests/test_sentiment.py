"""VADER with the crypto lexicon, and coin mention detection, on real sentences from the bundled data."""

from __future__ import annotations

import math

import polars as pl
import pytest

from khalsi.sources.exports import BUNDLED_COINS, BUNDLED_SOCIAL_DIR, COINS_BY_ID, CoinInfo
from khalsi.sources.sentiment import (
    COIN_TERMS,
    CRYPTO_LEXICON,
    MAX_CHUNK_CHARS,
    SentimentScorer,
    default_scorer,
    mentioned_coins,
    mentions_many,
    split_into_chunks,
)


@pytest.fixture(scope="module")
def reddit() -> dict[str, str]:
    """unified_id -> text of every bundled Reddit post and comment (the first version of an edited one)."""
    frame = pl.concat(
        [
            pl.read_csv(path, infer_schema_length=0)
            for path in sorted((BUNDLED_SOCIAL_DIR / "reddit_2025").glob("*.csv"))
        ]
    )
    texts: dict[str, str] = {}
    for uid, text in zip(frame.get_column("unified_id"), frame.get_column("text_content"), strict=True):
        texts.setdefault(uid, text)
    return texts


@pytest.fixture(scope="module")
def headlines() -> list[str]:
    frame = pl.concat(
        [pl.read_csv(path) for path in sorted((BUNDLED_SOCIAL_DIR / "news_headlines_2024").glob("*.csv"))]
    )
    return [f"{h}\n{d}" for h, d in zip(frame.get_column("headline"), frame.get_column("description"), strict=True)]


# Real Reddit texts and the coins they are about, read by a person.
REDDIT_CASES = [
    # Upper-case tickers count; so does "BTC" beside them.
    ("c_nkmr4oc", {"chainlink", "bitcoin"}),  # "Lmao LINK and a few other coins already lost the entire pump..."
    ("c_nkfv3u0", {"chainlink"}),  # "LINK rippin."
    # "link" in prose is a hyperlink, not Chainlink.
    ("c_nlsxn05", {"bitcoin"}),  # "I'm giving away one Bitcoin to the 148th person who clicks this link...."
    # "etc." is et cetera, not Ethereum Classic; "Binance" is an exchange, not BNB.
    ("p_1oi2sgd", {"bitcoin"}),  # "...buy your coins via Coinbase, Binance, etc.? And why?"
    ("c_nlu1ua0", set()),  # "Dont include Stocks, House prices etc."
    # "$SOL" counts, and "SOL" does even inside an all-caps sentence.
    ("c_nlulza2", {"solana"}),  # "Good sign for $SOL 🔥🚀🚀"
    ("c_nliqpon", {"solana"}),  # "**SOL TO THE MOON !**"
    # Tickers glued into other tokens (JupSOL, pSOL) are other tokens.
    ("p_1oifdse", {"solana"}),  # "Best way to stake SOL? ... JupSOL on Jupiter? Or pSOL on phantom?"
    # Bitcoin Cash is not Bitcoin; "BTC" beside it still is.
    ("c_nkk9i3q", {"bitcoin-cash"}),  # "So did Bitcoin Cash and others"
    ("c_nlwc6ss", {"bitcoin-cash"}),  # "BUY BITCOIN CASH!"
    ("c_ngzhd86", {"bitcoin-cash", "bitcoin"}),  # "Bitcoin Cash forked away in 2017 ... into BTC."
    # "Ether" capitalised is the coin; "ether way" is a typo of "either".
    ("c_nlb874t", {"ethereum"}),  # "Ether to the moooon!!!"
    ("c_ni4h9fz", set()),  # "As long as the cucumber is green I like it ether way."
    # Ripple the company (tied to XRP) in either case of the sentence.
    ("c_nkxqi62", {"ripple"}),  # '"Ripple is branching out into mainstream finance" is the narrative of ripple...'
    ("c_nlko4l3", {"solana", "sui"}),  # "Monad and Solana. Maybe Sui. ..."
    # Turkish dotted capitals must not break matching.
    ("p_1ofngb1", {"bitcoin"}),  # "BİTCOİN NEXT 120$ ?"
    # Deliberate misses: lower-case "ada" is skipped with every other ambiguous ticker.
    ("c_nl8pg8i", {"solana"}),  # "Right before the crash I swapped all my ada to SOL."
    ("c_nkgup8o", {"ethereum", "bitcoin"}),  # "i do 80% eth 20% btc ... high apy alts like dot/ada/whatever"
]


@pytest.mark.parametrize(("uid", "expected"), REDDIT_CASES)
def test_mentions_in_real_reddit_text(reddit: dict[str, str], uid: str, expected: set[str]) -> None:
    assert mentioned_coins(reddit[uid]) == expected


def test_mentions_in_real_headlines(headlines: list[str]) -> None:
    monad = next(text for text in headlines if text.startswith("paradigm leads $225 million round for monad labs"))
    # Lower-cased headline: names still count; "$225" is money, not a ticker.
    assert mentioned_coins(monad) == {"ethereum", "solana"}
    quotes = next(text for text in headlines if "Ether ( ETH-USD )" in text and "Solana ( SOL-USD )" in text)
    assert {"ethereum", "solana"} <= mentioned_coins(quotes)
    footer = next(text for text in headlines if "Attachments Original Link Original" in text)
    # "Original Link" is a web link: capitalised, not upper case.
    assert "chainlink" not in mentioned_coins(footer)


def test_every_bundled_coin_is_found_by_its_ticker_and_terms() -> None:
    for info in BUNDLED_COINS.values():
        assert mentioned_coins(f"Bought more {info.symbol.upper()} today.") == {info.coin_id}
        assert mentioned_coins(f"${info.symbol.lower()} looks strong") == {info.coin_id}
        terms = COIN_TERMS[info.coin_id]
        for term in terms.any_case:
            assert mentioned_coins(f"thinking about {term.upper()} and {term.lower()}.") == {info.coin_id}
        for term in terms.proper:
            assert mentioned_coins(f"News from {term} today") == {info.coin_id}
            assert mentioned_coins(f"news from {term.lower()} today") == set()


def test_ambiguous_lower_case_tickers_are_not_mentions() -> None:
    prose = "see the link, etc. sol y sombra, ada lovelace, eos, apt to drop, sui generis"
    assert mentioned_coins(prose) == set()
    assert mentioned_coins(prose.upper().replace("SUI GENERIS", "")) == {
        "chainlink",
        "ethereum-classic",
        "solana",
        "cardano",
        "eos",
        "aptos",
    }


def test_mentions_restricted_to_the_given_coins_and_unknown_coins_by_name() -> None:
    only_btc = [COINS_BY_ID["bitcoin"]]
    assert mentioned_coins("BTC and ETH", only_btc) == {"bitcoin"}
    pepe = CoinInfo("pepe", "pepe", "Pepe")
    polkadot = CoinInfo("polkadot", "dot", "Polkadot")
    # Unknown coins: the name in any case, the ticker in upper case or with "$".
    assert mentioned_coins("polkadot and DOT, dot. $PEPE", [pepe, polkadot]) == {"polkadot", "pepe"}
    assert mentioned_coins("connect the dots.", [polkadot]) == set()


def test_mentions_many_matches_single_calls(reddit: dict[str, str]) -> None:
    texts = list(reddit.values())[:2000]
    assert mentions_many(texts) == [sorted(mentioned_coins(text)) for text in texts]


def test_crypto_lexicon_moves_scores_where_plain_vader_is_blind() -> None:
    plain = SentimentScorer(extra_lexicon={})
    crypto = default_scorer()
    # Words VADER does not know at all score 0 without the extension.
    assert plain.score("rekt").compound == 0.0
    for word in ("rekt", "rugpull", "bearish", "liquidated", "fud"):
        assert crypto.score(f"they got {word}").compound < plain.score(f"they got {word}").compound
    for word in ("bullish", "hodl", "ath", "mooning", "wagmi"):
        assert crypto.score(f"feeling {word}").compound > plain.score(f"feeling {word}").compound
    assert all(valence != 0 for valence in CRYPTO_LEXICON.values())


def test_real_texts_score_in_the_expected_direction(reddit: dict[str, str]) -> None:
    crypto = default_scorer()
    plain = SentimentScorer(extra_lexicon={})
    # "... The HODLers will win once again and the sellers will get rekt ..."
    rekt = reddit["c_nlndr8f"]
    assert crypto.score(rekt).compound < plain.score(rekt).compound
    # "... $SOL exposure, liquidity, and long-term This is very bullish news!"
    bullish = reddit["p_1nucb4f"]
    assert crypto.score(bullish).compound > plain.score(bullish).compound > -1.0
    # Real event titles (news_events_curated.csv): hacks read as bad news only with the extension.
    for title in (
        "North Korean Hackers Stole Nearly $400M in Bitcoin, Ethereum in 2021",
        "Bitfinex Hackers Arrested after 6 years",
    ):
        assert crypto.score(title).compound < 0
        assert crypto.score(title).compound < plain.score(title).compound


def test_scores_are_well_formed_and_batch_equals_single(reddit: dict[str, str]) -> None:
    scorer = default_scorer()
    texts = list(reddit.values())[:1500]
    texts += texts[:50]  # reposts: scored once, returned in place
    batch = scorer.score_many(texts)
    assert batch == [scorer.score(text) for text in texts]
    for score in batch:
        assert -1.0 <= score.compound <= 1.0
        assert math.isclose(score.positive + score.negative + score.neutral, 1.0, abs_tol=0.002)
    frame = scorer.score_frame(texts)
    assert frame.columns == ["compound", "positive", "negative", "neutral"]
    assert frame.get_column("compound").to_list() == [score.compound for score in batch]
    empty = scorer.score("")
    assert (empty.compound, empty.positive, empty.negative) == (0.0, 0.0, 0.0)


def test_long_texts_are_scored_in_sentence_chunks(headlines: list[str], reddit: dict[str, str]) -> None:
    scorer = default_scorer()
    long_texts = [text for text in [*headlines, *reddit.values()] if len(text) > MAX_CHUNK_CHARS]
    assert len(long_texts) > 100
    for text in long_texts[:60]:
        chunks = split_into_chunks(text)
        assert len(chunks) >= 2
        assert all(0 < len(chunk) <= MAX_CHUNK_CHARS for chunk in chunks)
        # Nothing is lost or reordered, only whitespace at the cuts.
        assert "".join("".join(chunks).split()) == "".join(text.split())
        score = scorer.score(text)
        parts = [scorer.score(chunk) for chunk in chunks]
        assert min(p.compound for p in parts) <= score.compound <= max(p.compound for p in parts)
        assert math.isclose(score.positive + score.negative + score.neutral, 1.0, abs_tol=0.002)
    # A long text made of one clearly negative and one clearly positive half lands in between.
    bad = "The exchange got hacked and everyone got rekt. " * 15
    good = "Bullish breakout, new ATH, great week for holders. " * 15
    mixed = scorer.score(bad + good)
    assert scorer.score(bad).compound < mixed.compound < scorer.score(good).compound
