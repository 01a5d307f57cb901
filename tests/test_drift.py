"""Drift of the serving champion: Evidently's tests on real bundled data, the verdict, the report files, the flow.

One small 1d model is trained on 2017-01 .. 2019-06 of five coins and made champion (module scope).
A 30-day window inside its training window is not drift; the months after it with every daily
return scaled by four (volatility quadrupled) is; without the scaling the same day is not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from khalsi.db.engine import create_sync_engine, session_scope
from khalsi.db.migrate import upgrade
from khalsi.db.models import Prediction
from khalsi.lake import write_fear_greed, write_market_partition, write_social_daily
from khalsi.settings import Settings, get_settings
from tests.factories import isolated_khalsi_env
from tests.training_fixtures import SMALL_COINS, bundled_inputs, no_leaked_run, small_config, write_bundled_lake
from training.drift import (
    ChampionReference,
    DriftThresholds,
    FeatureWindows,
    PredictionDrift,
    StoredPredictionCheck,
    Verdict,
    assess_drift,
    build_drift_report,
    calibrated_thresholds,
    check_stored_predictions,
    decide_verdict,
    find_champion_reference,
    normed_wasserstein,
    read_feature_windows,
    read_stored_predictions,
)
from training.experiment import run_experiment
from training.registry import CHAMPION, configure_mlflow

TRAIN_END = date(2019, 6, 30)
AFTER_TRAINING = date(2019, 12, 31)
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_run() -> Iterator[None]:
    with no_leaked_run():
        yield


def _settings(home: Path, **overrides: Any) -> Settings:
    return Settings(_env_file=None, home=home, environment="test", **overrides)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def champion_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake of five coins and a small 1d model trained to 2019-06-30, holding the champion alias."""
    home = tmp_path_factory.mktemp("drift") / "home"
    settings = _settings(home)
    write_bundled_lake(settings, SMALL_COINS)
    config = small_config(1, walk_forward={"refit_every_days": 300})
    with no_leaked_run():
        outcome = run_experiment(settings, config)
    # Promotion is not under test here: whatever the rule decided, this version is served.
    configure_mlflow(settings).set_registered_model_alias(config.model_name, CHAMPION, outcome.model_version)
    return home


@pytest.fixture(scope="module")
def champion(champion_home: Path) -> ChampionReference:
    found = find_champion_reference(_settings(champion_home), 1)
    assert found is not None
    return found


def _scaled_returns_lake(settings: Settings, *, factor: float, after: date, until: date) -> None:
    """The bundled lake up to ``until`` with every daily log return after ``after`` multiplied by ``factor``."""
    market, fear_greed, social = bundled_inputs(SMALL_COINS)
    cut = datetime.combine(until, datetime.min.time(), tzinfo=UTC)
    start = datetime.combine(after, datetime.min.time(), tzinfo=UTC)
    log_return = pl.col("price").log().diff().over("coin_id").fill_null(0.0)
    scaled = (
        market.filter(pl.col("timestamp") <= cut)
        .sort("coin_id", "timestamp")
        .with_columns(pl.when(pl.col("timestamp") > start).then(log_return * factor).otherwise(log_return).alias("r"))
        .with_columns(
            (pl.col("price").first().over("coin_id").log() + pl.col("r").cum_sum().over("coin_id")).exp().alias("price")
        )
        .drop("r")
    )
    settings.ensure_home()
    for (coin_id,), part in scaled.group_by("coin_id"):
        write_market_partition(settings.lake_dir, str(coin_id), part)
    write_fear_greed(settings.lake_dir, fear_greed)
    write_social_daily(settings.lake_dir, social)


def _store_predictions(settings: Settings, champion: ChampionReference, windows: FeatureWindows) -> pl.DataFrame:
    """The champion's probabilities for the current window, as the score flow stores them (4 decimals)."""
    frame = windows.current.select("coin_id", "symbol", "timestamp", *champion.model.feature_names)
    matrix = frame.select(champion.model.feature_names).fill_null(np.nan).to_numpy().astype(np.float64)
    stored = frame.select("coin_id", "symbol", "timestamp").with_columns(
        pl.Series("p", np.round(champion.model.probability(matrix), 4))
    )

    def row(coin_id: str, symbol: str, stamp: datetime, p: float, version: str) -> Prediction:
        return Prediction(
            coin_id=coin_id,
            symbol=symbol,
            timeframe="1d",
            probability_up=p,
            probability_down=1 - p,
            model_name=champion.model_name,
            model_version=version,
            feature_timestamp=stamp,
        )

    engine = create_sync_engine(settings)
    try:
        upgrade(engine)
        with session_scope(engine) as session:
            session.add_all(row(c, s, t, p, champion.version) for c, s, t, p in stored.iter_rows())
            # Neither counts: another version's prediction, and one before the window.
            session.add(row("bitcoin", "btc", datetime(2019, 6, 10, tzinfo=UTC), 0.99, "999"))
            session.add(row("bitcoin", "btc", datetime(2019, 3, 1, tzinfo=UTC), 0.99, champion.version))
    finally:
        engine.dispose()
    return stored


