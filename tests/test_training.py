"""Walk-forward training: time order, purge gaps, train_end cut, calibration, metrics, baselines."""

from __future__ import annotations

import math
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from tests.training_fixtures import bundled_inputs, small_config, with_planted_leak
from training import plots
from training.config import (
    CalibrationMethod,
    ConfigError,
    ExperimentConfig,
    default_config,
    load_config,
)
from training.data import cut_inputs, feature_columns, labelled_frame
from training.experiment import PreparedData, prepare_data
from training.metrics import (
    block_bootstrap_weights,
    expected_calibration_error,
    roc_auc,
    summarize_predictions,
)
from training.metrics import brier as brier_score
from training.metrics import log_loss as our_log_loss
from training.model import fit_calibrator
from training.walk_forward import (
    Dataset,
    WalkForwardResult,
    day_number,
    fit_direction_model,
    training_mask,
    walk_forward,
)


def _prepared(config: ExperimentConfig, market: pl.DataFrame | None = None) -> PreparedData:
    base_market, fear_greed, social = bundled_inputs(config.data.coins)
    inputs = cut_inputs(
        (market if market is not None else base_market).lazy(),
        fear_greed.lazy(),
        social.lazy(),
        train_end=config.data.train_end,
    )
    return prepare_data(config, inputs)


@pytest.fixture(scope="module")
def small() -> tuple[ExperimentConfig, PreparedData]:
    config = small_config(1)
    return config, _prepared(config)


@pytest.fixture(scope="module")
def small_walk(small: tuple[ExperimentConfig, PreparedData]) -> WalkForwardResult:
    config, data = small
    return walk_forward(data.dataset, config)


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [1, 7])
def test_default_configs_validate_and_keep_a_gap_of_at_least_the_horizon(horizon: int) -> None:
    config = default_config(horizon)
    assert config.horizon_days == horizon
    assert config.gap_days >= horizon
    assert config.model_name == f"khalsi-direction-{horizon}d"
    assert 90 <= config.walk_forward.refit_every_days <= 180


