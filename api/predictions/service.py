"""Predictions: ask the prediction service; when it cannot answer, the score flow's stored answer.

Errors about the question (unknown coin or horizon, data too old, no promoted model) are answers
and are passed through. Errors about the service (down, timed out, 5xx, no features loaded, model
and features out of step) mean "no answer right now": the newest unexpired row of ``predictions``
(written by ``flows/score.py`` through the same serving code) is used instead, marked ``stored``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from api.predictions.client import MLServiceClient
from api.predictions.exceptions import (
    MLServiceUnavailableError,
    NoChampionError,
    PredictionError,
    PredictionUnavailableError,
    StaleFeaturesError,
    UnknownCoinError,
    UnknownHorizonError,
)
from api.predictions.schemas import Horizon, PredictionPublic, PredictionQuery, PriceTargetPublic
from khalsi.db.models import Prediction, as_utc
from serving.schemas import ErrorCode, PredictionResult

logger = logging.getLogger(__name__)

Answer = PredictionPublic | PredictionError

# Per-item errors that describe the question: the caller hears them as they are.
QUESTION_ERRORS: dict[ErrorCode, type[PredictionError]] = {
    ErrorCode.UNKNOWN_COIN: UnknownCoinError,
    ErrorCode.UNKNOWN_HORIZON: UnknownHorizonError,
    ErrorCode.STALE_FEATURES: StaleFeaturesError,
    ErrorCode.MODEL_UNAVAILABLE: NoChampionError,
}
# Any other code (features_unavailable, model_feature_mismatch) is the service's own trouble.


def _live(result: PredictionResult, *, horizon: Horizon, generated_at: datetime) -> PredictionPublic | None:
    """The public form of a successful service answer (None if the answer lacks a required field)."""
    if (
        result.coin_id is None
        or result.symbol is None
        or result.probability_up is None
        or result.probability_down is None
        or result.confidence is None
        or result.direction is None
        or result.model_version is None
        or result.feature_timestamp is None
    ):
        return None
    target = result.price_target
    return PredictionPublic(
        coin_id=result.coin_id,
        symbol=result.symbol,
        horizon=horizon,
        probability_up=result.probability_up,
        probability_down=result.probability_down,
        confidence=result.confidence,
        direction=result.direction,
        price=result.price,
        price_target=PriceTargetPublic(median=target.median, low=target.low, high=target.high, interval=target.interval)
        if target is not None
        else None,
        model_name=result.model_name,
        model_version=result.model_version,
        feature_timestamp=result.feature_timestamp,
        generated_at=generated_at,
        expires_at=result.expires_at,
        source="live",
    )


def _stored(row: Prediction, *, horizon: Horizon, reason: str) -> PredictionPublic:
    """The public form of a row the score flow wrote."""
    methodology: dict[str, Any] = row.methodology or {}
    target_method: dict[str, Any] = methodology.get("price_target") or {}
    price = methodology.get("price")
    interval = target_method.get("interval")
    # The score flow writes all three or none.
    has_target = None not in (row.price_target, row.price_target_low, row.price_target_high)
    probability_up = cast(float, row.probability_up)  # not null: the query skips rows without one
    return PredictionPublic(
        coin_id=row.coin_id,
        symbol=row.symbol,
        horizon=horizon,
        probability_up=probability_up,
        probability_down=float(row.probability_down if row.probability_down is not None else 1 - probability_up),
        confidence=float(row.confidence_level if row.confidence_level is not None else abs(probability_up - 0.5) * 2),
        # The service's rule: up at 0.5 and above.
        direction="up" if probability_up >= 0.5 else "down",
        price=float(price) if isinstance(price, int | float) else None,
        price_target=PriceTargetPublic(
            median=cast(float, row.price_target),
            low=cast(float, row.price_target_low),
            high=cast(float, row.price_target_high),
            interval=float(interval) if isinstance(interval, int | float) else None,
        )
        if has_target
        else None,
        model_name=row.model_name,
        model_version=row.model_version,
        feature_timestamp=as_utc(row.feature_timestamp),
        generated_at=as_utc(row.created_at),
        expires_at=as_utc(row.expires_at) if row.expires_at is not None else None,
        source="stored",
        fallback_reason=reason,
    )


async def _stored_rows(session: AsyncSession, queries: Sequence[PredictionQuery], *, now: datetime) -> list[Prediction]:
    """Unexpired stored predictions for the queries' coins (by id or symbol) and horizons, newest first."""
    needles = {query.coin.lower() for query in queries}
    rows = await session.scalars(
        sa.select(Prediction)
        .where(
            Prediction.timeframe.in_({query.horizon for query in queries}),
            sa.or_(sa.func.lower(Prediction.coin_id).in_(needles), sa.func.lower(Prediction.symbol).in_(needles)),
            # A row without an expiry or a probability cannot be vouched for (the score flow writes both).
            Prediction.expires_at > now,
            Prediction.probability_up.is_not(None),
        )
        .order_by(Prediction.feature_timestamp.desc(), Prediction.created_at.desc())
    )
    return list(rows)


