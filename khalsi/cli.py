"""``khalsi``: the one entry point for people. Every ``make`` target calls it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from khalsi.settings import Settings, get_settings

app = typer.Typer(help="Khalsi: a workflow-orchestrated ML platform for crypto markets.", no_args_is_help=True)
db_app = typer.Typer(help="The relational schema.", no_args_is_help=True)
ingest_app = typer.Typer(help="Run one ingestion flow.", no_args_is_help=True)
replay_app = typer.Typer(help="Serve the bundled real data in the real APIs' shapes.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ingest_app, name="ingest")
app.add_typer(replay_app, name="replay")


def _mount_domain_commands() -> None:
    # Commands live beside the code they drive; typer merges them here.
    from api.alerts.cli import alerts_app
    from flows.ops_cli import ops_app
    from training.cli import training_app

    app.add_typer(training_app)  # train / evaluate / experiments compare
    app.add_typer(alerts_app, name="alerts")  # alerts evaluate
    app.add_typer(ops_app, name="ops")  # ops drift / deployments / serve / deploy


_mount_domain_commands()

console = Console()
REPO_ROOT = Path(__file__).resolve().parent.parent


def _settings() -> Settings:
    from khalsi.runtime import configure_runtime

    settings = get_settings()
    configure_runtime(settings)
    return settings


def _engine(settings: Settings) -> Any:
    from khalsi.db.engine import create_sync_engine
    from khalsi.db.migrate import upgrade

    engine = create_sync_engine(settings)
    upgrade(engine)
    return engine


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to the configured database."""
    from khalsi.db.migrate import current_revision

    settings = _settings()
    engine = _engine(settings)
    console.print(f"database at revision [bold]{current_revision(engine)}[/] ({engine.url.render_as_string()})")


@ingest_app.command("market")
def ingest_market_command(
    coin: Annotated[list[str] | None, typer.Option(help="CoinGecko id; repeat for several (default: all)")] = None,
) -> None:
    """Fetch, validate and store new daily market data."""
    from flows.ingest_market import ingest_market

    settings = _settings()
    asyncio.run(ingest_market(coins=coin))
    print_summary(settings)


@ingest_app.command("social")
def ingest_social_command() -> None:
    """Fetch, validate and store social posts, Fear & Greed and trending coins."""
    from flows.ingest_social import ingest_social

    settings = _settings()
    asyncio.run(ingest_social())
    print_summary(settings)


@app.command("import")
def import_command(
    paths: Annotated[list[Path], typer.Argument(help="CoinGecko 'Export Data' or Fear & Greed CSV files")],
    coin: Annotated[str | None, typer.Option(help="CoinGecko id of a single export (default: from file name)")] = None,
) -> None:
    """Load CSV files through the same validation gate as live data."""
    from khalsi.ingest.importer import import_files
    from khalsi.ingest.pipeline import raise_if_quarantined
    from khalsi.sources.exports import UnrecognisedFileError

    settings = _settings()
    engine = _engine(settings)
    try:
        outcomes = import_files(engine, settings, paths, coin_id=coin)
    except UnrecognisedFileError as error:
        console.print(f"[red]refused:[/] {error}")
        raise typer.Exit(code=2) from error
    table = Table("file / dataset", "status", "rows in", "stored", "rejected", "message")
    for outcome in outcomes:
        table.add_row(
            f"{outcome.dataset}/{outcome.name}",
            outcome.status,
            str(outcome.rows_in),
            str(outcome.rows_stored),
            str(outcome.rows_rejected),
            outcome.message or "; ".join(outcome.warnings[:2]),
        )
    console.print(table)
    try:
        raise_if_quarantined(outcomes, settings)
    except RuntimeError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(code=1) from error


@replay_app.command("serve")
def replay_serve_command(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8765,
    start: Annotated[
        str | None, typer.Option(help="replay start day (default: KHALSI_REPLAY_START or the end)")
    ] = None,
    speed: Annotated[float | None, typer.Option(help="simulated seconds per wall second (0 = frozen)")] = None,
) -> None:
    """Serve CoinGecko's API shapes from the bundled history; point KHALSI_COINGECKO_API_URL at it."""
    from khalsi.sources.replay import serve_replay

    settings = _settings()
    console.print(f"CoinGecko replay on http://{host}:{port}/api/v3 (set KHALSI_COINGECKO_API_URL to use it)")
    serve_replay(
        host=host,
        port=port,
        start=start or settings.replay_start or None,
        speed=settings.replay_speed if speed is None else speed,
        log_level=settings.log_level,
    )


@app.command("summary")
def summary_command() -> None:
    """Print what is stored: coins, date ranges, rows, rejected rows, social datasets."""
    print_summary(_settings())


