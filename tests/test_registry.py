"""MLflow runs, the registry and the champion rule, on a temporary tracking store per test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import yaml
from mlflow.tracking import MlflowClient

from khalsi.settings import Settings, get_settings
from tests.training_fixtures import bundled_inputs, no_leaked_run, small_config, write_bundled_lake
from training.config import ExperimentConfig, PromotionConfig
from training.data import TrainingInputs, cut_inputs
from training.experiment import run_experiment
from training.registry import (
    CHAMPION,
    ModelNotFoundError,
    configure_mlflow,
    decide_against_base_rate,
    decide_against_champion,
    load_registered_model,
)


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_run() -> Iterator[None]:
    with no_leaked_run():
        yield


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    return small_config(1)


@pytest.fixture(scope="module")
def inputs(config: ExperimentConfig) -> TrainingInputs:
    market, fear_greed, social = bundled_inputs(config.data.coins)
    return cut_inputs(market.lazy(), fear_greed.lazy(), social.lazy(), train_end=config.data.train_end)


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_a_run_logs_config_data_validation_metrics_figures_and_model(
    settings: Settings, config: ExperimentConfig, inputs: TrainingInputs
) -> None:
    outcome = run_experiment(settings, config, inputs=inputs, validation={"id": "validation-42", "passed": True})
    client = configure_mlflow(settings)
    run = client.get_run(outcome.run_id)
    assert run.info.artifact_uri.startswith(settings.mlflow_artifact_root)
    assert run.data.params["horizon_days"] == "1"
    assert run.data.params["walk_forward.refit_every_days"] == "150"
    assert run.data.params["gap_days_applied"] == "1"
    tags = run.data.tags
    assert tags["khalsi.data_fingerprint"] == inputs.fingerprint()
    assert tags["khalsi.validation"] == "validation-42"
    assert tags["khalsi.train_end"] == "2019-06-30"
    assert tags["khalsi.data_last"].startswith("2019-06-30")
    artifacts = _artifacts(client, outcome.run_id)
    assert {
        "config.yaml",
        "data/window.json",
        "data/validation.json",
        "evaluation/predictions.parquet",
        "evaluation/summary.json",
        "evaluation/folds.json",
        "evaluation/promotion.json",
        "figures/reliability.png",
        "figures/feature_importance.png",
        "figures/shap_summary.png",
    } <= artifacts
    logged_config = yaml.safe_load(
        Path(client.download_artifacts(outcome.run_id, "config.yaml", str(settings.home))).read_text()
    )
    assert ExperimentConfig.model_validate(logged_config) == config
    metrics = run.data.metrics
    for name in ("brier", "brier_low", "brier_high", "base_rate_brier", "momentum_brier", "coin_flip_brier", "auc"):
        assert name in metrics
    n_folds = int(metrics["n_folds"])
    assert len(client.get_metric_history(outcome.run_id, "fold_brier")) == n_folds
    assert len(client.get_metric_history(outcome.run_id, "fold_base_rate_brier")) == n_folds
    # The decision is recorded on the run and the version, and the alias agrees with it.
    version = client.get_model_version(config.model_name, outcome.model_version)
    decision = "promoted" if outcome.decision.promoted else "not-promoted"
    assert tags["khalsi.promotion.decision"] == decision
    assert version.tags["khalsi.promotion.decision"] == decision
    assert version.tags["khalsi.promotion.reason"] == outcome.decision.reason
    aliases = client.get_registered_model(config.model_name).aliases
    assert (str(aliases.get(CHAMPION)) == outcome.model_version) == outcome.decision.promoted


def test_champion_moves_only_when_a_challenger_beats_it_on_the_same_rows(
    settings: Settings, config: ExperimentConfig, inputs: TrainingInputs
) -> None:
    first = run_experiment(settings, config, inputs=inputs)
    client = configure_mlflow(settings)
    if not first.decision.promoted:
        # An existing champion, whatever the first model's result (the rule under test is the next one).
        client.set_registered_model_alias(config.model_name, CHAMPION, first.model_version)
    retrained = run_experiment(settings, config, inputs=inputs)
    # Same data, same config, same seed: a tie, and a tie never moves the alias.
    assert not retrained.decision.promoted
    assert retrained.decision.reference == f"champion v{first.model_version}"
    assert retrained.decision.challenger_value == pytest.approx(retrained.decision.reference_value)
    assert retrained.decision.common_rows == retrained.summary.n_predictions
    assert str(client.get_registered_model(config.model_name).aliases[CHAMPION]) == first.model_version
    assert client.get_run(retrained.run_id).data.tags["khalsi.promotion.decision"] == "not-promoted"


def _predictions(
    p_model: list[float], y: list[float], *, p_base: float = 0.5, p_momentum: list[float] | None = None
) -> pl.DataFrame:
    n = len(y)
    return pl.DataFrame(
        {
            "coin_id": ["bitcoin"] * n,
            "timestamp": pl.datetime_range(
                pl.datetime(2020, 1, 1, time_zone="UTC"),
                pl.datetime(2020, 1, 1, time_zone="UTC") + pl.duration(days=n - 1),
                "1d",
                eager=True,
            ),
            "y": y,
            "p_model": p_model,
            "p_base_rate": [p_base] * n,
            "p_coin_flip": [0.5] * n,
            "p_momentum": p_momentum if p_momentum is not None else [0.5] * n,
        }
    )


def test_rule_requires_the_margin_on_common_rows_and_lower_brier() -> None:
    y = [1.0, 0.0] * 50
    champion = _predictions([0.6, 0.4] * 50, y)  # brier 0.16
    slightly = _predictions([0.61, 0.39] * 50, y)  # brier 0.1521: better by 0.0079
    rule = PromotionConfig(metric="brier", margin=0.005, min_common_rows=10)
    assert decide_against_champion(slightly, champion, champion_version="3", rule=rule, n_bins=10).promoted
    strict = PromotionConfig(metric="brier", margin=0.01, min_common_rows=10)
    refused = decide_against_champion(slightly, champion, champion_version="3", rule=strict, n_bins=10)
    assert not refused.promoted
    assert "does not beat champion v3" in refused.reason
    worse = decide_against_champion(champion, slightly, champion_version="3", rule=rule, n_bins=10)
    assert not worse.promoted
    # Scored on disjoint days there is nothing to compare: never promoted.
    elsewhere = _predictions([0.9, 0.1] * 50, y).with_columns(pl.col("timestamp") + pl.duration(days=365))
    disjoint = decide_against_champion(elsewhere, champion, champion_version="3", rule=rule, n_bins=10)
    assert not disjoint.promoted
    assert disjoint.common_rows == 0


def test_rule_for_auc_prefers_higher_and_first_model_must_beat_the_base_rate() -> None:
    y = [1.0, 0.0, 1.0, 0.0] * 25
    sharp = _predictions([0.7, 0.3, 0.6, 0.4] * 25, y)
    blunt = _predictions([0.55, 0.5, 0.5, 0.55] * 25, y)
    auc_rule = PromotionConfig(metric="auc", margin=0.01, min_common_rows=10)
    assert decide_against_champion(sharp, blunt, champion_version="1", rule=auc_rule, n_bins=10).promoted
    assert not decide_against_champion(blunt, sharp, champion_version="1", rule=auc_rule, n_bins=10).promoted
    brier_rule = PromotionConfig(margin=0.001, min_common_rows=10)
    assert decide_against_base_rate(sharp, rule=brier_rule, n_bins=10).promoted
    no_skill = decide_against_base_rate(_predictions([0.5] * 100, y), rule=brier_rule, n_bins=10)
    assert not no_skill.promoted
    assert "no champion yet" in no_skill.reason


def test_a_model_that_loses_to_a_simple_baseline_is_never_promoted() -> None:
    y = [1.0, 0.0] * 50
    rule = PromotionConfig(margin=0.005, min_common_rows=10)
    # Beats a stale 70% base rate (Brier 0.29) by far, yet loses to a constant 0.5 (0.25): no champion.
    flat = _predictions([0.55] * 100, y, p_base=0.7)
    first = decide_against_base_rate(flat, rule=rule, n_bins=10)
    assert not first.promoted
    assert "coin_flip 0.25000" in first.reason
    assert "no champion yet" in first.reason
    # Beats the champion by the margin, yet momentum ("up if it went up") knew better.
    champion = _predictions([0.45, 0.55] * 50, y)
    challenger = _predictions([0.55, 0.45] * 50, y, p_momentum=[0.6, 0.4] * 50)
    refused = decide_against_champion(challenger, champion, champion_version="2", rule=rule, n_bins=10)
    assert not refused.promoted
    assert "beats champion v2" in refused.reason
    assert "momentum" in refused.reason
    accepted = decide_against_champion(
        _predictions([0.55, 0.45] * 50, y), champion, champion_version="2", rule=rule, n_bins=10
    )
    assert accepted.promoted
    assert "no worse than coin_flip or momentum" in accepted.reason


def test_champion_is_served_by_alias_with_probabilities_quantiles_and_contributions(
    settings: Settings, config: ExperimentConfig, inputs: TrainingInputs
) -> None:
    outcome = run_experiment(settings, config, inputs=inputs)
    client = configure_mlflow(settings)
    with pytest.raises(ModelNotFoundError) if not outcome.decision.promoted else nullcontext():
        load_registered_model(settings, model_name=config.model_name)
    client.set_registered_model_alias(config.model_name, CHAMPION, outcome.model_version)
    model, version = load_registered_model(settings, model_name=config.model_name)
    assert str(version.version) == outcome.model_version
    pyfunc = mlflow.pyfunc.load_model(f"models:/{config.model_name}@{CHAMPION}")
    example = pyfunc.input_example
    assert list(example.columns) == [*model.feature_names, "price"]
    out = pyfunc.predict(example, params={"contributions": True})
    assert ((out["p_up"] > 0) & (out["p_up"] < 1)).all()
    assert (out["q10"] <= out["q50"]).all()
    assert (out["q50"] <= out["q90"]).all()
    np.testing.assert_allclose(out["price_q50"], example["price"] * np.exp(out["q50"]))
    contributions = out[[f"contrib_{name}" for name in model.feature_names] + ["contrib_bias"]].sum(axis=1)
    raw = out["p_up_raw"]
    np.testing.assert_allclose(contributions, np.log(raw / (1 - raw)), atol=1e-4)
    np.testing.assert_allclose(out["p_up"], model.probability(example[model.feature_names].to_numpy()))


def test_train_flow_reads_the_lake_and_returns_the_run_id(
    prefect_harness: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.train import train

    config = small_config(7)
    write_bundled_lake(settings, config.data.coins)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    monkeypatch.setenv("KHALSI_HOME", str(settings.home))
    monkeypatch.setenv("KHALSI_ENVIRONMENT", "test")
    get_settings.cache_clear()
    try:
        run_id = train(config_path=str(path), validation={"id": "validation-7"})
    finally:
        get_settings.cache_clear()
    client = configure_mlflow(settings)
    run = client.get_run(run_id)
    assert run.data.tags["khalsi.validation"] == "validation-7"
    assert run.data.tags["khalsi.horizon_days"] == "7"
    assert run.data.tags["khalsi.promotion.decision"] in {"promoted", "not-promoted"}
    versions = client.search_model_versions(f"name = '{config.model_name}'")
    assert [v.tags.get("khalsi.source_run_id") for v in versions] == [run_id]