def _newest_for(rows: Sequence[Prediction], query: PredictionQuery) -> Prediction | None:
    """The newest row of the query's horizon for its CoinGecko id, else for its symbol if unique."""
    needle = query.coin.lower()
    of_horizon = [row for row in rows if row.timeframe == query.horizon]
    by_id = [row for row in of_horizon if row.coin_id.lower() == needle]
    if by_id:
        return by_id[0]
    by_symbol = [row for row in of_horizon if row.symbol.lower() == needle]
    # A symbol shared by several coins names none of them (as in serving).
    if len({row.coin_id for row in by_symbol}) == 1:
        return by_symbol[0]
    return None


async def _fall_back(
    session: AsyncSession, queries: Sequence[PredictionQuery], reasons: Sequence[str], *, now: datetime
) -> list[Answer]:
    """Each query's newest unexpired stored prediction (one query for all), marked with its reason."""
    rows = await _stored_rows(session, queries, now=now)
    answers: list[Answer] = []
    for query, reason in zip(queries, reasons, strict=True):
        row = _newest_for(rows, query)
        if row is not None:
            answers.append(_stored(row, horizon=query.horizon, reason=reason))
        else:
            answers.append(
                PredictionUnavailableError(
                    f"{reason}, and no unexpired stored prediction exists for {query.coin!r} over {query.horizon}"
                )
            )
    return answers


async def predict(
    *, session: AsyncSession, ml: MLServiceClient, queries: Sequence[PredictionQuery], now: datetime
) -> list[Answer]:
    """A prediction or a domain error per query, in order (``now``: the platform clock, for expiry)."""
    try:
        results = await ml.predict(queries)
    except MLServiceUnavailableError as outage:
        logger.warning("falling back to stored predictions: %s", outage)
        return await _fall_back(session, queries, [str(outage)] * len(queries), now=now)

    generated_at = datetime.now(UTC)
    answers: list[Answer | None] = []
    # Items the service could not answer for reasons of its own: (position, why).
    unanswered: list[tuple[int, str]] = []
    for position, (query, result) in enumerate(zip(queries, results, strict=True)):
        if result.error is not None and result.error.code in QUESTION_ERRORS:
            answers.append(QUESTION_ERRORS[result.error.code](result.error.message))
            continue
        live = _live(result, horizon=query.horizon, generated_at=generated_at) if result.error is None else None
        answers.append(live)
        if live is None:
            reason = (
                f"the prediction service could not answer ({result.error.code.value}: {result.error.message})"
                if result.error is not None
                else "the prediction service answered an incomplete prediction"
            )
            unanswered.append((position, reason))
    if unanswered:
        logger.warning("falling back to stored predictions for %d items: %s", len(unanswered), unanswered[0][1])
        positions = [position for position, _ in unanswered]
        stored = await _fall_back(
            session, [queries[p] for p in positions], [reason for _, reason in unanswered], now=now
        )
        for position, answer in zip(positions, stored, strict=True):
            answers[position] = answer
    return [cast(Answer, answer) for answer in answers]
