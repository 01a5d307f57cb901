"""Live-update figures: thousands of concurrent WebSockets on one API process, one event fanned out.

Run: ``.venv/bin/python benchmarks/bench_live.py [--sockets 1000 5000 10000 --events 5]``.

Needs the machine's PostgreSQL and Redis (as the tests do). It creates a throw-away database,
starts ``uvicorn api.main:create_app`` (one worker, no access log) against it, logs one user in, and
then, for each socket count: a separate load process opens that many authenticated sockets
(``Authorization`` header), subscribes each to ``prices:bitcoin``, and records when every socket
receives each of ``--events`` price events published through Redis (as the ingest flow does).

Prints, per level: time to open and subscribe all sockets, delivery latency from publish to
receipt over all sockets (p50 / p99 / max), events missed and sockets dropped early, and the API process's
resident memory. Asserts nothing: a shared 2-core machine is noisy, and the load process shares
the cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

REDIS_URL = os.environ.get("KHALSI_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
CHANNEL = "prices:bitcoin"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _hold_sockets(url: str, token: str, count: int, events: int, ready: Any, results: Any) -> None:
    import aiohttp

    received: list[list[float]] = []
    closed_early: list[str] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(200)  # open in waves: a connect storm measures the listen backlog

        async def listen(ws: Any) -> None:
            # Started as soon as the socket is subscribed: it answers the server's heartbeat pings
            # while the other sockets are still opening (10,000 take longer than one interval).
            times: list[float] = []
            try:
                while len(times) < events:
                    message = await ws.receive()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    event = json.loads(message.data)
                    if event.get("type") == "ping":
                        await ws.send_json({"type": "pong"})
                    elif event.get("type") == "price":
                        times.append(time.time() - float(event["sent_at"]))
            except Exception as error:  # a dropped socket is a finding (counted as missed events)
                closed_early.append(repr(error))
            received.append(times)

        async def one() -> Any:
            nonlocal errors
            async with gate:
                try:
                    ws = await session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}, heartbeat=None)
                    await ws.receive_json()  # welcome
                    await ws.send_json({"type": "subscribe", "channels": [CHANNEL]})
                    await ws.receive_json()  # subscribed
                except Exception:
                    errors += 1
                    return None
                return ws, asyncio.create_task(listen(ws))

        started = time.perf_counter()
        opened = [pair for pair in await asyncio.gather(*(one() for _ in range(count))) if pair is not None]
        opened_seconds = time.perf_counter() - started
        sockets = [ws for ws, _ in opened]

        ready.set()
        await asyncio.wait_for(asyncio.gather(*(task for _, task in opened)), timeout=60 + 10 * events)
        for ws in sockets:
            await ws.close()
    latencies = [t for times in received for t in times]
    missed = sum(events - len(times) for times in received)
    results.put(
        {
            "opened": len(sockets),
            "errors": errors,
            "opened_seconds": opened_seconds,
            "latencies": latencies,
            "missed": missed,
            "closed_early": len(closed_early),
        }
    )


def load_process(url: str, token: str, count: int, events: int, ready: Any, results: Any) -> None:
    asyncio.run(_hold_sockets(url, token, count, events, ready, results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--events", type=int, default=5)
    args = parser.parse_args()

    from api_server import access_token, running_api

    from khalsi.events import publish_events
    from khalsi.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="khalsi-bench-live-"))
    env = {"KHALSI_RATE_LIMIT_AUTH_MAX": "1000", "KHALSI_RATE_LIMIT_MAX": "1000000"}
    settings = Settings(_env_file=None, home=home, redis={"url": REDIS_URL})  # type: ignore[call-arg,arg-type]
    with running_api(home, redis_url=REDIS_URL, env=env, uvicorn_args=["--backlog", "4096"]) as api:
        token = access_token(api.base_url)
        ws_url = api.base_url.replace("http://", "ws://") + "/api/v1/ws"
        print(f"API pid {api.pid}, idle RSS {rss_mb(api.pid):.0f} MB")
        print(
            f"{'sockets':>8} {'opened':>7} {'errors':>6} {'open s':>7} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'missed':>7} {'dropped':>7} {'API RSS MB':>10}"
        )
        context = mp.get_context("spawn")
        for count in args.sockets:
            ready, results = context.Event(), context.Queue()
            loader = context.Process(
                target=load_process,
                args=(
                    ws_url,
                    token,
                    count,
                    args.events,
                    ready,
                    results,
                ),
            )
            loader.start()
            ready.wait(timeout=600)
            time.sleep(1.0)  # let every socket settle into its read loop
            memory = rss_mb(api.pid)
            for _ in range(args.events):
                publish_events(
                    settings, [(CHANNEL, {"type": "price", "coin_id": "bitcoin", "price": 1.0, "sent_at": time.time()})]
                )
                time.sleep(1.0)
            outcome = results.get(timeout=600)
            loader.join(timeout=60)
            latencies = np.array(outcome["latencies"]) * 1000 if outcome["latencies"] else np.array([np.nan])
            print(
                f"{count:>8} {outcome['opened']:>7} {outcome['errors']:>6} {outcome['opened_seconds']:>7.1f} "
                f"{np.percentile(latencies, 50):>8.1f} {np.percentile(latencies, 99):>8.1f} {np.max(latencies):>8.1f} "
                f"{outcome['missed']:>7} {outcome['closed_early']:>7} {memory:>10.0f}"
            )


if __name__ == "__main__":
    main()
