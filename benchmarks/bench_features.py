"""Time and peak memory of the feature pipeline, on the bundled history and a synthetic universe.

Run: ``.venv/bin/python benchmarks/bench_features.py [--coins 1000 --years 5 --repeats 3]``.
Each case runs in its own process so its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from features import build_feature_frame, latest_feature_vectors
from features.bundled import (
    bundled_fear_greed_frame,
    bundled_market_frame,
    bundled_social_daily_frame,
)
from khalsi.lake import FEAR_GREED_SCHEMA, MARKET_SCHEMA, MARKET_WIDE, SOCIAL_DAILY_SCHEMA

Sources = tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]


def synthetic_sources(coins: int, years: int, *, seed: int = 0) -> Sources:
    """Random-walk prices for ``coins`` coins over ``years`` of daily rows (0.5% of days missing)."""
    rng = np.random.default_rng(seed)
    days = 365 * years
    start = datetime(2020, 1, 1, tzinfo=UTC)
    timestamps = pl.datetime_range(start, start + timedelta(days=days - 1), "1d", time_zone="UTC", eager=True)
    sigma = rng.uniform(0.01, 0.08, coins)[:, None]
    log_price = np.log(rng.uniform(1e-6, 1e5, coins))[:, None] + np.cumsum(rng.normal(0, 1, (coins, days)) * sigma, 1)
    supply = rng.uniform(1e6, 1e11, coins)[:, None]
    price = np.exp(log_price)
    cap = price * supply
    volume = cap * np.exp(rng.normal(-3.0, 0.7, (coins, days)))
    market = pl.DataFrame(
        {
            "coin_id": np.repeat([f"coin-{index:04d}" for index in range(coins)], days),
            "symbol": np.repeat([f"c{index:04d}" for index in range(coins)], days),
            "timestamp": pl.concat([timestamps] * coins),
            "price": price.ravel(),
            "volume_24h": volume.ravel(),
            "market_cap": cap.ravel(),
        }
    ).filter(pl.Series(rng.random(coins * days) > 0.005))
    market = market.select([pl.col(name).cast(dtype) for name, dtype in MARKET_SCHEMA.items()])
    fear_greed = pl.DataFrame(
        {
            "day": timestamps.dt.date(),
            "value": rng.integers(0, 101, days),
            "classification": ["synthetic"] * days,
            "available_at": timestamps,
        }
    ).select([pl.col(name).cast(dtype) for name, dtype in FEAR_GREED_SCHEMA.items()])
    social_ids = [MARKET_WIDE, *(f"coin-{index:04d}" for index in range(min(coins, 100)))]
    social = (
        pl.DataFrame({"coin_id": np.repeat(social_ids, days), "timestamp": pl.concat([timestamps] * len(social_ids))})
        .filter(pl.Series(rng.random(len(social_ids) * days) < 0.3))
        .with_columns(pl.col("timestamp").dt.date().alias("day"))
    )
    social = social.with_columns(
        pl.Series("mean_sentiment", rng.uniform(-1, 1, social.height)),
        pl.Series("mention_count", rng.poisson(30, social.height)),
        pl.Series("post_count", rng.poisson(10, social.height)),
        (pl.col("timestamp") + timedelta(days=1, microseconds=-1)).alias("available_at"),
    ).select([pl.col(name).cast(dtype) for name, dtype in SOCIAL_DAILY_SCHEMA.items()])
    return market, fear_greed, social


def bundled_sources() -> Sources:
    return bundled_market_frame(), bundled_fear_greed_frame(), bundled_social_daily_frame()


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(action: Callable[[], object], repeats: int) -> tuple[float, float]:
    seconds = []
    for _ in range(repeats):
        begin = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - begin)
    return min(seconds), statistics.median(seconds)


def run_case(case: str, coins: int, years: int, repeats: int) -> dict[str, object]:
    """One benchmark case, in this process: build the training frame, then the online vectors."""
    market, fear_greed, social = bundled_sources() if case == "bundled" else synthetic_sources(coins, years)
    inputs_mb = peak_rss_mb()

    def training() -> pl.DataFrame:
        return build_feature_frame(market.lazy(), fear_greed.lazy(), social.lazy()).collect()

    frame = training()
    training_best, training_median = timed(training, repeats)
    training_peak = peak_rss_mb()
    online_best, online_median = timed(
        lambda: latest_feature_vectors(market.lazy(), fear_greed.lazy(), social.lazy()), repeats
    )
    return {
        "case": case,
        "rows": market.height,
        "coins": market.get_column("coin_id").n_unique(),
        "features_mb": frame.estimated_size("mb"),
        "training_best_s": training_best,
        "training_median_s": training_median,
        "online_best_s": online_best,
        "online_median_s": online_median,
        "rss_after_inputs_mb": inputs_mb,
        "peak_rss_mb": max(training_peak, peak_rss_mb()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--coins", type=int, default=1000)
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", choices=["bundled", "synthetic"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.coins, args.years, args.repeats)))
        return
    print(f"polars {pl.__version__}, {pl.thread_pool_size()} threads")
    header = f"{'case':<10} {'rows':>10} {'coins':>6} {'train best/median s':>20} {'online best/median s':>21}"
    print(header + f" {'peak RSS MB':>12} {'inputs RSS MB':>14} {'frame MB':>9}")
    for case in ("bundled", "synthetic"):
        command = [sys.executable, __file__, "--case", case, "--coins", str(args.coins), "--years", str(args.years)]
        # Our own script with arguments we built: nothing untrusted reaches the command line.
        result = subprocess.run(  # noqa: S603
            [*command, "--repeats", str(args.repeats)], capture_output=True, text=True, check=True
        )
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"{row['case']:<10} {row['rows']:>10,} {row['coins']:>6} "
            f"{row['training_best_s']:>9.2f} / {row['training_median_s']:<8.2f} "
            f"{row['online_best_s']:>9.3f} / {row['online_median_s']:<9.3f} "
            f"{row['peak_rss_mb']:>12.0f} {row['rss_after_inputs_mb']:>14.0f} {row['features_mb']:>9.0f}"
        )


if __name__ == "__main__":
    main()