def print_summary(settings: Settings) -> None:
    """The summary table ``make run`` ends with."""
    from khalsi.ingest.summary import market_summary, social_summary

    engine = _engine(settings)
    market = Table(title="Market data (validated, daily 00:00 UTC)")
    for column in ("coin", "symbol", "first", "last", "rows", "rejected rows", "quarantined batches"):
        market.add_column(
            column, justify="right" if column in {"rows", "rejected rows", "quarantined batches"} else "left"
        )
    for coin in market_summary(engine):
        market.add_row(
            coin.coin_id,
            coin.symbol.upper(),
            f"{coin.first:%Y-%m-%d}",
            f"{coin.last:%Y-%m-%d}",
            f"{coin.rows:,}",
            str(coin.rejected),
            str(coin.quarantined),
        )
    console.print(market)
    social = Table(title="Social data")
    for column in ("dataset", "first", "last", "rows", "detail"):
        social.add_column(column)
    for dataset in social_summary(engine):
        social.add_row(dataset.dataset, dataset.first or "-", dataset.last or "-", f"{dataset.rows:,}", dataset.detail)
    console.print(social)
    console.print(f"KHALSI_HOME: {settings.home.resolve()}  (lake: {settings.lake_dir}, database: {engine.url})")


@app.command("run")
def run_command(
    train: Annotated[bool, typer.Option(help="train and maybe promote a model per horizon")] = True,
    serve: Annotated[bool, typer.Option(help="then serve predictions and the API until Ctrl-C")] = True,
) -> None:
    """Run the whole platform on the configured sources (bundled real data by default)."""
    from flows.pipeline import platform_pipeline

    settings = _settings()
    started = time.perf_counter()
    console.rule("Khalsi: ingest, validate, train, score")
    result = asyncio.run(platform_pipeline(train_models=train))
    print_summary(settings)
    if train:
        print_training_summary(settings, result["training_runs"])
    scored = result["score"]
    console.print(
        f"scored {scored['predicted']} (coin, horizon) pairs with {scored['models'] or 'no champion'}, "
        f"{scored['written']} new predictions stored; skipped: {scored['skipped'] or 'none'}"
    )
    console.print(f"pipeline done in {time.perf_counter() - started:.0f} s")
    if serve:
        serve_command()


@app.command("score")
def score_command() -> None:
    """Publish the latest feature vectors and store every coin's and horizon's prediction."""
    from flows.score import score

    _settings()
    console.print_json(data=score(), default=str)


@app.command("serve")
def serve_command() -> None:
    """Serve predictions (BentoML) and the product API (uvicorn) until Ctrl-C."""
    settings = _settings()
    bento = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:DirectionService",
        "--host",
        settings.serving.host,
        "--port",
        str(settings.serving.port),
    ]
    api = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:create_app",
        "--factory",
        "--host",
        settings.serving.host,
        "--port",
        str(settings.port),
        "--no-access-log",
    ]
    processes = [subprocess.Popen(command, cwd=REPO_ROOT) for command in (bento, api)]  # noqa: S603
    console.print(
        f"predictions: http://{settings.serving.host}:{settings.serving.port}/predict  "
        f"(ready: /readyz, metrics: /metrics)\n"
        f"API:         http://{settings.serving.host}:{settings.port}/health  (docs: /docs)\n"
        f"MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}\n"
        f"Prefect UI:  PREFECT_HOME={settings.home.resolve() / 'prefect'} .venv/bin/prefect server start\n"
        "Ctrl-C stops both services."
    )
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    failed = [p.args for p in processes if p.returncode not in (0, -15, None)]
    if failed:
        raise typer.Exit(code=1)


def print_training_summary(settings: Settings, runs: dict[str, str]) -> None:
    """Each horizon's run beside its baselines, and which version is champion."""
    import polars as pl

    from training.compare import runs_frame, runs_table
    from training.config import registered_model_name
    from training.registry import champion_version, configure_mlflow

    client = configure_mlflow(settings)
    frame = runs_frame(settings)
    if "run_id" in frame.columns:
        frame = frame.filter(pl.col("run_id").is_in(list(runs.values())))
    console.print(runs_table(frame))
    for horizon, run_id in runs.items():
        champion = champion_version(client, registered_model_name(int(horizon.rstrip("d"))))
        state = (
            f"champion is version {champion.version}"
            if champion
            else "no champion: no model has beaten the base rate by the declared margin"
        )
        console.print(f"{horizon}: trained in run {run_id}; {state}")


@app.command("settings")
def settings_command() -> None:
    """Show the effective settings (secrets masked)."""
    console.print_json(get_settings().model_dump_json(indent=2))


@app.command("check")
def check_command(
    pytest_args: Annotated[list[str] | None, typer.Argument(help="extra pytest arguments")] = None,
) -> None:
    """Lint, type-check and test: what ``make test`` and CI run."""
    python = sys.executable
    steps = [
        ("ruff check", [python, "-m", "ruff", "check", "."]),
        ("ruff format", [python, "-m", "ruff", "format", "--check", "."]),
        ("mypy", [python, "-m", "mypy"]),
        ("pytest", [python, "-m", "pytest", *(pytest_args or [])]),
    ]
    for name, command in steps:
        console.rule(name)
        result = subprocess.run(command, cwd=REPO_ROOT, check=False)  # noqa: S603 - fixed commands
        if result.returncode != 0:
            console.print(f"[red]{name} failed (exit {result.returncode})[/]")
            raise typer.Exit(code=result.returncode)
    console.print("[green]all checks passed[/]")


@app.command("bench")
def bench_command() -> None:
    """Run the benchmarks; each prints its own figures."""
    for script in sorted((REPO_ROOT / "benchmarks").glob("bench_*.py")):
        console.rule(script.stem)
        subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, check=True)  # noqa: S603


if __name__ == "__main__":
    app()
