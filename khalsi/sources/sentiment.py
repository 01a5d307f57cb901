"""Text scoring for social data: VADER with a crypto lexicon, and per-coin mention detection.

VADER (Hutto & Gilbert, 2014) ships its lexicon inside the ``vaderSentiment`` package, so nothing
is downloaded. Its English lexicon misses crypto slang ("rekt", "hodl", "rug") and reads some words
the wrong way for markets ("exploit" is mildly negative in English, a theft in crypto), so a small
extension is layered on top. The scorer name carries a version: scores from a changed lexicon must
never be mixed silently with older ones.

Mention detection favours precision over recall: a coin counts when its name or an alias appears
as a word in any case ("bitcoin", "BTC", "ethereum classic"), or its ticker appears in upper case
or with a dollar sign ("LINK", "$sol"). Tickers that are ordinary words in lower case ("link",
"sol", "ada", "etc", "eos") therefore do not count, at the cost of missing casual lower-case
mentions such as "I stake ada".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import polars as pl
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from khalsi.sources.exports import BUNDLED_COINS, CoinInfo

VADER_SCORER = "vader-crypto-v1"
# Texts longer than this are scored in sentence-aligned chunks of at most this many characters.
MAX_CHUNK_CHARS = 1000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")

# Valences on VADER's -4..+4 scale, set near English words of similar strength in its lexicon
# ("great" 3.1, "good" 1.9, "bad" -2.5, "scam" -2.7).
CRYPTO_LEXICON: Final[Mapping[str, float]] = {
    "bullish": 2.0,
    "bearish": -2.0,
    "moon": 1.5,
    "mooning": 2.2,
    "moonshot": 1.8,
    "ath": 2.0,
    "rally": 1.6,
    "rallies": 1.6,
    "surge": 1.5,
    "surges": 1.5,
    "soar": 1.8,
    "soars": 1.8,
    "pump": 1.2,
    "pumping": 1.5,
    "hodl": 1.2,
    "hodling": 1.2,
    "wagmi": 1.8,
    "lambo": 1.5,
    "dump": -1.8,
    "dumps": -1.8,
    "dumping": -1.8,
    "dumped": -1.6,
    "plunge": -2.0,
    "plunges": -2.0,
    "selloff": -1.8,
    "sell-off": -1.8,
    "capitulation": -2.0,
    "rekt": -2.8,
    "ngmi": -1.8,
    "fud": -1.8,
    "bagholder": -1.5,
    "bagholders": -1.5,
    "liquidated": -2.3,
    "liquidation": -1.8,
    "liquidations": -1.8,
    "scam": -2.7,
    "scammer": -2.8,
    "scammers": -2.8,
    "hack": -2.2,
    "hacked": -2.5,
    "hacker": -1.8,
    "hackers": -1.8,
    # In crypto an exploit is a theft of funds, not the mild English sense VADER knows (-0.4).
    "exploit": -2.0,
    "exploited": -2.2,
    "rug": -2.5,
    "rugged": -2.8,
    "rugpull": -3.0,
    "rugpulled": -3.0,
}


def split_into_chunks(text: str, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """Split text into chunks of at most ``max_chars``, at sentence ends where possible, else at spaces."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if sentence.strip():
            pieces.append(sentence)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
            chunks[-1] = f"{chunks[-1]} {piece}"
        else:
            chunks.append(piece)
    return chunks or [text[:max_chars]]


@dataclass(frozen=True, slots=True)
class SentimentScore:
    """VADER's output: ``compound`` in [-1, 1]; ``positive``/``negative``/``neutral`` shares sum to 1."""

    compound: float
    positive: float
    negative: float
    neutral: float


