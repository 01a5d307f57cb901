"""Process start-up: point Prefect (and its files) at the configured place, once, from the entry point.

Prefect reads its configuration from the environment, so the CLI translates Khalsi's settings into
Prefect's variables before the first flow runs; nothing here happens at import time.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

from khalsi.settings import Settings


def configure_runtime(settings: Settings) -> None:
    """Make Prefect's state live under KHALSI_HOME (or use the configured server) and quiet its telemetry."""
    settings.ensure_home()
    prefect_home = (settings.home / "prefect").resolve()
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", settings.log_level.upper())
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    # BentoML keeps its model store and bentos in ~/bentoml unless told otherwise.
    os.environ.setdefault("BENTOML_HOME", str((settings.home / "bentoml").resolve()))
    if settings.prefect.api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect.api_url
    else:
        # Prefect's ephemeral API: an in-process server with its database under KHALSI_HOME.
        os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
        # On a busy 2-core machine the ephemeral server can take longer than Prefect's 20 s default.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        os.environ.setdefault(
            "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
        )
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stop_process(process: subprocess.Popen[Any], *, grace_seconds: float = 30.0) -> None:
    """Ask a child process to stop (SIGTERM), and kill it if it has not within the grace period."""
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
