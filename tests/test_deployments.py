"""Prefect deployments: every flow has one, schedules fire when declared, entrypoints import, parameters fit.

Registration runs against the session's Prefect test server, on a process work pool like the one
docker-compose.yml's prefect-worker pulls from.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.utilities.importtools import import_object
from typer.testing import CliRunner

from flows.deployments import MARKET_DEPLOYMENT, WORK_POOL, describe, platform_deployments, register_deployments
from khalsi.settings import get_settings
from tests.factories import isolated_khalsi_env

REPO = Path(__file__).resolve().parent.parent
FLOWS = {"ingest_market", "ingest_social", "score", "train", "platform_pipeline", "drift_report"}
runner = CliRunner()


@pytest.fixture(scope="module")
def deployments() -> dict[str, RunnerDeployment]:
    return {d.name: d for d in platform_deployments()}


def _flow(deployment: RunnerDeployment) -> Flow[Any, Any]:
    flow = import_object(deployment.entrypoint or "")
    assert isinstance(flow, Flow)
    return flow


async def _fire_times(deployment: RunnerDeployment, n: int) -> list[datetime]:
    from prefect.server.schemas.schedules import CronSchedule

    (entry,) = deployment.schedules or []
    schedule = entry.schedule
    server_schedule = CronSchedule(cron=schedule.cron, timezone=schedule.timezone)  # type: ignore[union-attr]
    return list(await server_schedule.get_dates(n=n, start=datetime(2025, 1, 6, tzinfo=UTC)))  # a Monday


def test_every_flow_has_a_deployment(deployments: dict[str, RunnerDeployment]) -> None:
    assert {d.flow_name for d in deployments.values()} == FLOWS
    assert deployments["train-1d-weekly"].parameters == {"horizon": 1}
    assert deployments["train-7d-weekly"].parameters == {"horizon": 7}
    assert deployments["drift-daily"].parameters == {"current_days": 30}
    assert deployments["pipeline-on-demand"].schedules == []
    for deployment in deployments.values():
        assert deployment.concurrency_limit == 1
        assert "khalsi" in deployment.tags
        assert deployment.work_pool_name is None  # served as is; `deploy` sets the pool


def test_entrypoints_are_module_paths_that_import_the_flow(deployments: dict[str, RunnerDeployment]) -> None:
    # Module paths: the compose worker and `serve` import the installed package, no file storage.
    for deployment in deployments.values():
        assert deployment.entrypoint is not None
        assert ":" not in deployment.entrypoint
        assert deployment.entrypoint.startswith("flows.")
        assert _flow(deployment).name == deployment.flow_name


def test_parameters_validate_against_the_flow_signatures(deployments: dict[str, RunnerDeployment]) -> None:
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.schema_tools import validate

    for deployment in deployments.values():
        flow = _flow(deployment)
        flow.validate_parameters(deployment.parameters)
        schema = deployment._parameter_openapi_schema.model_dump()
        assert validate(deployment.parameters, schema, raise_on_error=False) == []
        assert set(deployment.parameters) <= set(schema["properties"])
    train = _flow(deployments["train-1d-weekly"])
    with pytest.raises(ParameterTypeError):
        train.validate_parameters({"horizon": "weekly"})
    schema = deployments["drift-daily"]._parameter_openapi_schema.model_dump()
    assert validate({"current_days": "a month"}, schema, raise_on_error=False)


async def test_schedules_parse_and_follow_the_data(deployments: dict[str, RunnerDeployment]) -> None:
    daily = {name: await _fire_times(deployments[name], 3) for name in ("market-daily", "social-daily")}
    daily |= {name: await _fire_times(deployments[name], 3) for name in ("score-after-ingest", "drift-daily")}
    for times in daily.values():
        assert [t.tzinfo is not None and t.utcoffset() == UTC.utcoffset(None) for t in times] == [True] * 3
        assert [(b - a).days for a, b in itertools.pairwise(times)] == [1, 1]
    first = {name: times[0] for name, times in daily.items()}
    # Each day: market, then social, then the scoring fallback, then drift (after scoring).
    assert first["market-daily"] < first["social-daily"] < first["score-after-ingest"] < first["drift-daily"]
    assert (first["market-daily"].hour, first["market-daily"].minute) == (0, 20)
    one_day = await _fire_times(deployments["train-1d-weekly"], 2)
    seven_day = await _fire_times(deployments["train-7d-weekly"], 2)
    assert [t.isoweekday() for t in one_day + seven_day] == [7, 7, 7, 7]  # Sundays
    assert (one_day[1] - one_day[0]).days == 7
    assert one_day[0] < seven_day[0]  # never both at once on two cores


def test_scoring_is_triggered_by_the_scheduled_market_ingest(deployments: dict[str, RunnerDeployment]) -> None:
    (trigger,) = deployments["score-after-ingest"].triggers
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.match_related is not None
    related = trigger.match_related if isinstance(trigger.match_related, list) else [trigger.match_related]
    assert [spec.root for spec in related] == [
        {"prefect.resource.role": "deployment", "prefect.resource.name": MARKET_DEPLOYMENT}
    ]
    assert deployments[MARKET_DEPLOYMENT].flow_name == "ingest_market"


def test_registered_on_the_process_pool_the_compose_worker_pulls(
    prefect_harness: None, deployments: dict[str, RunnerDeployment]
) -> None:
    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    ids = register_deployments(list(deployments.values()))
    assert register_deployments(list(deployments.values())) == ids  # idempotent: updated, not duplicated
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(WORK_POOL)
        assert pool.type == "process"
        for name, deployment in deployments.items():
            stored = client.read_deployment_by_name(f"{deployment.flow_name}/{name}")
            assert stored.work_pool_name == WORK_POOL
            assert stored.entrypoint == deployment.entrypoint
            assert stored.parameters == deployment.parameters
            assert stored.enforce_parameter_schema
            assert stored.global_concurrency_limit is not None
            assert stored.global_concurrency_limit.limit == 1
            assert [(s.schedule.cron, s.schedule.timezone) for s in stored.schedules] == [  # type: ignore[union-attr]
                (s.schedule.cron, s.schedule.timezone)  # type: ignore[union-attr]
                for s in deployment.schedules or []
            ]
        (automation,) = client.read_automations_by_name("score after each scheduled market ingest")
        score = client.read_deployment_by_name("score/score-after-ingest")
        assert [getattr(action, "deployment_id", None) for action in automation.actions] == [score.id]

        # The server holds runs to the flow's signature: a bad parameter is refused, a good one accepted.
        train = client.read_deployment_by_name("train/train-7d-weekly")
        with pytest.raises(PrefectHTTPStatusError, match="Validation failed for field 'horizon'"):
            client.create_flow_run_from_deployment(train.id, parameters={"horizon": "weekly"})
        run = client.create_flow_run_from_deployment(train.id, parameters={"horizon": 7})
        assert run.parameters == {"horizon": 7}


def test_the_server_schedules_runs_at_the_declared_times(
    prefect_harness: None, deployments: dict[str, RunnerDeployment]
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    register_deployments([deployments[MARKET_DEPLOYMENT]])
    with get_client(sync_client=True) as client:
        market = client.read_deployment_by_name(f"ingest_market/{MARKET_DEPLOYMENT}")
        # What the server's scheduler service does for every deployment, asked for explicitly.
        # Retried on 503 as Prefect's own client does: the harness's SQLite answers "busy" when the
        # session's earlier flows are still writing.
        for attempt in range(10):
            response = httpx.post(
                f"{PREFECT_API_URL.value()}/deployments/{market.id}/schedule",
                json={"start_time": "2030-01-01T00:00:00Z", "min_runs": 3, "max_runs": 3},
                timeout=30,
            )
            if response.status_code != 503:
                break
            time.sleep(0.5 * (attempt + 1))
        response.raise_for_status()
        # Limit and sort spelled out: the locked server refuses the client's nulls for them (422).
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[market.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=10,
        )
    times = sorted(r.expected_start_time for r in runs if r.expected_start_time is not None)
    assert [(t.day, t.hour, t.minute) for t in times[:3]] == [(1, 0, 20), (2, 0, 20), (3, 0, 20)]


def test_deployments_describe_their_schedule(deployments: dict[str, RunnerDeployment]) -> None:
    info = describe(deployments["drift-daily"])
    assert info == {
        "name": "drift_report/drift-daily",
        "entrypoint": "flows.drift.drift_report",
        "schedules": ["0 2 * * * (UTC)"],
        "triggers": [],
        "parameters": {"current_days": 30},
        "tags": ["khalsi", "monitoring"],
    }


def test_cli_lists_the_deployments_and_refuses_to_deploy_without_a_server(
    monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    from flows.ops_cli import console, ops_app

    monkeypatch.setattr(console, "width", 400)
    listed = runner.invoke(ops_app, ["deployments"])
    assert listed.exit_code == 0, listed.output
    for name in ("ingest_market/market-daily", "train/train-7d-weekly", "platform_pipeline/pipeline-on-demand"):
        assert name in listed.output
    assert "on demand" in listed.output
    assert "score after each scheduled market ingest" in listed.output

    saved = dict(os.environ)
    isolated_khalsi_env(monkeypatch, HOME=str(home), ENVIRONMENT="test")
    try:
        refused = runner.invoke(ops_app, ["deploy"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
    assert refused.exit_code == 2
    assert "KHALSI_PREFECT_API_URL is not set" in refused.output