def _realised_brier(stored: pl.DataFrame, horizon_days: int, as_of: date) -> tuple[float, int]:
    """Brier of the stored rows whose next-day price was known at as_of, from the bundled prices."""
    market = bundled_inputs(SMALL_COINS)[0].select("coin_id", "timestamp", "price")
    later = market.select(
        "coin_id", (pl.col("timestamp") - timedelta(days=horizon_days)), pl.col("price").alias("next")
    )
    known = (
        stored.join(market, on=["coin_id", "timestamp"])
        .join(later, on=["coin_id", "timestamp"])
        .filter(pl.col("timestamp") + timedelta(days=horizon_days) <= datetime.combine(as_of, datetime.min.time(), UTC))
    )
    y = (known.get_column("next") > known.get_column("price")).cast(pl.Float64).to_numpy()
    return float(np.mean((known.get_column("p").to_numpy() - y) ** 2)), known.height


def test_flow_reports_no_drift_inside_the_training_window_and_no_champion_for_7d(
    prefect_harness: None,
    champion_home: Path,
    champion: ChampionReference,
    pg_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.drift import drift_report

    settings = _settings(champion_home, database={"url": pg_database_url})
    windows = read_feature_windows(settings, champion, current_days=30, as_of=TRAIN_END)
    stored = _store_predictions(settings, champion, windows)
    isolated_khalsi_env(monkeypatch, HOME=str(champion_home), ENVIRONMENT="test", DATABASE_URL=pg_database_url)
    try:
        outcomes = drift_report(horizons=[1, 7], current_days=30, as_of=TRAIN_END)
    finally:
        get_settings.cache_clear()

    assert outcomes["7d"]["status"] == "no_champion"
    assert outcomes["7d"]["verdict"] is None
    assert "khalsi-direction-7d has no champion" in outcomes["7d"]["message"]
    one_day = outcomes["1d"]
    assert one_day["status"] == "checked"
    assert one_day["verdict"] == "ok", one_day["message"]
    assert one_day["model"] == f"khalsi-direction-1d@{champion.version}"

    summary_path, html_path = Path(one_day["summary_path"]), Path(one_day["html_path"])
    assert summary_path.parent.parent.parent == champion_home / "reports" / "drift"
    assert summary_path.parent.name == "1d"
    summary = json.loads(summary_path.read_text())
    assert summary["verdict"] == "ok"
    assert summary["drifted_share"] < summary["thresholds"]["warning_share"]
    assert summary["thresholds"] == asdict(DriftThresholds())
    # The reference is the window the champion's final model was fitted on, as its run recorded it.
    assert summary["reference"]["first"] == "2017-01-01"
    assert summary["reference"]["last"] == champion.last_day.isoformat()
    assert summary["reference"]["coins"] == sorted(SMALL_COINS)
    assert (summary["current"]["first"], summary["current"]["last"]) == ("2019-06-01", "2019-06-30")
    assert summary["current"]["rows"] == 150
    # Thresholds are calibrated on the reference's own 30-day windows, never below the floor.
    assert summary["calibration_windows"] >= DriftThresholds().min_calibration_windows
    thresholds = [f["threshold"] for f in summary["features"]]
    assert min(thresholds) >= 0.1
    assert max(thresholds) > 0.3
    tested = {f["name"] for f in summary["features"]}
    assert tested | set(summary["excluded_features"]) == set(champion.model.feature_names)
    assert all(reason.startswith("no values") for reason in summary["excluded_features"].values())

    # Stored predictions: 5 coins x 30 days of this version; the last day's label is not known at as_of.
    check = summary["stored_predictions"]
    assert check["count"] == 150
    assert check["matured"] == 145
    expected_brier, known = _realised_brier(stored, 1, TRAIN_END)
    assert known == 145
    assert check["realised_brier"] == pytest.approx(expected_brier, abs=1e-9)
    assert check["walk_forward_brier"] == pytest.approx(champion.walk_forward["brier"])
    assert sum(check["histogram"]) == 150
    assert check["degraded"] is False

    # Evidently's scores are the distance the thresholds were calibrated with.
    for feature in summary["features"][:5]:
        ours = normed_wasserstein(
            windows.reference.get_column(feature["name"]).cast(pl.Float64).fill_null(np.nan).to_numpy(),
            windows.current.get_column(feature["name"]).cast(pl.Float64).fill_null(np.nan).to_numpy(),
        )
        assert feature["score"] == pytest.approx(ours, rel=1e-9)

    html = html_path.read_text(encoding="utf-8")
    assert html_path.stat().st_size > 100_000
    assert "p_up" in html
    assert "vol_30d" in html
    evidently = json.loads((summary_path.parent / "evidently.json").read_text())
    assert len(evidently["metrics"]) == len(tested) + 2


def test_quadrupled_volatility_after_training_is_drift_and_the_same_day_unscaled_is_not(
    champion_home: Path, champion: ChampionReference, tmp_path: Path
) -> None:
    unscaled = _settings(champion_home)
    calm, _ = assess_drift(
        champion,
        read_feature_windows(unscaled, champion, as_of=AFTER_TRAINING),
        read_stored_predictions(unscaled, champion),
    )
    assert calm.verdict is not Verdict.DRIFT
    assert "vol_30d" not in calm.drifted_features

    # Another lake, the same registry: only the prices differ.
    shifted = _settings(tmp_path / "shifted", mlflow={"tracking_uri": unscaled.mlflow_tracking_uri})
    _scaled_returns_lake(shifted, factor=4.0, after=AFTER_TRAINING - timedelta(days=90), until=AFTER_TRAINING)
    summary = build_drift_report(shifted, 1, as_of=AFTER_TRAINING, stamp="shifted")
    assert summary is not None
    assert summary.verdict is Verdict.DRIFT, summary.reasons
    assert summary.drifted_share >= summary.thresholds.drift_share
    assert {"vol_7d", "vol_30d"} <= set(summary.drifted_features)
    assert summary.reasons[0].startswith(f"{len(summary.drifted_features)}/{len(summary.features)} features drifted")
    scaled, unscaled_vol = (next(f for f in s.features if f.name == "vol_30d") for s in (summary, calm))
    # Every 30-day window of the current days lies inside the scaled 90: volatility exactly four times.
    assert scaled.current_mean == pytest.approx(4 * unscaled_vol.current_mean, rel=1e-6)
    assert scaled.score >= scaled.threshold > unscaled_vol.score
    assert Path(summary.files["summary"]) == shifted.home / "reports" / "drift" / "shifted" / "1d" / "summary.json"
    assert json.loads(Path(summary.files["summary"]).read_text())["verdict"] == "drift"


def test_no_champion_is_reported_not_raised(tmp_path: Path, champion_home: Path) -> None:
    empty = _settings(tmp_path / "empty")
    assert build_drift_report(empty, 1) is None
    # A registry with a 1d champion still has none for 7d.
    assert build_drift_report(_settings(champion_home), 7) is None
    assert not (tmp_path / "empty" / "reports").exists()


def test_cli_reports_a_champion_without_training_record_and_a_missing_champion(
    prefect_harness: None, home: Path, champion: ChampionReference, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ops_cli import console, ops_app
    from training.registry import register_direction_model

    # A 1d champion registered outside a training run (as benchmarks do): no window to compare with.
    settings = _settings(home)
    with no_leaked_run():
        client = configure_mlflow(settings)
        register_direction_model(client, champion.model, home / "ready-made", model_name=champion.model_name)
    saved = dict(os.environ)
    isolated_khalsi_env(monkeypatch, HOME=str(home), ENVIRONMENT="test")
    monkeypatch.setattr(console, "width", 400)
    try:
        result = runner.invoke(ops_app, ["drift", "--fail-on-drift"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    rows = [line.strip("│ ") for line in result.output.splitlines()]
    one_day, seven_day = (row for row in rows if row.startswith(("1d ", "7d ")))
    assert "no_data" in one_day
    assert "records no training window" in one_day
    assert "no_champion" in seven_day
    assert "khalsi-direction-7d has no champion" in seven_day


def test_an_empty_lake_or_window_is_a_clear_error(champion_home: Path, champion: ChampionReference) -> None:
    from training.drift import DriftInputError

    with pytest.raises(DriftInputError, match="no market data"):
        read_feature_windows(_settings(champion_home.parent / "nothing"), champion)
    # The bundled history ends in 2024: a window in 2030 holds nothing to compare.
    with pytest.raises(DriftInputError, match="no feature rows in the 30 days up to 2030-01-01"):
        read_feature_windows(_settings(champion_home), champion, as_of=date(2030, 1, 1))
    with pytest.raises(ValueError, match="current_days"):
        read_feature_windows(_settings(champion_home), champion, current_days=0)


def test_stored_predictions_count_only_matured_labels_and_flag_a_worse_brier(champion: ChampionReference) -> None:
    day = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(40)]
    prices = [100.0 * (1.01 if i % 2 else 0.99) ** i for i in range(40)]
    market = pl.DataFrame({"coin_id": ["bitcoin"] * 40, "timestamp": day, "price": prices})
    windows = FeatureWindows(
        reference=pl.DataFrame(), current=pl.DataFrame(), market=market, as_of=day[-1].date(), current_days=30
    )
    ups = market.with_columns((pl.col("price").shift(-1) > pl.col("price")).alias("up")).get_column("up")
    # Always confidently wrong: Brier near 1 on every matured row.
    stored = pl.DataFrame(
        {
            "coin_id": ["bitcoin"] * 40,
            "feature_timestamp": day,
            "probability_up": [0.05 if up else 0.95 for up in ups.fill_null(False).to_list()],
        }
    )
    model = replace(champion, walk_forward={"brier": 0.25, "log_loss": 0.69})
    check = check_stored_predictions(stored, windows, model, DriftThresholds(min_matured_predictions=20))
    assert check.count == 30  # the 30 days up to as_of
    assert check.matured == 29  # the last day's next price is not known at as_of
    assert check.realised_brier == pytest.approx(0.95**2)
    assert check.degraded
    assert not check_stored_predictions(stored, windows, model, DriftThresholds(min_matured_predictions=30)).degraded


def _prediction(drifted: bool) -> PredictionDrift:
    return PredictionDrift(0.2, 0.3, drifted, 0.5, 0.5, {}, {})


def _stored(degraded: bool) -> StoredPredictionCheck:
    return StoredPredictionCheck(50, 0.5, [], 50, 0.3 if degraded else 0.24, 0.7, 0.25, 0.69, degraded)


@pytest.mark.parametrize(
    ("n_drifted", "prediction_drifted", "degraded", "expected"),
    [
        (0, False, False, Verdict.OK),
        (1, False, False, Verdict.OK),  # 5% of 20 features
        (2, False, False, Verdict.WARNING),  # 10%: the warning share
        (4, False, False, Verdict.WARNING),
        (5, False, False, Verdict.DRIFT),  # 25%: the drift share
        (0, True, False, Verdict.WARNING),
        (0, False, True, Verdict.WARNING),
        (5, True, True, Verdict.DRIFT),
    ],
)
def test_verdict_follows_the_declared_rules(
    n_drifted: int, prediction_drifted: bool, degraded: bool, expected: Verdict
) -> None:
    drifted = [f"f{i}" for i in range(n_drifted)]
    verdict, reasons = decide_verdict(
        share=n_drifted / 20,
        n_features=20,
        drifted=drifted,
        prediction=_prediction(prediction_drifted),
        stored=_stored(degraded),
        thresholds=DriftThresholds(),
    )
    assert verdict is expected
    assert reasons
    assert any("predicted probabilities drifted" in r for r in reasons) == prediction_drifted
    assert any("realised Brier 0.3000" in r for r in reasons) == degraded


def test_thresholds_are_calibrated_on_the_reference_windows() -> None:
    rng = np.random.default_rng(7)
    days = [datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(400)]
    # A regime feature (calm then wild, like volatility) and an independent daily noise.
    regime = np.where(np.arange(400) < 200, 1.0, 3.0) + rng.normal(0, 0.1, 400)
    noise = rng.normal(0, 1, 400)
    reference = pl.DataFrame({"timestamp": days, "regime": regime, "noise": noise})
    limits, n_windows = calibrated_thresholds(
        reference, ["regime", "noise"], days=30, thresholds=DriftThresholds(max_calibration_windows=40)
    )
    assert 10 <= n_windows <= 40
    # A 30-day window of the regime feature sits far from the pooled distribution; noise does not.
    assert limits["regime"] > 0.5
    assert limits["noise"] < limits["regime"]
    assert limits["noise"] >= 0.1
    few, n_few = calibrated_thresholds(reference.head(60), ["regime"], days=30, thresholds=DriftThresholds())
    assert n_few < 10
    assert few == {"regime": 0.1}


def test_normed_wasserstein_matches_scipy_and_ignores_missing_values() -> None:
    from scipy import stats

    rng = np.random.default_rng(3)
    reference, current = rng.normal(0, 2, 5000), rng.normal(1, 2, 300)
    expected = stats.wasserstein_distance(reference, current) / np.std(reference)
    assert normed_wasserstein(reference, current) == pytest.approx(expected, rel=1e-12)
    with_gaps = np.concatenate([current, [np.nan, np.inf]])
    assert normed_wasserstein(reference, with_gaps) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(normed_wasserstein(reference, np.array([np.nan])))


def test_thresholds_refuse_inconsistent_shares() -> None:
    with pytest.raises(ValueError, match="warning_share"):
        DriftThresholds(warning_share=0.5, drift_share=0.2)
    with pytest.raises(ValueError, match="window_quantile"):
        DriftThresholds(window_quantile=1.0)
