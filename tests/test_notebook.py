"""The comparison notebook runs top to bottom against a temporary tracking store with real runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from khalsi.settings import Settings
from tests.training_fixtures import bundled_inputs, no_leaked_run, small_config
from training.data import cut_inputs
from training.experiment import run_experiment

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "compare_experiments.ipynb"


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_run() -> Iterator[None]:
    with no_leaked_run():
        yield


def test_notebook_shows_the_runs_metrics_and_reliability_curves(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_ids = []
    for horizon in (1, 7):
        config = small_config(horizon)
        market, fear_greed, social = bundled_inputs(config.data.coins)
        inputs = cut_inputs(market.lazy(), fear_greed.lazy(), social.lazy(), train_end=config.data.train_end)
        run_ids.append(run_experiment(settings, config, inputs=inputs).run_id)
    # The notebook reads Settings from the environment, as a data scientist's session would.
    monkeypatch.setenv("KHALSI_HOME", str(settings.home))
    monkeypatch.setenv("KHALSI_ENVIRONMENT", "test")
    notebook = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}}
    )
    client.execute()
    text = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert str(settings.home) in text  # the store it read is the one configured
    assert "2 runs" in text
    for run_id in run_ids:
        assert run_id[:8] in text
    assert "small-1d" in text
    assert "small-7d" in text
    assert "folds" in text
    assert not [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
