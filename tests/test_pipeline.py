"""The platform pipeline flow chains the stages (ingest → social → score) under Prefect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.pipeline import platform_pipeline, validation_reference
from khalsi import lake
from khalsi.db.engine import create_sync_engine
from khalsi.db.models import MarketData, Prediction
from khalsi.settings import get_settings
from tests.factories import count_rows, isolated_khalsi_env

COINS = ["sui", "worldcoin-wld"]


@pytest.fixture
def pipeline_home(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    isolated_khalsi_env(monkeypatch, HOME=str(home), ENVIRONMENT="test", REPLAY_START="2024-12-31T12:00:00")
    yield home
    get_settings.cache_clear()


async def test_pipeline_ingests_then_publishes_features_and_scores_without_a_champion(
    prefect_harness: None, pipeline_home: Path
) -> None:
    result = await platform_pipeline(coins=COINS, train_models=False)

    settings = get_settings()
    engine = create_sync_engine(settings)
    stored = count_rows(engine, MarketData)
    assert stored == sum(o["rows_stored"] for o in result["market"]) > 0
    assert {o["name"] for o in result["market"]} == set(COINS)
    assert lake.scan_market(settings.lake_dir).collect().height == stored
    assert {o["dataset"] for o in result["social"]} >= {"social_posts", "fear_greed", "social_daily"}

    scored = result["score"]
    # Features were published for both coins, but no model was trained: nothing is predicted, and
    # the summary says why instead of guessing.
    assert scored["published"]["coins"] == len(COINS)
    assert scored["predicted"] == 0
    assert scored["errors"]
    assert count_rows(engine, Prediction) == 0
    assert result["training_runs"] == {}
    # The alerts stage ran last, on the new data (no user has an alert yet).
    assert result["alerts"]["checked"] == 0
    assert result["alerts"]["triggered"] == 0


def test_validation_reference_names_every_batch_it_depended_on() -> None:
    market = [
        {
            "dataset": "market_daily",
            "name": "sui",
            "run_id": "r1",
            "status": "succeeded",
            "rows_stored": 3,
            "warnings": ["gap"],
        }
    ]
    social = [
        {
            "dataset": "fear_greed",
            "name": "fear-greed",
            "run_id": "r2",
            "status": "up-to-date",
            "rows_stored": 0,
            "warnings": [],
        }
    ]
    reference = validation_reference(market, social)
    assert [(b["run_id"], b["status"], b["warnings"]) for b in reference["batches"]] == [
        ("r1", "succeeded", 1),
        ("r2", "up-to-date", 0),
    ]