class SentimentScorer:
    """A VADER analyser with the crypto lexicon (or another extension) applied."""

    def __init__(self, *, extra_lexicon: Mapping[str, float] | None = None) -> None:
        self._analyzer = SentimentIntensityAnalyzer()
        lexicon = CRYPTO_LEXICON if extra_lexicon is None else extra_lexicon
        # VADER looks words up lower-cased, so the keys must be lower case too.
        self._analyzer.lexicon.update({word.lower(): valence for word, valence in lexicon.items()})

    def _vader(self, text: str) -> SentimentScore:
        raw = self._analyzer.polarity_scores(text)
        return SentimentScore(
            compound=float(raw["compound"]),
            positive=float(raw["pos"]),
            negative=float(raw["neg"]),
            neutral=float(raw["neu"]),
        )

    def score(self, text: str) -> SentimentScore:
        """Score one text; a long one as the length-weighted mean of its sentence-aligned chunks."""
        if len(text) <= MAX_CHUNK_CHARS:
            return self._vader(text)
        # VADER's negation check re-lowercases every word for every sentiment word, so its cost
        # grows with the square of the length (one 31k-character description took over a
        # second). VADER is built for sentences anyway: score chunks, weight them by length.
        chunks = split_into_chunks(text)
        scores = [self._vader(chunk) for chunk in chunks]
        weights = [len(chunk) for chunk in chunks]
        total = float(sum(weights))
        return SentimentScore(
            compound=sum(w * s.compound for w, s in zip(weights, scores, strict=True)) / total,
            positive=sum(w * s.positive for w, s in zip(weights, scores, strict=True)) / total,
            negative=sum(w * s.negative for w, s in zip(weights, scores, strict=True)) / total,
            neutral=sum(w * s.neutral for w, s in zip(weights, scores, strict=True)) / total,
        )

    def score_many(self, texts: Iterable[str]) -> list[SentimentScore]:
        """Score many texts in order; identical texts (reposts, copy-paste bots) are scored once."""
        cache: dict[str, SentimentScore] = {}
        scores: list[SentimentScore] = []
        for text in texts:
            known = cache.get(text)
            if known is None:
                known = cache[text] = self.score(text)
            scores.append(known)
        return scores

    def score_frame(self, texts: Sequence[str]) -> pl.DataFrame:
        """Score many texts into a frame ``compound, positive, negative, neutral`` (one row per text)."""
        scores = self.score_many(texts)
        return pl.DataFrame(
            {
                "compound": [score.compound for score in scores],
                "positive": [score.positive for score in scores],
                "negative": [score.negative for score in scores],
                "neutral": [score.neutral for score in scores],
            },
            schema={name: pl.Float64() for name in ("compound", "positive", "negative", "neutral")},
        )


@lru_cache(maxsize=1)
def default_scorer() -> SentimentScorer:
    """The process-wide VADER scorer with the crypto lexicon (building one reads VADER's files)."""
    return SentimentScorer()


@dataclass(frozen=True)
class CoinTerms:
    """How a coin is written in text besides its upper-case or ``$`` ticker.

    ``any_case`` terms are safe in any case ("btc", "shiba inu"); ``proper`` terms are ordinary
    English words unless capitalised ("Ripple" the company, not "the ripple effect").
    """

    any_case: tuple[str, ...] = ()
    proper: tuple[str, ...] = ()


# Hand-checked against the bundled Reddit and news text (see tests/test_sentiment.py).
COIN_TERMS: Final[Mapping[str, CoinTerms]] = {
    "bitcoin": CoinTerms(any_case=("bitcoin", "btc")),
    # "Ether" only capitalised: "I like it ether way" is a typo, not a mention.
    "ethereum": CoinTerms(any_case=("ethereum", "eth"), proper=("Ether",)),
    "binancecoin": CoinTerms(any_case=("bnb", "binance coin")),
    "solana": CoinTerms(any_case=("solana",)),
    "ripple": CoinTerms(any_case=("xrp",), proper=("Ripple",)),
    "cardano": CoinTerms(any_case=("cardano",)),
    "dogecoin": CoinTerms(any_case=("dogecoin", "doge")),
    "shiba-inu": CoinTerms(any_case=("shiba inu", "shiba", "shib")),
    "sui": CoinTerms(proper=("Sui",)),
    "aptos": CoinTerms(any_case=("aptos",)),
    "worldcoin-wld": CoinTerms(any_case=("worldcoin", "wld")),
    "litecoin": CoinTerms(any_case=("litecoin", "ltc")),
    "chainlink": CoinTerms(any_case=("chainlink",)),
    "tron": CoinTerms(any_case=("tron", "trx")),
    "bitcoin-cash": CoinTerms(any_case=("bitcoin cash", "bch")),
    "ethereum-classic": CoinTerms(any_case=("ethereum classic",)),
    "eos": CoinTerms(),
}