def test_gap_is_raised_to_the_horizon_even_if_declared_lower() -> None:
    assert small_config(7, walk_forward={"gap_days": 0}).gap_days == 7


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("name: x\nhorizon_days: 1\nwalk_forward: {window: rolling}\n", "train_days"),
        ("name: x\nhorizon_days: 1\nquantile: {alphas: [0.9, 0.1]}\n", "increasing"),
        ("name: x\nhorizon_days: 1\nsurprise: 1\n", "surprise"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_an_invalid_config_is_a_clear_error_naming_the_file(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path)
    assert "bad.yaml" in str(raised.value)


def test_unknown_feature_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no_such_feature"):
        feature_columns(small_config(1, features=["ret_1d", "no_such_feature"]))


# --- train_end and time order ------------------------------------------------------------------


def test_train_end_cuts_the_inputs_before_anything_reads_them() -> None:
    config = small_config(7)
    data = _prepared(config)
    end = config.data.train_end
    assert end is not None
    assert data.inputs.market.get_column("timestamp").max().date() <= end  # type: ignore[union-attr]
    assert data.inputs.fear_greed.get_column("available_at").max().date() <= end  # type: ignore[union-attr]
    # A labelled row needs its future price, which must itself be on or before train_end.
    last_labelled = data.frame.get_column("timestamp").max().date()  # type: ignore[union-attr]
    assert last_labelled + timedelta(days=7) <= end


def test_data_after_train_end_cannot_change_what_is_trained() -> None:
    """Scramble every price after train_end: the data read, the folds and the model stay identical."""
    config = small_config(1, walk_forward={"first_test_start": date(2019, 1, 1)})
    market, _, _ = bundled_inputs(config.data.coins)
    end = config.data.train_end
    assert end is not None
    rng = np.random.default_rng(1)
    after = pl.col("timestamp").dt.date() > end
    scrambled = market.with_columns(
        pl.when(after).then(pl.col("price") * pl.Series(rng.uniform(0.2, 5.0, market.height))).otherwise("price")
    )
    assert not scrambled.equals(market)
    honest, tampered = _prepared(config, market), _prepared(config, scrambled)
    assert honest.fingerprint == tampered.fingerprint
    assert honest.frame.equals(tampered.frame)
    first = walk_forward(honest.dataset, config)
    second = walk_forward(tampered.dataset, config)
    assert first.predictions.equals(second.predictions)
    sample = honest.dataset.features[-50:]
    np.testing.assert_array_equal(
        fit_direction_model(honest.dataset, config).model.probability(sample),
        fit_direction_model(tampered.dataset, config).model.probability(sample),
    )


def test_fingerprint_changes_when_the_data_read_changes() -> None:
    config = small_config(1)
    market, _, _ = bundled_inputs(config.data.coins)
    changed = market.with_columns(
        pl.when(pl.int_range(pl.len()) == 10).then(pl.col("price") * 1.01).otherwise("price").alias("price")
    )
    assert _prepared(config).fingerprint != _prepared(config, changed).fingerprint


@pytest.mark.parametrize("horizon", [1, 7])
def test_every_fold_trains_only_on_labels_known_before_its_test_window(horizon: int) -> None:
    config = small_config(horizon)
    data = _prepared(config)
    result = walk_forward(data.dataset, config)
    assert len(result.folds) >= 2
    for fold in result.folds:
        assert fold.train_last + timedelta(days=horizon) < fold.test_first
        assert (fold.test_first - fold.train_last).days > config.gap_days
    predictions = result.predictions
    assert predictions.select("coin_id", "timestamp").is_unique().all()
    first_test = config.walk_forward.first_test_start
    assert predictions.get_column("timestamp").min().date() >= first_test  # type: ignore[union-attr]
    # The mask itself, on every possible test start: nothing within the gap is trainable.
    days = data.dataset.day
    for start in range(int(days.min()) + 30, int(days.max()), 37):
        mask = training_mask(days, start, config)
        assert not mask.any() or int(days[mask].max()) + horizon < start


def test_rolling_window_drops_old_rows() -> None:
    config = small_config(1, walk_forward={"window": "rolling", "train_days": 365})
    data = _prepared(config)
    result = walk_forward(data.dataset, config)
    for fold in result.folds:
        assert (fold.test_first - fold.train_first).days <= 365 + config.gap_days + 1


def test_base_rate_baseline_is_learned_on_each_folds_training_rows(
    small: tuple[ExperimentConfig, PreparedData], small_walk: WalkForwardResult
) -> None:
    config, data = small
    result = small_walk
    for fold in result.folds:
        mask = training_mask(data.dataset.day, day_number(fold.test_first), config)
        expected = float(data.dataset.y[mask].mean())
        assert fold.base_rate == pytest.approx(expected)
        test = result.predictions.filter(pl.col("fold") == fold.index)
        assert test.get_column("p_base_rate").unique().to_list() == [pytest.approx(expected)]
        # The test window's own up-share is a different number: it was not used.
        assert float(test.get_column("y").mean()) != pytest.approx(expected)  # type: ignore[arg-type]


def test_outputs_are_probabilities_and_quantiles_never_cross(small_walk: WalkForwardResult) -> None:
    predictions = small_walk.predictions
    for column in ("p_model", "p_raw", "p_momentum"):
        values = predictions.get_column(column).to_numpy()
        assert values.min() > 0
        assert values.max() < 1
    assert (predictions["q10"] <= predictions["q50"]).all()
    assert (predictions["q50"] <= predictions["q90"]).all()


def test_the_pipeline_finds_a_planted_leak_and_nothing_in_shuffled_labels(
    small: tuple[ExperimentConfig, PreparedData],
) -> None:
    """Behaviour check: a feature that is the future return gives AUC ~1; shuffled labels give ~0.5."""
    config, data = small
    d = data.dataset
    leaky = with_planted_leak(d)
    leaked = walk_forward(leaky, config).predictions
    assert roc_auc_score(leaked["y"], leaked["p_model"]) > 0.95
    shuffled_y = np.random.default_rng(0).permutation(d.y)
    noise = Dataset(
        coin_id=d.coin_id,
        day=d.day,
        features=d.features,
        y=shuffled_y,
        fwd_return=d.fwd_return,
        trailing_return=d.trailing_return,
        price=d.price,
        feature_names=d.feature_names,
    )
    noisy = walk_forward(noise, config).predictions
    assert abs(roc_auc_score(noisy["y"], noisy["p_model"]) - 0.5) < 0.06


# --- calibration and metrics -----------------------------------------------------------------------


@pytest.mark.parametrize("method", [CalibrationMethod.ISOTONIC, CalibrationMethod.SIGMOID])
def test_calibrator_is_monotone_and_fixes_a_miscalibrated_score(method: CalibrationMethod) -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.2, 0.8, 5000)
    y = (rng.uniform(size=truth.size) < truth).astype(np.float64)
    overconfident = 1 / (1 + np.exp(-3 * np.log(truth / (1 - truth))))
    calibrator = fit_calibrator(method, overconfident, y)
    grid = np.linspace(0.01, 0.99, 99)
    assert np.all(np.diff(calibrator.apply(grid)) >= 0)
    before = expected_calibration_error(y, overconfident)
    after = expected_calibration_error(y, calibrator.apply(overconfident))
    assert after < before / 2


