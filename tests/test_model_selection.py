"""Model-selection options: ``calibration: none`` and ``calibration: shrink`` (toward the base rate or even odds)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.training_fixtures import bundled_inputs, small_config, with_planted_leak
from training.config import CalibrationMethod, ConfigError, ExperimentConfig, ShrinkPrior, load_config
from training.data import cut_inputs
from training.experiment import PreparedData, prepare_data
from training.model import PROBABILITY_FLOOR, DirectionModel
from training.walk_forward import (
    Dataset,
    fit_direction_model,
    fit_shrink_weight,
    shrink_calibrator,
    walk_forward,
)


def _prepared(config: ExperimentConfig) -> PreparedData:
    market, fear_greed, social = bundled_inputs(config.data.coins)
    inputs = cut_inputs(market.lazy(), fear_greed.lazy(), social.lazy(), train_end=config.data.train_end)
    return prepare_data(config, inputs)


def _with_y(data: Dataset, y: np.ndarray) -> Dataset:
    return replace(data, y=y)


@pytest.fixture(scope="module")
def shrink_setup() -> tuple[ExperimentConfig, PreparedData]:
    config = small_config(1, walk_forward={"calibration": "shrink"})
    return config, _prepared(config)


@pytest.fixture(scope="module")
def even_setup() -> tuple[ExperimentConfig, PreparedData]:
    config = small_config(1, walk_forward={"calibration": "shrink", "shrink_toward": "even"})
    return config, _prepared(config)


def _logit(p: np.ndarray) -> np.ndarray:
    logit: np.ndarray = np.log(p / (1 - p))
    return logit


# --- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["none", "shrink"])
def test_new_calibration_options_load_from_yaml(tmp_path: Path, method: str) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(f"name: x\nhorizon_days: 7\nwalk_forward:\n  calibration: {method}\n", encoding="utf-8")
    assert load_config(path).walk_forward.calibration is CalibrationMethod(method)


# --- the shrink weight -----------------------------------------------------------------------------------


def test_shrink_weight_keeps_an_informative_score_and_drops_noise() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.2, 0.8, 20_000)
    y = (rng.uniform(size=truth.size) < truth).astype(np.float64)
    prior = np.full(truth.size, float(y.mean()))
    assert fit_shrink_weight(truth, y, prior) >= 0.9
    noise = rng.uniform(0.2, 0.8, truth.size)
    assert fit_shrink_weight(noise, y, prior) <= 0.1
    # Twice overconfident in log-odds: the best weight is about one half.
    logit = np.log(truth / (1 - truth))
    blurred = 1 / (1 + np.exp(-(2.0 * logit)))
    assert 0.3 <= fit_shrink_weight(blurred, y, prior) <= 0.7


def test_shrink_weight_refuses_too_few_rows() -> None:
    with pytest.raises(ValueError, match="too few"):
        fit_shrink_weight(np.full(5, 0.5), np.array([0.0, 1.0, 0.0, 1.0, 1.0]), np.full(5, 0.5))


@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0])
def test_shrink_calibrator_lies_between_the_raw_probability_and_the_base_rate(weight: float) -> None:
    raw = np.linspace(0.05, 0.95, 19)
    base_rate = 0.53
    p = shrink_calibrator(weight, base_rate).apply(raw)
    if weight == 0.0:
        np.testing.assert_allclose(p, base_rate)
    elif weight == 1.0:
        np.testing.assert_allclose(p, raw)
    else:
        assert np.all(p >= np.minimum(raw, base_rate) - 1e-12)
        assert np.all(p <= np.maximum(raw, base_rate) + 1e-12)
        assert np.all(np.diff(p) > 0)  # still monotone: the ranking (AUC) is the classifier's


def test_shrink_toward_loads_from_yaml_and_defaults_to_the_base_rate(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text("name: x\nhorizon_days: 7\nwalk_forward:\n  calibration: shrink\n", encoding="utf-8")
    assert load_config(path).walk_forward.shrink_toward is ShrinkPrior.BASE_RATE
    path.write_text(
        "name: x\nhorizon_days: 7\nwalk_forward:\n  calibration: shrink\n  shrink_toward: even\n", encoding="utf-8"
    )
    assert load_config(path).walk_forward.shrink_toward is ShrinkPrior.EVEN
    path.write_text("name: x\nhorizon_days: 7\nwalk_forward:\n  shrink_toward: last_month\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="shrink_toward"):
        load_config(path)


@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0])
def test_shrink_toward_even_keeps_the_tilt_and_drops_the_training_up_share(weight: float) -> None:
    raw = np.linspace(0.05, 0.95, 19)
    base_rate = 0.58
    p = shrink_calibrator(weight, base_rate, ShrinkPrior.EVEN).apply(raw)
    # sigmoid(w * (logit(raw) - logit(base_rate))): even odds where the trees add nothing to the base rate.
    np.testing.assert_allclose(_logit(p), weight * (_logit(raw) - _logit(np.array(base_rate))), atol=1e-9)
    at_base = shrink_calibrator(weight, base_rate, ShrinkPrior.EVEN).apply(np.array([base_rate]))
    np.testing.assert_allclose(at_base, 0.5)
    if weight > 0:
        assert np.all(np.diff(p) > 0)


def test_shrink_weight_toward_even_judges_the_tilt_not_the_up_share() -> None:
    """A score whose tilt is informative keeps its weight even when the periods' up-shares differ."""
    rng = np.random.default_rng(1)
    tilt = rng.normal(0.0, 0.6, 20_000)
    y = (rng.uniform(size=tilt.size) < 1 / (1 + np.exp(-tilt))).astype(np.float64)
    stale_base = np.full(tilt.size, 0.65)  # the model learned a 65% up-share; the truth is even
    raw = 1 / (1 + np.exp(-(tilt + _logit(stale_base))))
    assert fit_shrink_weight(raw, y, stale_base, ShrinkPrior.EVEN) >= 0.9
    noise = 1 / (1 + np.exp(-(rng.normal(0.0, 0.6, tilt.size) + _logit(stale_base))))
    assert fit_shrink_weight(noise, y, stale_base, ShrinkPrior.EVEN) <= 0.1


