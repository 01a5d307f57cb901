"""The BentoML prediction service: ``bentoml serve serving.service:DirectionService``.

- ``POST /predict`` with ``{"items": [{"coin": "bitcoin", "horizon": "7d"}, ...]}`` (1 to 256
  items; ``"contributions": true`` per item adds its top-k TreeSHAP contributions). Each item gets
  a prediction or a per-item error (unknown coin or horizon, stale features, no champion); a body
  that fails validation is a 400 naming the field.
- ``GET /status/health`` (always 200) and ``GET /status/ready`` (200 or 503) report the loaded model
  versions and the feature snapshot; BentoML's ``/readyz`` is 503 until a champion and features are
  loaded; ``/metrics`` is BentoML's Prometheus endpoint.

Performance choices (measured by benchmarks/bench_serving.py; see shared PERF-NOTES): an ``async``
API doing its few microseconds of work inline (answers are precomputed per feature snapshot and
champion, see serving.model_loader; TreeSHAP runs per request only for items that ask), one
worker set in the decorator (``bentoml serve`` has no workers flag), no access log, a short
traffic timeout (BentoML keeps every request's timer alive for the whole timeout), ``gc.freeze()``
after loading and larger young-generation thresholds, so collections skip the model and stay short.
"""

from __future__ import annotations

import gc
from typing import Annotated, Any

import bentoml
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import Field

from serving.schemas import MAX_ITEMS_PER_REQUEST, PredictionItem, PredictionResponse, ServiceStatus

status_app = FastAPI(title="khalsi-direction status", openapi_url=None, docs_url=None, redoc_url=None)


@bentoml.service(
    name="khalsi_direction",
    workers=1,
    # BentoML keeps each request's timer alive for the whole timeout (PERF-NOTES); 2 s is also the
    # product API's client timeout (Settings.ml.timeout_seconds), and a prediction takes ~1 ms.
    traffic={"timeout": 2},
    logging={"access": {"enabled": False}},
    metrics={"enabled": True},
)
@bentoml.asgi_app(status_app, path="/status")
class DirectionService:
    """Calibrated up/down probabilities, price targets and contributions per coin and horizon."""

    def __init__(self) -> None:
        # The service process is an entry point: it reads the settings once, as the CLI does.
        from khalsi.settings import get_settings
        from serving.model_loader import ServingRuntime

        self.runtime = ServingRuntime(get_settings())
        self.runtime.load()
        self.runtime.start_polling()
        # Everything loaded so far lives as long as the process: keep it out of every collection.
        gc.collect()
        gc.freeze()
        # Young objects here are per-request garbage: collect them in larger, rarer batches (with
        # the short traffic timeout this took p99 at 64 clients from ~140 ms to under 100 ms).
        gc.set_threshold(50_000, 20, 100)

    @bentoml.api(route="/predict")  # type: ignore[untyped-decorator]
    async def predict(
        self,
        items: Annotated[list[PredictionItem], Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)],
    ) -> PredictionResponse:
        """Predict every item (in request order); errors are per item, never a guess."""
        snapshot = self.runtime.snapshot
        return PredictionResponse(
            results=self.runtime.predict(items), feature_version=snapshot.version if snapshot else None
        )

    @status_app.get("/health")
    async def health(self) -> ServiceStatus:
        """Always 200 while the process runs: what is loaded and the latest errors."""
        return self.runtime.status()

    @status_app.get("/ready", response_model=ServiceStatus)
    async def ready(self) -> Any:
        """200 when a champion and features are loaded, else 503 (same body as health)."""
        status = self.runtime.status()
        return JSONResponse(status.model_dump(mode="json"), status_code=200 if status.ready else 503)

    def __is_ready__(self) -> bool:
        """BentoML's /readyz: a champion and a feature snapshot are loaded."""
        return self.runtime.ready

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def shutdown(self) -> None:
        """Stop the refresh thread."""
        self.runtime.stop()
