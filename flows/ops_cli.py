"""Operations commands, mounted on the ``khalsi`` CLI by the integrator: ``app.add_typer(ops_app, name="ops")``.

- ``khalsi ops drift [--horizon H ...] [--days N] [--as-of DATE] [--fail-on-drift]``: run the drift flow
- ``khalsi ops deployments``: every deployment with its schedule, trigger, parameters and entrypoint
- ``khalsi ops serve [--port P] [--limit N]``: run the scheduled deployments locally, no Docker
- ``khalsi ops deploy [--pool NAME]``: register them on a Prefect server's process pool (compose)
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.deployments import LOCAL_SERVER_PORT, WORK_POOL
from khalsi.settings import Settings, get_settings

ops_app = typer.Typer(no_args_is_help=True, help="Operations: drift reports and the scheduled deployments.")
console = Console()
DATE_FORMATS = ["%Y-%m-%d"]
# Exit code of `ops drift --fail-on-drift` when a horizon's verdict is "drift" (1 is any other failure).
DRIFT_EXIT_CODE = 3


def _runtime_settings() -> Settings:
    from khalsi.runtime import configure_runtime

    settings = get_settings()
    configure_runtime(settings)
    return settings


@ops_app.command("drift")
def drift_command(
    horizon: Annotated[
        list[int] | None, typer.Option("--horizon", help="Horizon in days; repeat (default: all)")
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Days of recent features to compare")] = 30,
    as_of: Annotated[
        datetime | None, typer.Option("--as-of", formats=DATE_FORMATS, help="Last day of the window (YYYY-MM-DD)")
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help=f"Exit with {DRIFT_EXIT_CODE} when a verdict is 'drift'")
    ] = False,
) -> None:
    """Compare each horizon's champion with recent features; write Evidently reports under KHALSI_HOME."""
    from flows.drift import drift_report

    _runtime_settings()
    outcomes = drift_report(horizons=horizon, current_days=days, as_of=as_of.date() if as_of else None)
    table = Table("horizon", "status", "verdict", "model", "report", "why")
    for outcome in outcomes.values():
        colour = {"ok": "green", "warning": "yellow", "drift": "red"}.get(outcome["verdict"] or "", "white")
        table.add_row(
            outcome["horizon"],
            outcome["status"],
            f"[{colour}]{outcome['verdict'] or '-'}[/]",
            outcome["model"] or "-",
            outcome["html_path"] or "-",
            outcome["message"],
        )
    console.print(table)
    if fail_on_drift and any(outcome["verdict"] == "drift" for outcome in outcomes.values()):
        raise typer.Exit(DRIFT_EXIT_CODE)


@ops_app.command("deployments")
def deployments_command() -> None:
    """List the deployments: name, schedule (UTC), trigger, parameters and entrypoint."""
    from flows.deployments import describe, platform_deployments

    table = Table("deployment", "schedule", "trigger", "parameters", "entrypoint")
    for deployment in platform_deployments():
        info = describe(deployment)
        table.add_row(
            info["name"],
            ", ".join(info["schedules"]) or "on demand",
            ", ".join(info["triggers"]) or "-",
            ", ".join(f"{k}={v}" for k, v in info["parameters"].items()) or "-",
            info["entrypoint"],
        )
    console.print(table)


@ops_app.command("serve")
def serve_command(
    port: Annotated[int, typer.Option(help="Port of the local Prefect server (when none is configured)")] = (
        LOCAL_SERVER_PORT
    ),
    limit: Annotated[int | None, typer.Option(help="Most flow runs at once (default: no limit)")] = None,
) -> None:
    """Run the scheduled deployments from this process until Ctrl-C (starts a local Prefect server if needed)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import local_prefect_server, serve_deployments

    settings = _runtime_settings()
    with contextlib.ExitStack() as stack:
        if not settings.prefect.api_url:
            # The ephemeral API runs no scheduler: scheduled runs need a real server.
            api_url = stack.enter_context(local_prefect_server(settings, port=port))
            # The runner's subprocesses read the environment; this process reads Prefect's settings.
            os.environ["PREFECT_API_URL"] = api_url
            stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
            console.print(f"Prefect server (UI and API): {api_url.removesuffix('/api')}")
        serve_deployments(limit=limit)


@ops_app.command("deploy")
def deploy_command(
    pool: Annotated[str, typer.Option(help="Process work pool the worker pulls from")] = WORK_POOL,
) -> None:
    """Register the deployments on the configured Prefect server's process pool (docker compose's worker)."""
    from flows.deployments import register_deployments

    settings = _runtime_settings()
    if not settings.prefect.api_url:
        console.print(
            "[red]KHALSI_PREFECT_API_URL is not set: the ephemeral API has no worker or scheduler to run "
            "deployments. Point it at a Prefect server, or use `khalsi ops serve`.[/]"
        )
        raise typer.Exit(2)
    ids = register_deployments(work_pool_name=pool)
    console.print(f"{len(ids)} deployments registered on work pool {pool!r} at {settings.prefect.api_url}")
