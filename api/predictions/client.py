"""The product API's client of the BentoML prediction service: one pooled aiohttp session per app.

aiohttp rather than the app's shared httpx client: as a forwarder httpx's async client pegged a
core while BentoML idled, aiohttp did not (PERF-NOTES, encode/httpx#3215).

Lifecycle (``api/main.py`` is not this package's to change): the client is created on first use
by the :func:`get_ml_client` dependency and kept on ``app.state``; the predictions router carries a
lifespan (:func:`ml_client_lifespan`) that FastAPI merges into the app's when the router is
included, and which closes the session when the app shuts down. Created lazily rather than in that
lifespan, so an app that never predicts opens no pool, and the session is born on the loop that
serves the requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import aiohttp
from fastapi import Depends, FastAPI, Request
from pydantic import ValidationError

from api.predictions.exceptions import MLServiceUnavailableError
from api.predictions.schemas import PredictionQuery
from khalsi.settings import MLServiceSettings
from serving.schemas import PredictionResponse, PredictionResult

ML_CLIENT_STATE = "ml_client"
# Connections kept to the service. One BentoML worker answers ~850 req/s at 16 concurrent
# (PERF-NOTES); more open connections only queue inside it.
POOL_SIZE = 64
# How much of a failing answer to quote in logs and fallback reasons.
QUOTED_BODY_CHARS = 200


@dataclass(frozen=True)
class MLServiceClient:
    """``POST /predict`` on the prediction service, over a pooled session."""

    session: aiohttp.ClientSession
    predict_url: str
    timeout_seconds: float

    @classmethod
    def create(cls, settings: MLServiceSettings) -> MLServiceClient:
        """A client with its own pool (call inside the running loop)."""
        headers = {"Accept": "application/json"}
        if settings.api_key is not None:
            # The service itself is open on its network; a gateway in front of it may ask for a key.
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_SIZE),
            timeout=aiohttp.ClientTimeout(total=settings.timeout_seconds),
            headers=headers,
        )
        return cls(
            session=session, predict_url=f"{settings.url.rstrip('/')}/predict", timeout_seconds=settings.timeout_seconds
        )

    async def predict(self, queries: Sequence[PredictionQuery]) -> list[PredictionResult]:
        """The service's answer per query, in order; raises MLServiceUnavailableError when it has none."""
        # Ids are lower case; serving matches ids exactly and symbols in any case.
        payload = {"items": [{"coin": query.coin.lower(), "horizon": query.horizon} for query in queries]}
        try:
            async with self.session.post(
                self.predict_url, data=json.dumps(payload), headers={"Content-Type": "application/json"}
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError as error:
            raise MLServiceUnavailableError(
                f"the prediction service did not answer within {self.timeout_seconds:g} s"
            ) from error
        except aiohttp.ClientError as error:
            raise MLServiceUnavailableError(f"the prediction service is unreachable ({error})") from error
        if status != 200:
            quoted = body[:QUOTED_BODY_CHARS].decode(errors="replace")
            raise MLServiceUnavailableError(f"the prediction service answered HTTP {status}: {quoted}")
        try:
            answer = PredictionResponse.model_validate_json(body)
        except ValidationError as error:
            raise MLServiceUnavailableError("the prediction service answered a body that is not predictions") from error
        if len(answer.results) != len(queries):
            raise MLServiceUnavailableError(
                f"the prediction service answered {len(answer.results)} results for {len(queries)} items"
            )
        return answer.results

    async def close(self) -> None:
        await self.session.close()


async def get_ml_client(request: Request) -> MLServiceClient:
    """The app's client, created on first use (no await between the check and the store: no race)."""
    client: MLServiceClient | None = getattr(request.app.state, ML_CLIENT_STATE, None)
    if client is None or client.session.closed:
        client = MLServiceClient.create(request.app.state.settings.ml_service)
        setattr(request.app.state, ML_CLIENT_STATE, client)
    return client


@asynccontextmanager
async def ml_client_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Nothing to open at start-up; at shutdown, close the session if a request opened one."""
    yield
    client: MLServiceClient | None = getattr(app.state, ML_CLIENT_STATE, None)
    if client is not None:
        setattr(app.state, ML_CLIENT_STATE, None)
        await client.close()
        # Let the connector's transports finish closing before the loop goes (aiohttp's advice).
        await asyncio.sleep(0)


MLClientDep = Annotated[MLServiceClient, Depends(get_ml_client)]
