"""``/portfolio``: the caller's positions (lots), valued at the latest stored prices.

Every ``POST /portfolio/positions`` stores a new lot, even for a coin already held; ``GET
/portfolio`` lists the lots and adds them up per coin (``holdings``, average price weighted by
quantity). Money, quantities and percentages are decimal strings (see :mod:`api.portfolios.schemas`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from api.clock import PlatformNow
from api.deps import CurrentUser, SessionDep, SettingsDep
from api.portfolios import service
from api.portfolios.deps import OwnedPosition
from api.portfolios.exceptions import (
    AmbiguousSymbolError,
    InvalidPositionFieldError,
    PositionLimitReachedError,
    UnknownCoinError,
)
from api.portfolios.schemas import (
    HoldingPublic,
    PortfolioPosition,
    PortfolioPublic,
    PortfolioTotals,
    PositionCreate,
    PositionPublic,
    PositionUpdate,
    PredictionPublic,
    error_detail,
)
from api.portfolios.valuation import Amounts, HoldingValuation, Lot, LotValuation, Pricing
from khalsi.settings import Settings

router = APIRouter(prefix="/portfolio", tags=["portfolios"])


def _max_price_age(settings: Settings) -> timedelta:
    # A price older than the age serving accepts for a feature vector is too old to trust silently.
    return timedelta(hours=settings.serving.max_feature_age_hours)


def _invalid(error: InvalidPositionFieldError) -> HTTPException:
    ctx: dict[str, object] = {}
    if isinstance(error, UnknownCoinError):
        ctx["tracked_symbols"] = error.tracked_symbols
    if isinstance(error, AmbiguousSymbolError):
        ctx["coin_ids"] = error.coin_ids
    detail = [error_detail(error.field, str(error), error.kind, error.value, ctx)]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def _priced_fields(pricing: Pricing) -> dict[str, object]:
    quote = pricing.quote
    return {
        "price_status": pricing.status,
        "price_note": pricing.note,
        "price": quote.price if quote else None,
        "price_at": quote.at if quote else None,
        "price_age_hours": pricing.age_hours,
    }


def _amount_fields(amounts: Amounts) -> dict[str, object]:
    return {
        "quantity": amounts.quantity,
        "cost_basis": amounts.cost_basis,
        "market_value": amounts.market_value,
        "unrealised_pnl": amounts.unrealised_pnl,
        "unrealised_pnl_pct": amounts.unrealised_pnl_pct,
    }


def _position_fields(valued: LotValuation) -> dict[str, object]:
    coin = valued.pricing.coin
    return {
        "id": valued.lot.id,
        "coin_id": coin.coin_id if coin else None,
        "symbol": coin.symbol if coin else valued.lot.symbol,
        "name": coin.name if coin else None,
        "avg_price": valued.lot.avg_price,
        "entry_date": valued.lot.entry_date,
        **_priced_fields(valued.pricing),
        **_amount_fields(valued.amounts),
    }


def _holding(
    holding: HoldingValuation, predictions: dict[str, dict[str, service.StoredPrediction]] | None
) -> HoldingPublic:
    coin = holding.pricing.coin
    attached = None
    if predictions is not None:
        stored = predictions.get(coin.coin_id, {}) if coin else {}
        attached = {
            timeframe: PredictionPublic.model_validate(prediction, from_attributes=True)
            for timeframe, prediction in sorted(stored.items())
        }
    return HoldingPublic.model_validate(
        {
            "coin_id": coin.coin_id if coin else None,
            "symbol": holding.symbol,
            "name": coin.name if coin else None,
            "avg_price": holding.avg_price,
            "allocation_pct": holding.amounts.allocation_pct,
            "position_ids": holding.position_ids,
            "predictions": attached,
            **_priced_fields(holding.pricing),
            **_amount_fields(holding.amounts),
        }
    )


async def _valued_position(session: SessionDep, settings: Settings, position: Lot, now: datetime) -> PositionPublic:
    valued = await service.value_positions(
        session=session, positions=[position], now=now, max_price_age=_max_price_age(settings)
    )
    return PositionPublic.model_validate(_position_fields(valued.valuation.lots[0]))


@router.get("")
async def read_portfolio(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    now: PlatformNow,
    predictions: Annotated[bool, Query(description="attach each holding's latest 1d/7d prediction")] = True,
) -> PortfolioPublic:
    """Every position valued at its coin's latest stored price, the holdings per coin, and totals.

    A position without a usable price is listed with null values and a ``price_status`` saying why;
    totals then cover the priced positions (``totals.complete`` is false).
    """
    positions = await service.list_positions(session=session, user_id=user.id)
    valued = await service.value_positions(
        session=session,
        positions=positions,
        now=now,
        max_price_age=_max_price_age(settings),
        prediction_timeframes=service.prediction_timeframes(settings) if predictions else None,
    )
    valuation = valued.valuation
    totals = valuation.totals
    return PortfolioPublic(
        as_of=valuation.as_of,
        max_price_age_hours=valuation.max_price_age.total_seconds() / 3600,
        totals=PortfolioTotals(
            positions=totals.positions,
            priced_positions=totals.priced_positions,
            stale_positions=totals.stale_positions,
            unpriced_positions=totals.unpriced_positions,
            complete=totals.complete,
            cost_basis=totals.cost_basis,
            priced_cost_basis=totals.priced_cost_basis,
            market_value=totals.market_value,
            unrealised_pnl=totals.unrealised_pnl,
            unrealised_pnl_pct=totals.unrealised_pnl_pct,
        ),
        holdings=[_holding(holding, valued.predictions) for holding in valuation.holdings],
        positions=[
            PortfolioPosition.model_validate({**_position_fields(lot), "allocation_pct": lot.amounts.allocation_pct})
            for lot in valuation.lots
        ],
    )


@router.post("/positions", status_code=status.HTTP_201_CREATED)
async def add_position(
    position_in: PositionCreate,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    now: PlatformNow,
    request: Request,
    response: Response,
) -> PositionPublic:
    """Record a buy as a new position (a second buy of a coin is a separate lot, never merged)."""
    try:
        position, _coin = await service.create_position(
            session=session, user_id=user.id, position_in=position_in, now=now
        )
    except InvalidPositionFieldError as error:
        raise _invalid(error) from error
    except PositionLimitReachedError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    response.headers["Location"] = str(request.app.url_path_for("read_position", position_id=str(position.id)))
    return await _valued_position(session, settings, position, now)


@router.get("/positions/{position_id}")
async def read_position(
    position: OwnedPosition, session: SessionDep, settings: SettingsDep, now: PlatformNow
) -> PositionPublic:
    """One of the caller's positions, valued (404 for an unknown id or someone else's)."""
    return await _valued_position(session, settings, position, now)


@router.patch("/positions/{position_id}")
async def update_position(
    position_in: PositionUpdate,
    position: OwnedPosition,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    now: PlatformNow,
) -> PositionPublic:
    """Change the quantity, average price or entry date of one of the caller's positions."""
    try:
        updated = await service.update_position(
            session=session, user_id=user.id, position=position, position_in=position_in, now=now
        )
    except InvalidPositionFieldError as error:
        raise _invalid(error) from error
    if updated is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="position not found")
    return await _valued_position(session, settings, updated, now)


@router.delete("/positions/{position_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_position(position: OwnedPosition, user: CurrentUser, session: SessionDep) -> None:
    """Remove one of the caller's positions."""
    await service.delete_position(session=session, user_id=user.id, position_id=position.id)