def test_metrics_agree_with_scikit_learn_including_weights() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 400).round(2)  # ties, to exercise the AUC tie handling
    y = (rng.uniform(size=400) < p).astype(np.float64)
    w = rng.integers(0, 4, 400).astype(np.float64)
    assert brier_score(y, p, w) == pytest.approx(brier_score_loss(y, p, sample_weight=w))
    assert our_log_loss(y, p, w) == pytest.approx(log_loss(y, p, sample_weight=w))
    assert roc_auc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w))
    assert math.isnan(roc_auc(np.ones(5), np.linspace(0.1, 0.9, 5)))


def test_block_bootstrap_keeps_each_day_whole_and_draws_as_many_days() -> None:
    day_index = np.repeat(np.arange(100), 3)  # 100 days, 3 coins each
    draws = block_bootstrap_weights(day_index, block_days=10, n_resamples=20, seed=0)
    for weights in draws:
        per_day = weights.reshape(100, 3)
        assert (per_day == per_day[:, :1]).all()  # all coins of a day drawn together
        assert per_day[:, 0].sum() == 100


def test_summary_reports_intervals_around_each_estimate(
    small: tuple[ExperimentConfig, PreparedData], small_walk: WalkForwardResult
) -> None:
    config, _ = small
    result = small_walk
    summary = summarize_predictions(result.predictions, evaluation=config.evaluation, alphas=config.quantile.alphas)
    for name in ("model", "coin_flip", "base_rate", "momentum"):
        for metric in ("brier", "log_loss", "auc", "accuracy", "ece", "brier_skill"):
            estimate = summary.overall[name][metric]
            if name == "coin_flip" and metric == "auc":
                continue
            assert estimate.low - 1e-9 <= estimate.value <= estimate.high + 1e-9, (name, metric)
    assert summary.overall["coin_flip"]["brier"].value == pytest.approx(0.25)
    assert summary.overall["base_rate"]["brier_skill"].value == 0.0
    assert len(summary.per_fold) == len(result.folds)
    assert 0 < summary.quantiles["interval_coverage"] <= 1
    flat = summary.mlflow_metrics()
    assert {"brier", "brier_low", "brier_high", "base_rate_brier", "momentum_auc", "brier_skill"} <= set(flat)


def test_figures_are_written_as_png(
    tmp_path: Path, small: tuple[ExperimentConfig, PreparedData], small_walk: WalkForwardResult
) -> None:
    config, data = small
    predictions = small_walk.predictions
    model = fit_direction_model(data.dataset, config).model
    paths = [
        plots.reliability_diagram(predictions, tmp_path / "r.png"),
        plots.feature_importance(model, tmp_path / "f.png"),
        plots.shap_summary(model, data.dataset.features[-300:], tmp_path / "s.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contributions_are_exact_treeshap_summing_to_the_margin(small: tuple[ExperimentConfig, PreparedData]) -> None:
    config, data = small
    model = fit_direction_model(data.dataset, config).model
    features = data.dataset.features[-100:]
    contribs = model.contributions(features)
    assert contribs.shape == (100, len(model.feature_names) + 1)
    margin = np.log(model.raw_probability(features) / (1 - model.raw_probability(features)))
    np.testing.assert_allclose(contribs.sum(axis=1), margin, atol=1e-4)


# --- the realistic run (slow) ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("horizon", [1, 7])
def test_default_config_on_the_bundled_history(horizon: int) -> None:
    """Train the default walk-forward on all bundled coins; print the figures; guard against leaks."""
    config = default_config(horizon)
    started = time.perf_counter()
    market, fear_greed, social = bundled_inputs()
    data = prepare_data(config, cut_inputs(market.lazy(), fear_greed.lazy(), social.lazy(), train_end=None))
    result = walk_forward(data.dataset, config)
    summary = summarize_predictions(result.predictions, evaluation=config.evaluation, alphas=config.quantile.alphas)
    elapsed = time.perf_counter() - started
    print(f"\n{horizon}d: {len(result.folds)} folds, {summary.n_predictions} predictions, {elapsed:.1f}s")
    for name, metrics in summary.overall.items():
        print(name, {k: f"{v.value:.4f} [{v.low:.4f}, {v.high:.4f}]" for k, v in metrics.items()})
    # Daily crypto direction is close to a coin toss: anything far better is a leak until proven otherwise.
    assert summary.overall["model"]["auc"].value < 0.62
    assert summary.overall["model"]["brier"].value > 0.22
    assert labelled_frame(data.inputs, config).height == data.frame.height


def test_calibration_rows_are_the_training_tail_each_predicted_once(
    small: tuple[ExperimentConfig, PreparedData],
) -> None:
    config, data = small
    fit = fit_direction_model(data.dataset, config)
    days = data.dataset.day
    tail_start = int(days[int(len(days) * (1 - config.walk_forward.calibration_fraction))])
    assert fit.n_calibration_rows == int((days >= tail_start).sum())
    assert fit.n_calibration_rows < len(days)
