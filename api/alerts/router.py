"""``/alerts``: the caller's price, 24 h change and prediction alerts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.alerts import service
from api.alerts.deps import OwnedAlert
from api.alerts.exceptions import AlertLimitReachedError, UnknownSymbolError
from api.alerts.rules import AlertRule, EmailChannel, WebhookChannel, parse_condition, read_rule
from api.alerts.schemas import AlertCreateIn, AlertPublic, AlertsPage, AlertUpdate
from api.deps import CurrentUser, SessionDep, SettingsDep
from khalsi.db.models import User
from khalsi.notify.targets import UnsafeTargetError, check_webhook_url
from khalsi.settings import Settings

router = APIRouter(prefix="/alerts", tags=["alerts"])


def _invalid(loc: Sequence[str | int], message: str, value: Any) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, naming the offending field."""
    return RequestValidationError([{"type": "value_error", "loc": tuple(loc), "msg": message, "input": value}])


def _refuse_private_webhooks(channels: Sequence[EmailChannel | WebhookChannel], settings: Settings) -> None:
    """SSRF guard at save time (the sender checks again, with DNS, before each delivery)."""
    allow_private = settings.webhooks.allow_private_targets
    for index, channel in enumerate(channels):
        if isinstance(channel, WebhookChannel):
            try:
                check_webhook_url(channel.url, allow_private=allow_private)
            except UnsafeTargetError as error:
                raise _invalid(("body", "channels", index, "url"), str(error), channel.url) from error


def _refuse_foreign_addresses(channels: Sequence[EmailChannel | WebhookChannel], user: User) -> None:
    """E-mail goes only to the account's own address: no relaying mail to strangers in Khalsi's name."""
    for index, channel in enumerate(channels):
        if not isinstance(channel, EmailChannel) or channel.address is None:
            continue
        if str(channel.address).strip().lower() != user.email.lower():
            message = "e-mail alerts go to your account's address; leave 'address' out or use that one"
            raise _invalid(("body", "channels", index, "address"), message, str(channel.address))


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_alert(
    alert_in: Annotated[AlertCreateIn, Body(discriminator="alert_type")],
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> AlertPublic:
    """Create an active alert on a tracked coin (at most 50 per account)."""
    _refuse_private_webhooks(alert_in.channels, settings)
    _refuse_foreign_addresses(alert_in.channels, user)
    try:
        alert = await service.create_alert(session=session, user_id=user.id, alert_in=alert_in)
    except UnknownSymbolError as error:
        raise _invalid(("body", "symbol"), str(error), error.symbol) from error
    except AlertLimitReachedError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return AlertPublic.from_row(alert)


@router.get("")
async def list_alerts(
    user: CurrentUser,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    active: Annotated[bool | None, Query(description="only active (true) or inactive (false) alerts")] = None,
) -> AlertsPage:
    """The caller's alerts, newest first."""
    alerts, total = await service.list_alerts(
        session=session, user_id=user.id, offset=offset, limit=limit, active=active
    )
    return AlertsPage(items=[AlertPublic.from_row(a) for a in alerts], total=total, offset=offset, limit=limit)


@router.get("/{alert_id}")
async def read_alert(alert: OwnedAlert) -> AlertPublic:
    return AlertPublic.from_row(alert)


@router.patch("/{alert_id}")
async def update_alert(
    update_in: AlertUpdate, alert: OwnedAlert, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> AlertPublic:
    """Change the condition (checked against the alert's type), channels, cooldown, or re-arm / pause it."""
    sent = update_in.model_fields_set
    try:
        current = read_rule(alert.condition)
    except ValueError:
        # A row whose stored channels are unreadable: the request must replace them.
        current = AlertRule(condition=alert.condition, channels=[EmailChannel()], cooldown_minutes=None)
    condition = current.condition
    if "condition" in sent and update_in.condition is not None:
        try:
            condition = parse_condition(alert.alert_type, update_in.condition).model_dump(mode="json")
        except ValidationError as error:
            raise RequestValidationError(
                [{**e, "loc": ("body", "condition", *e["loc"])} for e in error.errors(include_url=False)]
            ) from error
    channels = current.channels
    if "channels" in sent and update_in.channels is not None:
        channels = list(update_in.channels)
        _refuse_private_webhooks(channels, settings)
        _refuse_foreign_addresses(channels, user)
    cooldown = update_in.cooldown_minutes if "cooldown_minutes" in sent else current.cooldown_minutes
    rule = AlertRule(condition=condition, channels=channels, cooldown_minutes=cooldown)
    updated = await service.update_alert(session=session, alert=alert, rule=rule, is_active=update_in.is_active)
    return AlertPublic.from_row(updated)


@router.delete("/{alert_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_alert(alert: OwnedAlert, session: SessionDep) -> None:
    """Delete the alert; the notifications it sent stay in the caller's history."""
    await service.delete_alert(session=session, alert=alert)
