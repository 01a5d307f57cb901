"""Serving figures: in-process predict (the floor), then a real ``bentoml serve`` under load.

Run: ``.venv/bin/python benchmarks/bench_serving.py [--seconds 8 --trees 200 --depth 6]``.

Builds a throw-away KHALSI_HOME: the bundled history in the lake, the latest vectors in the online
store (file backend), and a champion per horizon of the PERF-NOTES size (200 trees of depth 6, real
features and labels) in a temporary MLflow registry. Then:

1. in-process ``ServingRuntime.predict`` (1 and 4 items, with and without contributions);
2. ``bentoml serve serving.service:DirectionService`` on a free loopback port: start-up time to
   ``/readyz`` and resident memory (the CLI process and its workers);
3. a closed-loop load generator in another process (asyncio + aiohttp, bounded in requests and
   seconds): one client at a time, then 16 and 64 concurrent clients, with 1 and 4 items a request.

Prints tables; asserts nothing. Figures on a shared 2-core machine are noisy: compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


@dataclass
class LoadResult:
    name: str
    clients: int
    items: int
    requests: int
    errors: int
    item_errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


# -- set-up ---------------------------------------------------------------------------------------


def build_home(home: Path, *, trees: int, depth: int) -> dict[int, str]:
    """Lake, online vectors and one registered champion per horizon under ``home``."""
    import polars as pl
    import xgboost as xgb

    from features import FEATURE_COLUMNS, load_feature_frame
    from features.bundled import bundled_fear_greed_frame, bundled_market_frame, bundled_social_daily_frame
    from khalsi import lake
    from khalsi.settings import Settings
    from serving.feature_store import publish_latest_features
    from serving.model_loader import model_name
    from training.config import CalibrationMethod
    from training.labels import FWD_RETURN, LABEL, add_labels
    from training.model import Calibrator, DirectionModel
    from training.registry import configure_mlflow, register_direction_model

    settings = Settings(_env_file=None, home=home, environment="test")
    settings.ensure_home()
    market = bundled_market_frame()
    for (coin_id,), part in market.group_by("coin_id"):
        lake.write_market_partition(settings.lake_dir, str(coin_id), part)
    lake.write_fear_greed(settings.lake_dir, bundled_fear_greed_frame())
    lake.write_social_daily(settings.lake_dir, bundled_social_daily_frame())
    publish_latest_features(settings)
    client = configure_mlflow(settings)
    versions: dict[int, str] = {}
    for days in (1, 7):
        began = time.perf_counter()
        frame = (
            add_labels(load_feature_frame(settings.lake_dir), days)
            .filter(pl.col(LABEL).is_not_null())
            .sort("timestamp")
            .collect()
            .tail(5_000)
        )
        x = frame.select(FEATURE_COLUMNS).to_numpy().astype(np.float64)
        params = {"max_depth": depth, "nthread": 2, "eta": 0.05}
        classifier = xgb.train(
            {**params, "objective": "binary:logistic"},
            xgb.DMatrix(x, label=frame.get_column(LABEL).to_numpy(), feature_names=FEATURE_COLUMNS),
            trees,
        )
        quantiles = xgb.train(
            {**params, "objective": "reg:quantileerror", "quantile_alpha": [0.1, 0.5, 0.9]},
            xgb.DMatrix(x, label=frame.get_column(FWD_RETURN).to_numpy(), feature_names=FEATURE_COLUMNS),
            trees,
        )
        model = DirectionModel(
            horizon_days=days,
            feature_names=list(FEATURE_COLUMNS),
            classifier=classifier,
            calibrator=Calibrator(method=CalibrationMethod.SIGMOID, a=0.9, b=0.0),
            quantile_model=quantiles,
            alphas=[0.1, 0.5, 0.9],
        )
        version = register_direction_model(client, model, home / f"model-{days}d", model_name=model_name(days))
        versions[days] = version
        print(f"  champion {days}d: trained and registered in {time.perf_counter() - began:.1f} s", flush=True)
    return versions


def timed(fn: Callable[[], object], *, n: int) -> list[float]:
    for _ in range(min(200, n)):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def in_process(home: Path) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """The fresh coins, and the floor: the runtime's predict called directly (and with JSON encoding)."""
    from khalsi.settings import Settings
    from serving.model_loader import ServingRuntime
    from serving.predict import predict_items
    from serving.schemas import PredictionItem, PredictionResponse

    runtime = ServingRuntime(Settings(_env_file=None, home=home, environment="test"))
    runtime.load()
    snapshot = runtime.snapshot
    assert snapshot is not None
    now = runtime.clock()
    fresh = [c for c, ts in zip(snapshot.coin_ids, snapshot.timestamps, strict=True) if now - ts <= runtime.max_age]

    def items(**fields: Any) -> list[PredictionItem]:
        return [PredictionItem(**fields)]

    one = items(coin="bitcoin", horizon="1d")
    four_same = [PredictionItem(coin=c, horizon="1d") for c in fresh[:4]]
    four_mixed = [PredictionItem(coin=c, horizon=h) for c in fresh[:2] for h in ("1d", "7d")]
    explained = items(coin="bitcoin", horizon="1d", contributions=True)

    def per_request(batch: list[PredictionItem]) -> Callable[[], object]:
        # The same function without the precomputed answers: the boosters run on the requested rows.
        state = runtime.state
        return lambda: predict_items(
            batch, models=state.models, snapshot=state.snapshot, now=now, max_age=runtime.max_age
        )

    cases = [
        ("1 item (precomputed answers)", timed(lambda: runtime.predict(one), n=3000)),
        (
            "1 item + JSON encoding",
            timed(lambda: PredictionResponse(results=runtime.predict(one)).model_dump_json(), n=3000),
        ),
        ("4 items, 2 horizons", timed(lambda: runtime.predict(four_mixed), n=2000)),
        ("1 item, boosters per request", timed(per_request(one), n=3000)),
        ("4 items, 1 horizon, boosters", timed(per_request(four_same), n=2000)),
        ("4 items, 2 horizons, boosters", timed(per_request(four_mixed), n=2000)),
        ("1 item + contributions (TreeSHAP)", timed(lambda: runtime.predict(explained), n=1000)),
    ]
    runtime.stop()
    return fresh, cases


