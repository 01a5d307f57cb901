"""Prefect deployments of every Khalsi flow, with their schedules: one definition, two ways to run them.

- **docker compose**: the ``prefect-worker`` service runs ``prefect worker start --pool khalsi --type
  process`` in the Khalsi image. :func:`register_deployments` (``khalsi ops deploy``, once, with
  ``KHALSI_PREFECT_API_URL`` pointing at ``prefect-server``) creates that process pool if it is missing
  and registers these deployments on it. Each entrypoint is a module path (``flows.score.score``):
  the worker runs a flow run as a subprocess in the same image, where the project is installed, so
  no code storage, image build or push is involved, and the run reads the worker's ``KHALSI_*``
  environment like any other process.
- **locally, without Docker**: :func:`serve_deployments` (``khalsi ops serve``) registers the same
  deployments and runs them from one process with Prefect's runner. Schedules need a Prefect
  server's scheduler, which Prefect's ephemeral API does not run, so the CLI starts one under
  KHALSI_HOME (:func:`local_prefect_server`) unless ``KHALSI_PREFECT_API_URL`` names one.

Schedules are in UTC and follow the data. CoinGecko closes a daily candle at 00:00 UTC, so market
data is ingested at 00:20 and social data at 00:35. Scoring runs when a scheduled market ingest
completes (an event trigger on that deployment) and again at 01:00 as a fallback: it is idempotent,
so a second run writes nothing. Drift is checked daily at 02:00, after scoring. Each horizon is
retrained weekly on Sunday, 1d at 03:00 and 7d at 04:00 (two cores: never both at once). The
whole pipeline has a deployment without a schedule, to run on demand. Every deployment allows one
run at a time: ingests rewrite lake partitions and training is CPU-bound.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import httpx

from khalsi.runtime import stop_process
from khalsi.settings import Settings

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

# docker-compose.yml's prefect-worker pulls from this process pool.
WORK_POOL = "khalsi"
SCHEDULE_TIMEZONE = "UTC"
TAGS = ["khalsi"]
MARKET_DEPLOYMENT = "market-daily"
LOCAL_SERVER_PORT = 4200
LOCAL_SERVER_STARTUP_SECONDS = 180.0

T = TypeVar("T")


def _called_synchronously(value: T | Coroutine[Any, Any, T]) -> T:
    # Prefect's `to_deployment` and `deploy` return a coroutine when called inside an event loop.
    if inspect.iscoroutine(value):
        value.close()
        raise RuntimeError("build and register deployments outside a running event loop")
    return value  # type: ignore[return-value]


def platform_deployments() -> list[RunnerDeployment]:
    """Every flow's deployment with its schedule, default parameters and module-path entrypoint."""
    # Imported here: the flows pull in training, serving and Evidently (seconds of imports).
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.drift import DEFAULT_CURRENT_DAYS, drift_report
    from flows.ingest_market import ingest_market
    from flows.ingest_social import ingest_social
    from flows.pipeline import platform_pipeline
    from flows.score import score
    from flows.train import train

    def daily(cron: str) -> list[Any]:
        return [Cron(cron, timezone=SCHEDULE_TIMEZONE)]

    common: dict[str, Any] = {"concurrency_limit": 1, "entrypoint_type": EntrypointType.MODULE_PATH}
    after_market_ingest = DeploymentEventTrigger(
        name="score after each scheduled market ingest",
        expect={"prefect.flow-run.Completed"},
        match_related={"prefect.resource.role": "deployment", "prefect.resource.name": MARKET_DEPLOYMENT},
    )
    built = [
        ingest_market.to_deployment(
            MARKET_DEPLOYMENT,
            schedules=daily("20 0 * * *"),
            description="New daily market rows of every configured coin (CoinGecko closes days at 00:00 UTC).",
            tags=[*TAGS, "ingest"],
            **common,
        ),
        ingest_social.to_deployment(
            "social-daily",
            schedules=daily("35 0 * * *"),
            description="Social posts, the Fear & Greed Index, trending coins and the daily aggregates.",
            tags=[*TAGS, "ingest"],
            **common,
        ),
        score.to_deployment(
            "score-after-ingest",
            schedules=daily("0 1 * * *"),
            triggers=[after_market_ingest],
            description="Publish the latest feature vectors and store every prediction (idempotent).",
            tags=[*TAGS, "serving"],
            **common,
        ),
        drift_report.to_deployment(
            "drift-daily",
            schedules=daily("0 2 * * *"),
            parameters={"current_days": DEFAULT_CURRENT_DAYS},
            description="Champions against the last 30 days of features and predictions; Evidently reports.",
            tags=[*TAGS, "monitoring"],
            **common,
        ),
        train.to_deployment(
            "train-1d-weekly",
            schedules=[Cron("0 3 * * 0", timezone=SCHEDULE_TIMEZONE)],
            parameters={"horizon": 1},
            description="Walk-forward retrain of the 1-day model; promoted only by the declared rule.",
            tags=[*TAGS, "training"],
            **common,
        ),
        train.to_deployment(
            "train-7d-weekly",
            schedules=[Cron("0 4 * * 0", timezone=SCHEDULE_TIMEZONE)],
            parameters={"horizon": 7},
            description="Walk-forward retrain of the 7-day model; promoted only by the declared rule.",
            tags=[*TAGS, "training"],
            **common,
        ),
        platform_pipeline.to_deployment(
            "pipeline-on-demand",
            description="Ingest, train every horizon, score: the whole platform once (no schedule).",
            tags=[*TAGS, "pipeline"],
            **common,
        ),
    ]
    return [_called_synchronously(deployment) for deployment in built]