def _terms_for(coin: CoinInfo) -> CoinTerms:
    known = COIN_TERMS.get(coin.coin_id)
    if known is not None:
        return known
    # An unknown coin: its name in any case, unless the name is just its ticker (then the
    # ticker rule alone applies, as for EOS).
    if coin.name.lower() == coin.symbol.lower():
        return CoinTerms()
    return CoinTerms(any_case=(coin.name.lower(),))


def _term_pattern(term: str) -> str:
    # Spaces inside a name match any run of whitespace ("shiba  inu").
    return r"\s+".join(re.escape(part) for part in term.split())


def _compile(terms: Mapping[str, str], flags: int, prefix: str = "") -> tuple[re.Pattern[str], list[str]] | None:
    """One pattern over ``terms`` (term -> coin id), each term its own group: the group says the coin.

    Longest terms come first so "bitcoin cash" wins over "bitcoin" at the same position. Looking
    the coin up by group rather than by the matched text survives case folding that changes the
    text (Turkish dotted capitals lower-case into two characters).
    """
    if not terms:
        return None
    ordered = sorted(terms, key=lambda term: (-len(term), term))
    alternatives = "|".join(f"(?P<t{i}>{_term_pattern(term)})" for i, term in enumerate(ordered))
    # (?<![\w$]) and (?!\w) rather than \b: whole words only, and "$" handled by the prefix.
    pattern = re.compile(rf"(?<![\w$]){re.escape(prefix)}(?:{alternatives})(?!\w)", flags)
    return pattern, [terms[term] for term in ordered]


class MentionMatcher:
    """Compiled patterns that find which of a set of coins a text mentions."""

    def __init__(self, coins: Iterable[CoinInfo]) -> None:
        any_case: dict[str, str] = {}
        exact: dict[str, str] = {}
        dollar: dict[str, str] = {}
        for coin in coins:
            terms = _terms_for(coin)
            for term in terms.any_case:
                any_case[term.lower()] = coin.coin_id
            for term in terms.proper:
                for variant in (term, term.upper(), term[:1].upper() + term[1:].lower()):
                    exact[variant] = coin.coin_id
            exact[coin.symbol.upper()] = coin.coin_id
            dollar[coin.symbol.lower()] = coin.coin_id
        compiled = (
            _compile(any_case, re.IGNORECASE),
            _compile(exact, 0),
            _compile(dollar, re.IGNORECASE, prefix="$"),
        )
        self._patterns = [item for item in compiled if item is not None]

    def __call__(self, text: str) -> set[str]:
        """The ids of the coins ``text`` mentions."""
        found: set[str] = set()
        for pattern, coin_ids in self._patterns:
            for match in pattern.finditer(text):
                group = match.lastgroup
                if group is not None:
                    found.add(coin_ids[int(group[1:])])
        return found


@lru_cache(maxsize=16)
def mention_matcher(coins: frozenset[CoinInfo] | None = None) -> MentionMatcher:
    """A cached matcher for ``coins`` (the bundled coins when ``None``)."""
    return MentionMatcher(BUNDLED_COINS.values() if coins is None else coins)


def mentioned_coins(text: str, coins: Iterable[CoinInfo] | None = None) -> set[str]:
    """The ids of the coins (the bundled ones by default) that ``text`` mentions by name, alias or ticker."""
    return mention_matcher(None if coins is None else frozenset(coins))(text)


def mentions_many(texts: Iterable[str], coins: Iterable[CoinInfo] | None = None) -> list[list[str]]:
    """Mentioned coin ids for many texts, each as a sorted list (stable for storage)."""
    matcher = mention_matcher(None if coins is None else frozenset(coins))
    return [sorted(matcher(text)) for text in texts]