# -- the server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc; psutil is not a dependency)."""
    total_kb = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        proc = Path("/proc") / str(current)
        try:
            status = (proc / "status").read_text()
            for task in (proc / "task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kb / 1024


def start_server(home: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    import httpx

    env = {
        **os.environ,
        "KHALSI_HOME": str(home),
        "KHALSI_ENVIRONMENT": "test",
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    command = [
        sys.executable, "-m", "bentoml", "serve", "serving.service:DirectionService",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    started = time.perf_counter()
    # Our own interpreter running BentoML on our own module: nothing untrusted reaches the command.
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"service did not become ready: {log.read_text(errors='replace')[-3000:]}")


# -- the load generator (runs in its own process) -------------------------------------------------


def request_bodies(coins: list[str], items: int, mix: str) -> list[dict[str, Any]]:
    """Bodies cycling over the coins: ``same`` asks one horizon per request, ``mixed`` both."""
    bodies = []
    for i in range(len(coins)):
        if mix == "same":
            horizon = "1d" if i % 2 == 0 else "7d"
            wanted = [{"coin": coins[(i + k) % len(coins)], "horizon": horizon} for k in range(items)]
        else:
            wanted = [
                {"coin": coins[(i + k // 2) % len(coins)], "horizon": "1d" if k % 2 == 0 else "7d"}
                for k in range(items)
            ]
        bodies.append({"items": wanted})
    return bodies


async def _load(
    url: str, bodies: list[dict[str, Any]], clients: int, seconds: float, max_requests: int
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    item_errors = 0
    sent = 0
    stop_at = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal errors, item_errors, sent
        while sent < max_requests and time.perf_counter() < stop_at:
            sent += 1
            body = bodies[(index + sent) % len(bodies)]
            start = time.perf_counter()
            try:
                async with session.post(url, json=body) as response:
                    payload = await response.json()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok, payload = False, None
            latencies.append((time.perf_counter() - start) * 1000)
            if not ok:
                errors += 1
            elif payload is not None:
                item_errors += sum(1 for r in payload["results"] if r["error"] is not None)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def warm() -> None:
            for _ in range(5):
                async with session.post(url, json=bodies[0]) as response:
                    await response.read()

        # Warm-up: open the connections and let the server settle.
        await asyncio.gather(*(warm() for _ in range(clients)))
        began = time.perf_counter()
        await asyncio.gather(*(client(session, i) for i in range(clients)))
        elapsed = time.perf_counter() - began
    return {"latencies": latencies, "errors": errors, "item_errors": item_errors, "seconds": elapsed}


def _load_process(
    url: str, bodies: list[dict[str, Any]], clients: int, seconds: float, max_requests: int, out: Any
) -> None:
    out.put(asyncio.run(_load(url, bodies, clients, seconds, max_requests)))


def run_load(
    url: str, name: str, *, bodies: list[dict[str, Any]], clients: int, seconds: float, max_requests: int
) -> LoadResult:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    items = len(bodies[0]["items"])
    process = ctx.Process(target=_load_process, args=(url, bodies, clients, seconds, max_requests, queue))
    process.start()
    raw = queue.get(timeout=seconds + 120)
    process.join(timeout=30)
    return LoadResult(
        name=name,
        clients=clients,
        items=items,
        requests=len(raw["latencies"]),
        errors=raw["errors"],
        item_errors=raw["item_errors"],
        seconds=raw["seconds"],
        latencies_ms=raw["latencies"],
    )


# -- report ---------------------------------------------------------------------------------------


def main() -> None:
    from khalsi.runtime import stop_process

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each load case")
    parser.add_argument("--max-requests", type=int, default=50_000, help="cap on requests per load case")
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--depth", type=int, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="khalsi-bench-serving-") as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        versions = build_home(home, trees=args.trees, depth=args.depth)
        print(f"set-up: lake, online vectors, 2 champions ({args.trees} trees, depth {args.depth}) "
              f"in {time.perf_counter() - t0:.1f} s; versions {versions}")  # fmt: skip

        fresh, floor = in_process(home)
        print("\nIn-process (ms)")
        print(f"{'case':<34} {'p50':>7} {'p99':>7} {'p99.9':>7}")
        for name, samples in floor:
            p50, p99, p999 = np.percentile(samples, [50, 99, 99.9])
            print(f"{name:<34} {p50:>7.3f} {p99:>7.3f} {p999:>7.3f}")

        port = free_port()
        process, startup = start_server(home, port, Path(tmp) / "serve.log")
        url = f"http://127.0.0.1:{port}/predict"
        try:
            rss_idle = tree_rss_mb(process.pid)
            cases = [
                ("one at a time", 1, 1, "same"),
                ("16 concurrent", 16, 1, "same"),
                ("16 conc., 4 items/req", 16, 4, "same"),
                ("64 concurrent", 64, 1, "same"),
                ("64 conc., 4 items/req", 64, 4, "same"),
                ("64 conc., 8 items mixed", 64, 8, "mixed"),
            ]
            results = [
                run_load(
                    url,
                    name,
                    bodies=request_bodies(fresh, k, mix),
                    clients=c,
                    seconds=args.seconds,
                    max_requests=args.max_requests,
                )
                for name, c, k, mix in cases
            ]
            rss_loaded = tree_rss_mb(process.pid)
        finally:
            stop_process(process)

        print(f"\nbentoml serve: ready in {startup:.1f} s; RSS {rss_idle:.0f} MB idle, {rss_loaded:.0f} MB after load "
              "(CLI + worker processes)")  # fmt: skip
        print("\nOver HTTP, loopback, load generator in its own process (ms)")
        header = (
            f"{'case':<24} {'req':>6} {'req/s':>7} {'pred/s':>7} {'p50':>7} {'p99':>7} {'p99.9':>7} "
            f"{'errors':>6} {'item err':>8}"
        )
        print(header)
        for r in results:
            print(
                f"{r.name:<24} {r.requests:>6} {r.rps:>7.0f} {r.rps * r.items:>7.0f} {r.pct(50):>7.2f} "
                f"{r.pct(99):>7.2f} {r.pct(99.9):>7.2f} {r.errors:>6} {r.item_errors:>8}"
            )
        floor_p50 = float(np.percentile(floor[1][1], 50))
        print(f"\none at a time p50 minus in-process (1 item + JSON) p50: {results[0].pct(50) - floor_p50:.2f} ms")


if __name__ == "__main__":
    main()
