"""Product-API figures: what an API client sees, through auth, rate limiting and the hop to BentoML.

Run: ``.venv/bin/python benchmarks/bench_api.py [--seconds 8]``.

Builds the same throw-away home as ``bench_serving.py`` (bundled lake, online vectors, a champion
per horizon of the PERF-NOTES size), starts ``bentoml serve`` and then ``uvicorn
api.main:create_app`` (one worker, no access log) on a fresh PostgreSQL database and Redis, as in
docker-compose. It logs one user in and drives, from a separate process (asyncio + aiohttp,
closed loop), authenticated requests:

- ``GET /api/v1/predictions/{coin}?horizon=1d`` (JWT check, session lookup, rate limit in Redis,
  aiohttp to BentoML, response mapping);
- ``POST /api/v1/predictions/batch`` with 4 items;
- ``GET /api/v1/market/coins`` (public, served from the Redis cache after the first call);
- ``GET /api/v1/users/me`` (token, session lookup in PostgreSQL and rate limit, nothing else).

Prints latency percentiles and throughput per case. Asserts nothing: the machine has 2 cores and
the API, BentoML, PostgreSQL, Redis and the load generator all share them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REDIS_URL = os.environ.get("KHALSI_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
COINS = ["bitcoin", "ethereum", "solana", "ripple", "dogecoin", "binancecoin", "sui", "aptos"]

Request = tuple[str, str, dict[str, Any] | None]


async def _load(base: str, token: str, requests: list[Request], clients: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def call(method: str, path: str, body: dict[str, Any] | None) -> int:
            async with session.request(method, base + path, json=body) as response:
                await response.read()
                return response.status

        for method, path, body in requests[: max(clients, 8)]:  # warm-up: connections, caches
            await call(method, path, body)
        stop_at = time.perf_counter() + seconds

        async def client(index: int) -> None:
            nonlocal sent
            while time.perf_counter() < stop_at:
                sent += 1
                method, path, body = requests[(index + sent) % len(requests)]
                began = time.perf_counter()
                try:
                    status = await call(method, path, body)
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                latencies.append((time.perf_counter() - began) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - began
    return {"latencies": latencies, "statuses": statuses, "seconds": elapsed}


def _load_process(base: str, token: str, requests: list[Request], clients: int, seconds: float, out: Any) -> None:
    out.put(asyncio.run(_load(base, token, requests, clients, seconds)))


def batch_items(offset: int, size: int) -> list[dict[str, str]]:
    return [{"coin": COINS[(offset + k) % len(COINS)], "horizon": "1d"} for k in range(size)]


def run_case(base: str, token: str, requests: list[Request], clients: int, seconds: float) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_load_process, args=(base, token, requests, clients, seconds, queue))
    process.start()
    result: dict[str, Any] = queue.get(timeout=seconds + 120)
    process.join(timeout=30)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()

    import sqlalchemy as sa
    from api_server import access_token, running_api
    from bench_serving import build_home, free_port, start_server, tree_rss_mb

    from khalsi.runtime import stop_process

    home = Path(tempfile.mkdtemp(prefix="khalsi-bench-api-"))
    print("setting up (bundled lake, online vectors, a champion per horizon)...", flush=True)
    build_home(home, trees=200, depth=6)
    bento_port = free_port()
    bento, _ = start_server(home, bento_port, home / "bentoml.log")
    env = {
        "KHALSI_ENVIRONMENT": "test",
        "KHALSI_ML_SERVICE_URL": f"http://127.0.0.1:{bento_port}",
        "KHALSI_RATE_LIMIT_MAX": "10000000",
    }
    try:
        with running_api(home, redis_url=REDIS_URL, env=env, uvicorn_args=[]) as api:
            engine = sa.create_engine(api.database_url)
            with engine.begin() as connection:  # the coins ingestion would have registered
                for coin in COINS:
                    connection.execute(
                        sa.text("INSERT INTO coins (coin_id, symbol, name) VALUES (:c, :c, :c) ON CONFLICT DO NOTHING"),
                        {"c": coin},
                    )
            engine.dispose()
            token = access_token(api.base_url)
            single: list[Request] = [("GET", f"/api/v1/predictions/{coin}?horizon=1d", None) for coin in COINS]
            batches: list[Request] = [
                ("POST", "/api/v1/predictions/batch", {"items": batch_items(i, 4)}) for i in range(len(COINS))
            ]
            cases: list[tuple[str, list[Request]]] = [
                ("predictions, 1 coin", single),
                ("predictions batch, 4", batches),
                ("market coins (cached)", [("GET", "/api/v1/market/coins", None)]),
                # Token, session lookup and rate limit alone: what every signed-in call pays first.
                ("users/me (auth only)", [("GET", "/api/v1/users/me", None)]),
            ]
            print(f"\n{'case':<24} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7}  statuses")
            for name, requests in cases:
                for clients in args.clients:
                    result = run_case(api.base_url, token, requests, clients, args.seconds)
                    latencies = np.array(result["latencies"])
                    print(
                        f"{name:<24} {clients:>7} {len(latencies) / result['seconds']:>7.0f} "
                        f"{np.percentile(latencies, 50):>7.1f} {np.percentile(latencies, 99):>7.1f} "
                        f"{np.percentile(latencies, 99.9):>7.1f}  {result['statuses']}",
                        flush=True,
                    )
            print(f"\nAPI RSS {tree_rss_mb(api.pid):.0f} MB; BentoML RSS {tree_rss_mb(bento.pid):.0f} MB")
    finally:
        stop_process(bento)


if __name__ == "__main__":
    main()