# --- walk-forward and the served model ---------------------------------------------------------------


def test_calibration_none_serves_the_raw_probability_and_fits_no_calibrator() -> None:
    config = small_config(1, walk_forward={"calibration": "none"})
    data = _prepared(config)
    fit = fit_direction_model(data.dataset, config)
    assert fit.n_calibration_rows == 0
    assert fit.model.calibrator.method is CalibrationMethod.NONE
    features = data.dataset.features[-300:]
    raw = fit.model.raw_probability(features)
    np.testing.assert_allclose(
        fit.model.probability(features), np.clip(raw, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR), atol=1e-12
    )


def test_shrink_pulls_each_fold_toward_its_own_training_base_rate(
    shrink_setup: tuple[ExperimentConfig, PreparedData],
) -> None:
    config, data = shrink_setup
    predictions = walk_forward(data.dataset, config).predictions
    raw, model, base = (predictions.get_column(c).to_numpy() for c in ("p_raw", "p_model", "p_base_rate"))
    assert np.all(model >= np.minimum(raw, base) - 1e-9)
    assert np.all(model <= np.maximum(raw, base) + 1e-9)


def test_shrunk_model_serves_the_walk_forward_numbers_after_save_and_load(
    tmp_path: Path, shrink_setup: tuple[ExperimentConfig, PreparedData]
) -> None:
    config, data = shrink_setup
    fit = fit_direction_model(data.dataset, config)
    assert fit.model.calibrator.method is CalibrationMethod.SHRINK
    assert 0.0 <= fit.model.calibrator.a <= 1.0
    assert fit.n_calibration_rows > 0
    loaded = DirectionModel.load(fit.model.save(tmp_path / "model"))
    assert loaded.calibrator == fit.model.calibrator
    features = data.dataset.features[-300:]
    np.testing.assert_array_equal(loaded.probability(features), fit.model.probability(features))
    frame = pl.DataFrame(features, schema=data.dataset.feature_names, orient="row").to_pandas()
    np.testing.assert_allclose(loaded.predict_frame(frame)["p_up"].to_numpy(), fit.model.probability(features))


def test_shrink_keeps_a_planted_leak_and_shrinks_shuffled_labels_to_the_base_rate(
    shrink_setup: tuple[ExperimentConfig, PreparedData],
) -> None:
    """Behaviour: a feature that is the future return keeps w near 1; shuffled labels push w toward 0."""
    config, data = shrink_setup
    d = data.dataset
    leaky = with_planted_leak(d)
    assert fit_direction_model(leaky, config).model.calibrator.a >= 0.9
    shuffled = _with_y(d, np.random.default_rng(0).permutation(d.y))
    noisy = walk_forward(shuffled, config).predictions
    # Next to no signal: the shrunk probability stays close to each fold's base rate.
    gap = np.abs(noisy.get_column("p_model").to_numpy() - noisy.get_column("p_base_rate").to_numpy())
    raw_gap = np.abs(noisy.get_column("p_raw").to_numpy() - noisy.get_column("p_base_rate").to_numpy())
    assert gap.mean() < 0.5 * raw_gap.mean()


def test_shrink_weight_never_sees_test_labels(shrink_setup: tuple[ExperimentConfig, PreparedData]) -> None:
    config, data = shrink_setup
    d = data.dataset
    first = walk_forward(d, config)
    last_fold = first.folds[-1]
    test_rows = d.day >= int(np.datetime64(last_fold.test_first, "D").astype(np.int64))
    flipped = _with_y(d, np.where(test_rows, 1.0 - d.y, d.y))
    second = walk_forward(flipped, config)
    np.testing.assert_array_equal(
        first.predictions.get_column("p_model").to_numpy(), second.predictions.get_column("p_model").to_numpy()
    )


def test_shrink_toward_even_centres_each_fold_on_its_own_base_rate(
    tmp_path: Path, even_setup: tuple[ExperimentConfig, PreparedData]
) -> None:
    """Above 0.5 exactly where the raw probability is above the fold's base rate; served as walked forward."""
    config, data = even_setup
    predictions = walk_forward(data.dataset, config).predictions
    raw, model, base = (predictions.get_column(c).to_numpy() for c in ("p_raw", "p_model", "p_base_rate"))
    moved = np.abs(raw - base) > 1e-6
    assert np.array_equal(np.sign(model[moved] - 0.5), np.sign(raw[moved] - base[moved]))
    fit = fit_direction_model(data.dataset, config)
    loaded = DirectionModel.load(fit.model.save(tmp_path / "model"))
    features = data.dataset.features[-300:]
    np.testing.assert_array_equal(loaded.probability(features), fit.model.probability(features))


def test_shrink_toward_even_sends_shuffled_labels_to_even_odds(
    even_setup: tuple[ExperimentConfig, PreparedData],
) -> None:
    config, data = even_setup
    d = data.dataset
    shuffled = _with_y(d, np.random.default_rng(0).permutation(d.y))
    noisy = walk_forward(shuffled, config).predictions
    gap = np.abs(noisy.get_column("p_model").to_numpy() - 0.5)
    raw_gap = np.abs(noisy.get_column("p_raw").to_numpy() - noisy.get_column("p_base_rate").to_numpy())
    assert gap.mean() < 0.5 * raw_gap.mean()
