"""``khalsi alerts ...``, mounted on the CLI by the integrator: ``app.add_typer(alerts_app, name="alerts")``.

- ``khalsi alerts evaluate``: one pass of the ``evaluate_alerts`` flow, then its counts.
"""

from __future__ import annotations

import asyncio
import json

import typer
from rich.console import Console

alerts_app = typer.Typer(no_args_is_help=True, help="User alerts: evaluate them against the newest stored data.")


@alerts_app.command("evaluate")
def evaluate_command(
    as_json: bool = typer.Option(False, "--json", help="print the counts as JSON"),
) -> None:
    """Fire the alerts whose condition holds on the newest stored data, and deliver their notifications."""
    from flows.alerts import evaluate_alerts
    from khalsi.runtime import configure_runtime
    from khalsi.settings import get_settings

    configure_runtime(get_settings())
    counts = asyncio.run(evaluate_alerts())
    if as_json:
        typer.echo(json.dumps(counts, sort_keys=True))
        return
    console = Console()
    console.print(
        f"checked {counts['checked']} alerts: [bold]{counts['triggered']}[/] fired, "
        f"{counts['notifications']} notifications ({counts['sent']} sent, {counts['failed']} failed), "
        f"{counts['recovered']} left-over deliveries retried"
    )
    if counts["skipped"]:
        console.print(f"not evaluated: {counts['skipped']}")
    if counts["failed"]:
        # Not an exit code: a failed delivery is recorded on its notification and can be retried.
        console.print(f"[red]{counts['failed']} deliveries failed[/]: see GET /api/v1/notifications?status=failed")
