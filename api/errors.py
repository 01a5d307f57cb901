"""App-wide error answers that FastAPI's defaults get wrong."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def _finite(value: Any) -> Any:
    """The value with NaN and infinities as text: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def validation_error(_request: Request, error: Exception) -> JSONResponse:
    """422 with FastAPI's usual body, even when the bad input was a bare ``NaN`` or ``Infinity``.

    The default handler echoes the input back and crashes on non-finite floats (a 500 for a client
    mistake), because a strict JSON encoder refuses them.
    """
    assert isinstance(error, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(error.errors()))})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
