"""Training commands, mounted on the ``khalsi`` CLI by the integrator: ``app.add_typer(training_app)``.

- ``khalsi train [--config FILE] [--horizon H] [--train-end DATE]``
- ``khalsi evaluate --horizon H --start D --end D [--model-version V] [--json FILE]``
- ``khalsi experiments compare [--horizon H]``
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from khalsi.settings import get_settings
from training.config import ConfigError, default_config, load_config

training_app = typer.Typer(no_args_is_help=True, help="Train, evaluate and compare direction models.")
experiments_app = typer.Typer(no_args_is_help=True, help="Inspect tracked experiments.")
training_app.add_typer(experiments_app, name="experiments")

DATE_FORMATS = ["%Y-%m-%d"]


@training_app.command("train")
def train_command(
    config: Annotated[Path | None, typer.Option("--config", help="Experiment YAML (default: the horizon's)")] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", help="Horizon in days (1 or 7)")] = None,
    train_end: Annotated[
        datetime | None,
        typer.Option("--train-end", formats=DATE_FORMATS, help="Read nothing after this day (YYYY-MM-DD)"),
    ] = None,
) -> None:
    """Walk-forward train, log to MLflow, register, and promote only if the rule says so."""
    console = Console()
    from training.data import NoTrainingDataError
    from training.experiment import run_experiment
    from training.walk_forward import NotEnoughDataError

    try:
        experiment = load_config(config) if config is not None else default_config(horizon or 1)
    except ConfigError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    if horizon is not None and horizon != experiment.horizon_days:
        console.print(f"[red]--horizon {horizon} contradicts the config's horizon_days {experiment.horizon_days}[/red]")
        raise typer.Exit(2)
    experiment = experiment.with_train_end(train_end.date() if train_end else None)
    console.print(
        f"Training [bold]{experiment.name}[/bold] (H={experiment.horizon_days}d, "
        f"train_end={experiment.data.train_end or 'all data'})"
    )
    try:
        outcome = run_experiment(get_settings(), experiment, progress=lambda line: console.print(f"  {line}"))
    except (NoTrainingDataError, NotEnoughDataError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from error
    from training.evaluate import metrics_table

    console.print(
        metrics_table(
            outcome.summary,
            title=(
                f"Out of sample {outcome.summary.first_day}..{outcome.summary.last_day}, "
                f"{outcome.summary.n_predictions} predictions"
            ),
        )
    )
    colour = "green" if outcome.decision.promoted else "yellow"
    console.print(
        f"run {outcome.run_id} -> {outcome.model_name} v{outcome.model_version}; "
        f"[{colour}]{'promoted to champion' if outcome.decision.promoted else 'not promoted'}[/{colour}]: "
        f"{outcome.decision.reason}"
    )
    console.print(f"took {outcome.elapsed_seconds:.1f}s")


@training_app.command("evaluate")
def evaluate_command(
    horizon: Annotated[int, typer.Option("--horizon", help="Horizon in days")],
    start: Annotated[datetime, typer.Option("--start", formats=DATE_FORMATS, help="First day scored")],
    end: Annotated[datetime, typer.Option("--end", formats=DATE_FORMATS, help="Last day scored")],
    model_version: Annotated[str | None, typer.Option("--model-version", help="Version (default: champion)")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the scores to this file")] = None,
) -> None:
    """Score a trained model (nothing retrained) on a stored date range, beside the baselines."""
    console = Console()
    from training.evaluate import EmptyEvaluationError, evaluate_model, metrics_table
    from training.registry import ModelNotFoundError

    try:
        report = evaluate_model(
            get_settings(), horizon_days=horizon, start=start.date(), end=end.date(), model_version=model_version
        )
    except (ModelNotFoundError, EmptyEvaluationError, ValueError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from error
    console.print(
        metrics_table(
            report.summary,
            title=(
                f"{report.model_name} v{report.model_version} on {report.start}..{report.end} "
                f"({report.summary.n_predictions} predictions)"
            ),
        )
    )
    if report.in_sample_rows:
        console.print(
            f"[yellow]{report.in_sample_rows} of these rows are on or before {report.trained_until}, "
            "inside the model's training data: those scores are in sample.[/yellow]"
        )
    if json_path is not None:
        json_path.write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
        console.print(f"wrote {json_path}")


@experiments_app.command("compare")
def compare_command(
    horizon: Annotated[list[int] | None, typer.Option("--horizon", help="Only these horizons")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many runs")] = 30,
) -> None:
    """Runs side by side: out-of-sample metrics, baselines, data fingerprint, promotion."""
    console = Console()
    from training.compare import runs_frame, runs_table

    frame = runs_frame(get_settings(), horizons=horizon, max_runs=limit)
    if frame.height == 0:
        console.print("No training runs yet: run `khalsi train` first.")
        return
    console.print(runs_table(frame))
