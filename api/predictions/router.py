"""``/predictions``: calibrated up/down calls per coin and horizon, for signed-in users.

Predictions are the product (public market data is not): every route needs an access token. The
answer comes live from the prediction service over a pooled aiohttp session (see
:mod:`api.predictions.client`, which also explains the session's lifecycle and the lifespan this
router carries); when the service cannot answer, from the score flow's newest unexpired row
(``source: "stored"``, with the reason); when neither exists, 503.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status

from api.clock import PlatformNow
from api.deps import CallerDep, SessionDep
from api.predictions import service
from api.predictions.client import MLClientDep, ml_client_lifespan
from api.predictions.exceptions import (
    NoChampionError,
    PredictionError,
    PredictionUnavailableError,
    StaleFeaturesError,
    UnknownCoinError,
    UnknownHorizonError,
)
from api.predictions.schemas import (
    COIN_MAX_LENGTH,
    COIN_PATTERN,
    BatchItemResult,
    BatchPredictionRequest,
    BatchPredictionResponse,
    Horizon,
    ItemErrorPublic,
    PredictionPublic,
    PredictionQuery,
)

router = APIRouter(prefix="/predictions", tags=["predictions"], lifespan=ml_client_lifespan)

# How long a client should wait before asking again after a 503: a restarting service is back in seconds.
RETRY_AFTER_SECONDS = "5"
ERROR_STATUS: dict[type[PredictionError], int] = {
    UnknownCoinError: status.HTTP_404_NOT_FOUND,
    UnknownHorizonError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    StaleFeaturesError: status.HTTP_409_CONFLICT,
    NoChampionError: status.HTTP_409_CONFLICT,
    PredictionUnavailableError: status.HTTP_503_SERVICE_UNAVAILABLE,
}
PREDICTION_ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {"description": "no valid access token"},
    status.HTTP_404_NOT_FOUND: {"description": "unknown coin"},
    status.HTTP_409_CONFLICT: {"description": "the coin's data is too old, or no model is promoted for the horizon"},
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "description": "the prediction service cannot answer and no unexpired stored prediction exists"
    },
}


def _status_of(error: PredictionError) -> int:
    return ERROR_STATUS.get(type(error), status.HTTP_500_INTERNAL_SERVER_ERROR)


def _http_error(error: PredictionError) -> HTTPException:
    code = _status_of(error)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if code == status.HTTP_503_SERVICE_UNAVAILABLE else None
    return HTTPException(code, detail={"code": error.code, "message": str(error)}, headers=headers)


@router.get("/{coin}", responses=PREDICTION_ERRORS)
async def read_prediction(
    coin: Annotated[
        str,
        Path(
            min_length=1,
            max_length=COIN_MAX_LENGTH,
            pattern=COIN_PATTERN,
            description="CoinGecko id (e.g. 'bitcoin') or a unique symbol (e.g. 'BTC'), any case",
        ),
    ],
    _caller: CallerDep,
    session: SessionDep,
    ml: MLClientDep,
    now: PlatformNow,
    horizon: Annotated[Horizon, Query(description="'1d' or '7d'")] = "1d",
) -> PredictionPublic:
    """The probability that ``coin`` is up after ``horizon``, its confidence and price target."""
    (answer,) = await service.predict(
        session=session, ml=ml, queries=[PredictionQuery(coin=coin, horizon=horizon)], now=now
    )
    if isinstance(answer, PredictionError):
        raise _http_error(answer)
    return answer


@router.post("/batch", responses=PREDICTION_ERRORS)
async def predict_batch(
    batch_in: BatchPredictionRequest, _caller: CallerDep, session: SessionDep, ml: MLClientDep, now: PlatformNow
) -> BatchPredictionResponse:
    """Up to 50 (coin, horizon) items in one call to the service; each item answered or refused on its own.

    200 with a status per item (200, 404, 409, 503); a 503 for the whole batch only when the
    service cannot answer and no item has a stored prediction to fall back on.
    """
    answers = await service.predict(session=session, ml=ml, queries=batch_in.items, now=now)
    if all(isinstance(answer, PredictionUnavailableError) for answer in answers):
        raise _http_error(next(a for a in answers if isinstance(a, PredictionError)))
    results = [
        BatchItemResult(
            coin=query.coin,
            horizon=query.horizon,
            status=_status_of(answer),
            error=ItemErrorPublic(code=answer.code, message=str(answer)),
        )
        if isinstance(answer, PredictionError)
        else BatchItemResult(coin=query.coin, horizon=query.horizon, status=status.HTTP_200_OK, prediction=answer)
        for query, answer in zip(batch_in.items, answers, strict=True)
    ]
    return BatchPredictionResponse(results=results)
