"""A real product API for the benchmarks: a throw-away PostgreSQL database and one uvicorn worker.

Not a benchmark itself (``make bench`` runs only ``bench_*.py``); ``bench_api`` and ``bench_live``
share it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("KHALSI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ACCOUNT = {"email": "bench@example.com", "password": "benchmark password"}


@dataclass(frozen=True)
class RunningAPI:
    base_url: str
    database_url: str
    pid: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_api(home: Path, *, redis_url: str, env: dict[str, str], uvicorn_args: list[str]) -> Iterator[RunningAPI]:
    """Create and migrate a database, start the API on it, and remove both afterwards."""
    import httpx
    import redis
    import sqlalchemy as sa

    from khalsi.db.engine import create_sync_engine
    from khalsi.db.migrate import upgrade
    from khalsi.runtime import stop_process
    from khalsi.settings import Settings

    database = f"khalsi_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{database}"')
    database_url = sa.engine.make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False)
    redis.Redis.from_url(redis_url).flushdb()
    process: subprocess.Popen[bytes] | None = None
    try:
        engine = create_sync_engine(Settings(_env_file=None, home=home, database={"url": database_url}))  # type: ignore[call-arg,arg-type]
        upgrade(engine)
        engine.dispose()
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port),
                   "--no-access-log", "--log-level", "warning", *uvicorn_args]  # fmt: skip
        child_env = {
            **os.environ,
            "KHALSI_HOME": str(home),
            "KHALSI_DATABASE_URL": database_url,
            "KHALSI_REDIS_URL": redis_url,
            **env,
        }
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env)  # noqa: S603 - our interpreter, our module
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.1)
        yield RunningAPI(base_url=base_url, database_url=database_url, pid=process.pid)
    finally:
        if process is not None:
            stop_process(process)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


def access_token(base_url: str) -> str:
    """Register the benchmark account and log it in."""
    import httpx

    httpx.post(f"{base_url}/api/v1/auth/register", json=ACCOUNT).raise_for_status()
    token: str = httpx.post(f"{base_url}/api/v1/auth/login", json=ACCOUNT).raise_for_status().json()["access_token"]
    return token