def ensure_work_pool(name: str = WORK_POOL) -> None:
    """Create the process work pool (with the process worker's default job template) if it is missing."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="Khalsi's scheduled flows, run as subprocesses by `prefect worker start --pool`.",
                )
            )


def register_deployments(
    deployments: list[RunnerDeployment] | None = None, *, work_pool_name: str = WORK_POOL
) -> list[UUID]:
    """Register the deployments on a process work pool of the configured Prefect API (compose's worker).

    Each deployment is applied directly: ``prefect.deploy`` would do the same after asking for the
    pool's online workers, a request the locked Prefect client and server disagree on (422).
    """
    ensure_work_pool(work_pool_name)
    return [
        _called_synchronously(deployment.apply(work_pool_name=work_pool_name))
        for deployment in (deployments if deployments is not None else platform_deployments())
    ]


def serve_deployments(deployments: list[RunnerDeployment] | None = None, *, limit: int | None = None) -> None:
    """Register and run the deployments from this process until interrupted (Prefect's runner)."""
    from prefect import serve

    serve(*(deployments if deployments is not None else platform_deployments()), limit=limit)


@contextmanager
def local_prefect_server(
    settings: Settings, *, port: int = LOCAL_SERVER_PORT, startup_seconds: float = LOCAL_SERVER_STARTUP_SECONDS
) -> Iterator[str]:
    """A Prefect server (scheduler included) under KHALSI_HOME/prefect for the duration; yields its API URL.

    It keeps its database where the ephemeral API keeps it (``configure_runtime`` exported the
    location), so runs made either way are in one place. Stopped on exit.
    """
    api_url = f"http://127.0.0.1:{port}/api"
    environment = {
        **os.environ,
        "PREFECT_HOME": str((settings.home / "prefect").resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    environment.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=environment)  # noqa: S603 - a fixed command
    try:
        deadline = time.monotonic() + startup_seconds
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with code {server.returncode} (is port {port} free?)")
            try:
                if httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Prefect server did not answer on {api_url} within {startup_seconds:.0f} s")
            time.sleep(1.0)
        yield api_url
    finally:
        stop_process(server)


def describe(deployment: RunnerDeployment) -> dict[str, Any]:
    """What a deployment will do, in plain values (for the CLI's table and for inspection)."""
    schedules = []
    for entry in deployment.schedules or []:
        schedule = entry.schedule
        cron = getattr(schedule, "cron", None)
        timezone = getattr(schedule, "timezone", None)
        schedules.append(f"{cron} ({timezone})" if cron else str(schedule))
    return {
        "name": f"{deployment.flow_name}/{deployment.name}",
        "entrypoint": deployment.entrypoint,
        "schedules": schedules,
        "triggers": [getattr(trigger, "name", None) or type(trigger).__name__ for trigger in deployment.triggers],
        "parameters": dict(deployment.parameters),
        "tags": list(deployment.tags),
    }
