"""Model-selection options: ``calibration: none`` and ``calibration: shrink`` (toward the base rate)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.training_fixtures import bundled_inputs, small_config, with_planted_leak
from training.config import CalibrationMethod, ExperimentConfig, load_config
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
