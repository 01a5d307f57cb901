"""The CLI: train with --train-end, evaluate an already trained model, compare experiments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from khalsi.settings import Settings, get_settings
from tests.training_fixtures import no_leaked_run, small_config, write_bundled_lake
from training.cli import training_app
from training.registry import CHAMPION, configure_mlflow, experiment_name

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_run() -> Iterator[None]:
    with no_leaked_run():
        yield


@pytest.fixture
def cli_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI reads settings from the environment: point it at this test's KHALSI_HOME."""
    monkeypatch.setenv("KHALSI_HOME", str(settings.home))
    monkeypatch.setenv("KHALSI_ENVIRONMENT", "test")
    monkeypatch.setenv("COLUMNS", "250")  # rich tables at a wide terminal's width
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def _config_file(tmp_path: Path) -> Path:
    config = small_config(1, data={"train_end": None})
    path = tmp_path / "small-1d.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_train_end_limits_the_data_evaluate_scores_later_days_without_retraining(
    cli_settings: Settings, tmp_path: Path
) -> None:
    write_bundled_lake(cli_settings, small_config(1).data.coins)
    trained = runner.invoke(
        training_app, ["train", "--config", str(_config_file(tmp_path)), "--train-end", "2019-06-30"]
    )
    assert trained.exit_code == 0, trained.output
    assert "took" in trained.output
    client = configure_mlflow(cli_settings)
    experiment = client.get_experiment_by_name(experiment_name(cli_settings, 1))
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["khalsi.train_end"] == "2019-06-30"
    assert run.data.tags["khalsi.data_last"].startswith("2019-06-30")
    assert run.data.tags["khalsi.final_model_last_day"] <= "2019-06-29"
    (version,) = client.search_model_versions("name = 'khalsi-direction-1d'")

    # No champion unless the rule promoted it; a named version can be evaluated either way.
    report_path = tmp_path / "eval.json"
    args = [
        "evaluate",
        "--horizon",
        "1",
        "--start",
        "2019-07-01",
        "--end",
        "2019-12-31",
        "--model-version",
        str(version.version),
        "--json",
        str(report_path),
    ]
    evaluated = runner.invoke(training_app, args)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(report_path.read_text())
    assert report["model"]["version"] == str(version.version)
    assert report["in_sample_rows"] == 0
    assert report["window"] == {"start": "2019-07-01", "end": "2019-12-31", "horizon_days": 1}
    for entry in [report["model"], *report["baselines"].values()]:
        assert {"brier", "log_loss", "auc", "ece", "n_predictions"} <= set(entry)
        assert entry["n_predictions"] == report["model"]["n_predictions"] > 300
    assert set(report["baselines"]) == {"coin_flip", "base_rate", "momentum"}
    assert report["baselines"]["coin_flip"]["brier"] == pytest.approx(0.25)
    assert "base rate" in evaluated.output
    # Nothing was retrained or registered by evaluate.
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert len(client.search_model_versions("name = 'khalsi-direction-1d'")) == 1

    # Scoring days the model trained on is allowed but flagged as in sample.
    inside = runner.invoke(
        training_app,
        [
            *args[:4],
            "2019-01-01",
            "--end",
            "2019-03-31",
            "--model-version",
            str(version.version),
            "--json",
            str(report_path),
        ],
    )
    assert inside.exit_code == 0, inside.output
    assert json.loads(report_path.read_text())["in_sample_rows"] > 0
    assert "in sample" in inside.output

    compared = runner.invoke(training_app, ["experiments", "compare"])
    assert compared.exit_code == 0, compared.output
    assert "small-1d" in compared.output
    assert run.info.run_id[:8] in compared.output


def test_evaluate_without_a_champion_is_a_clear_error(cli_settings: Settings) -> None:
    write_bundled_lake(cli_settings, ["bitcoin"])
    configure_mlflow(cli_settings)
    result = runner.invoke(training_app, ["evaluate", "--horizon", "7", "--start", "2020-01-01", "--end", "2020-02-01"])
    assert result.exit_code == 1
    assert CHAMPION in result.output


def test_train_with_an_invalid_config_or_empty_lake_fails_cleanly(cli_settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nhorizon_days: 1\nwalk_forward: {refit_every_days: 0}\n")
    result = runner.invoke(training_app, ["train", "--config", str(bad)])
    assert result.exit_code == 2
    assert "refit_every_days" in result.output
    contradiction = runner.invoke(training_app, ["train", "--config", str(_config_file(tmp_path)), "--horizon", "7"])
    assert contradiction.exit_code == 2
    empty = runner.invoke(training_app, ["train", "--config", str(_config_file(tmp_path))])
    assert empty.exit_code == 1
    assert "ingest" in empty.output
