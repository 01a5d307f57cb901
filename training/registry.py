"""MLflow tracking, the model registry and the champion/challenger promotion rule.

- Tracking URI and artifact root come from :class:`khalsi.settings.Settings` (a SQLite store and a
  folder under KHALSI_HOME by default). One experiment per horizon: ``<prefix>-direction-<H>d``.
- A run logs the flattened config as params, the config YAML, the exact data window and the
  SHA-256 of the data it read, the validation result it depended on, metrics overall and per fold
  (``fold_*`` with the fold index as step), the out-of-sample predictions, the figures and the
  final model (a pyfunc bundling classifier, calibrator and quantile model, with its signature and
  an input example).
- One registered model per horizon (``khalsi-direction-<H>d``). The ``champion`` alias moves only
  when the challenger beats the champion by the declared margin on the declared metric, computed
  on the rows both runs scored out of sample (the same evaluation window). The first model must
  beat the base-rate baseline the same way. Neither is ever promoted while it does worse than a
  simple baseline (coin flip, momentum) on its own out-of-sample rows. The decision and its reason
  are tagged on the run and on the version. Serving loads ``models:/<name>@champion``, never "latest".
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import xgboost as xgb
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from khalsi.settings import Settings
from training.config import ExperimentConfig, PromotionConfig, config_to_yaml
from training.metrics import EvaluationSummary, ProbabilityScorer
from training.model import DirectionModel, DirectionPyfunc
from training.walk_forward import FitResult, WalkForwardResult

CHAMPION = "champion"
MODEL_ARTIFACT = "model"
PREDICTIONS_ARTIFACT = "evaluation/predictions.parquet"
CONFIG_ARTIFACT = "config.yaml"
TAG_PREFIX = "khalsi."


class ModelNotFoundError(LookupError):
    """No such registered model, version or alias."""


def configure_mlflow(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured tracking and registry stores; return a client for them."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    registry_uri = settings.mlflow.registry_uri or settings.mlflow_tracking_uri
    mlflow.set_registry_uri(registry_uri)
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=registry_uri)


def experiment_name(settings: Settings, horizon_days: int) -> str:
    """The MLflow experiment of a horizon, e.g. ``khalsi-direction-1d``."""
    return f"{settings.mlflow.experiment_prefix}-direction-{horizon_days}d"


def ensure_experiment(client: MlflowClient, settings: Settings, name: str) -> str:
    """The experiment's id, creating it (artifacts under ``Settings.mlflow_artifact_root``) if needed."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    return str(client.create_experiment(name, artifact_location=f"{settings.mlflow_artifact_root}/{name}"))


def validation_reference(validation: Mapping[str, Any] | str | None) -> str:
    """A short identifier of the validation result a run depended on."""
    if validation is None:
        return "none"
    if isinstance(validation, str):
        return validation
    for key in ("id", "run_id", "validation_id"):
        if key in validation:
            return str(validation[key])
    return "sha256:" + hashlib.sha256(json.dumps(validation, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pip_requirements() -> list[str]:
    return [f"mlflow=={mlflow.__version__}", f"xgboost=={xgb.__version__}", "pandas", "numpy"]


@dataclass(frozen=True)
class LoggedRun:
    """What a training run left in MLflow."""

    run_id: str
    model_uri: str
    experiment_id: str


def log_training_run(
    *,
    settings: Settings,
    config: ExperimentConfig,
    data_window: Mapping[str, Any],
    fingerprint: str,
    validation: Mapping[str, Any] | str | None,
    walk: WalkForwardResult,
    summary: EvaluationSummary,
    final: FitResult,
    figures: Mapping[str, Path],
    input_example: pd.DataFrame,
    elapsed_seconds: float,
) -> LoggedRun:
    """Log one training run (params, config, data, validation, metrics, figures, model)."""
    client = configure_mlflow(settings)
    experiment_id = ensure_experiment(client, settings, experiment_name(settings, config.horizon_days))
    tags = {
        f"{TAG_PREFIX}horizon_days": str(config.horizon_days),
        f"{TAG_PREFIX}experiment": config.name,
        f"{TAG_PREFIX}registered_model": config.model_name,
        f"{TAG_PREFIX}data_fingerprint": fingerprint,
        f"{TAG_PREFIX}data_first": str(data_window.get("data_first")),
        f"{TAG_PREFIX}data_last": str(data_window.get("data_last")),
        f"{TAG_PREFIX}train_end": str(data_window.get("train_end")),
        f"{TAG_PREFIX}final_model_first_day": str(final.first_day),
        f"{TAG_PREFIX}final_model_last_day": str(final.last_day),
        f"{TAG_PREFIX}oos_first_day": summary.first_day,
        f"{TAG_PREFIX}oos_last_day": summary.last_day,
        f"{TAG_PREFIX}validation": validation_reference(validation),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=config.name, tags=tags) as run:
        mlflow.log_params(config.flat_params())
        mlflow.log_params({"gap_days_applied": config.gap_days, "n_features": len(final.model.feature_names)})
        mlflow.log_text(config_to_yaml(config), CONFIG_ARTIFACT)
        mlflow.log_dict(dict(data_window) | {"fingerprint_sha256": fingerprint}, "data/window.json")
        if isinstance(validation, Mapping):
            mlflow.log_dict(dict(validation), "data/validation.json")
        mlflow.log_metrics(summary.mlflow_metrics())
        mlflow.log_metrics(
            {
                "elapsed_seconds": elapsed_seconds,
                "n_folds": float(len(walk.folds)),
                "final_n_trees": float(final.n_trees),
                "final_n_rows": float(final.n_rows),
            }
        )
        for row in summary.per_fold:
            step = int(row["fold"])
            for name in ("model", "base_rate", "momentum", "coin_flip"):
                prefix = "fold_" if name == "model" else f"fold_{name}_"
                scores = row.get(name, {})
                mlflow.log_metrics(
                    {f"{prefix}{metric}": value for metric, value in scores.items() if math.isfinite(value)},
                    step=step,
                )
        mlflow.log_dict(
            {"folds": [fold.as_dict() for fold in walk.folds], "skipped": walk.skipped}, "evaluation/folds.json"
        )
        mlflow.log_dict(summary.as_dict(), "evaluation/summary.json")
        mlflow.log_dict(final.baselines.as_dict(), "evaluation/final_baselines.json")
        with tempfile.TemporaryDirectory() as tmp:
            predictions_path = Path(tmp) / "predictions.parquet"
            walk.predictions.write_parquet(predictions_path)
            mlflow.log_artifact(str(predictions_path), artifact_path="evaluation")
            for path in figures.values():
                mlflow.log_artifact(str(path), artifact_path="figures")
            final.model.metadata = {
                "experiment": config.name,
                "data_fingerprint": fingerprint,
                "train_first_day": str(final.first_day),
                "train_last_day": str(final.last_day),
                "n_trees": final.n_trees,
                "baselines": final.baselines.as_dict(),
            }
            artifacts = final.model.save(Path(tmp) / "model")
            output_example = final.model.predict_frame(input_example)
            signature = infer_signature(input_example, output_example, params={"contributions": False})
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=DirectionPyfunc(),
                artifacts=artifacts,
                signature=signature,
                input_example=input_example,
                pip_requirements=_pip_requirements(),
            )
        mlflow.set_tag(f"{TAG_PREFIX}model_uri", info.model_uri)
        return LoggedRun(run_id=run.info.run_id, model_uri=str(info.model_uri), experiment_id=experiment_id)


def register_direction_model(
    client: MlflowClient, model: DirectionModel, folder: Path, *, model_name: str, champion: bool = True
) -> str:
    """Log an already built model in a run of its own, register it, optionally as champion; its version.

    For models made outside a training run (benchmarks, tests of serving); training logs through
    :func:`log_training_run`, with the run's evidence.
    """
    artifacts = model.save(folder)
    with mlflow.start_run():
        # Declared requirements: inferring them would load the model in a subprocess (seconds).
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=DirectionPyfunc(),
            artifacts=artifacts,
            pip_requirements=_pip_requirements(),
        )
    version = str(mlflow.register_model(info.model_uri, model_name).version)
    if champion:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    return version


def register_version(settings: Settings, *, logged: LoggedRun, model_name: str) -> ModelVersion:
    """Register the run's model as a new version of ``model_name``."""
    configure_mlflow(settings)
    version = mlflow.register_model(logged.model_uri, model_name, tags={f"{TAG_PREFIX}run_id": logged.run_id})
    client = configure_mlflow(settings)
    client.set_model_version_tag(model_name, version.version, f"{TAG_PREFIX}source_run_id", logged.run_id)
    return version


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the challenger became champion, and why."""

    promoted: bool
    reason: str
    metric: str
    margin: float
    challenger_value: float | None
    reference: str
    reference_value: float | None
    common_rows: int
    previous_champion: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def champion_version(client: MlflowClient, model_name: str) -> ModelVersion | None:
    """The version holding the champion alias, or None."""
    try:
        version: ModelVersion = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    return version


def run_predictions(client: MlflowClient, run_id: str) -> pl.DataFrame:
    """The out-of-sample predictions a run logged."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
        return pl.read_parquet(path)


def run_config(client: MlflowClient, run_id: str) -> ExperimentConfig:
    """The experiment config a run logged."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        from training.config import load_config

        return load_config(Path(path))


def _metric(predictions: pl.DataFrame, column: str, metric: str, n_bins: int) -> float:
    y = predictions.get_column("y").cast(pl.Float64).to_numpy()
    scorer = ProbabilityScorer(y, predictions.get_column(column).to_numpy(), n_bins=n_bins)
    return scorer.scores(np.ones(len(y)))[metric]


def beats(rule: PromotionConfig, challenger: float, reference: float) -> bool:
    """Strictly better than ``reference`` by more than the margin (a tie never promotes)."""
    if rule.metric.higher_is_better:
        return challenger > reference + rule.margin
    return challenger < reference - rule.margin


# Baselines a champion may never do worse than, on its own out-of-sample rows (margin or not): a
# model that loses to a constant 0.5 or to "up if it went up" should not be served whatever the
# rest of the rule says. The base rate is the first model's reference and is checked with the margin.
GUARD_BASELINES = ("coin_flip", "momentum")


def baselines_not_beaten(predictions: pl.DataFrame, *, rule: PromotionConfig, n_bins: int) -> list[str]:
    """The guard baselines the model does worse than on the metric, e.g. ``["coin_flip 0.25000"]``."""
    metric = rule.metric.value
    value = _metric(predictions, "p_model", metric, n_bins)
    worse: list[str] = []
    for name in GUARD_BASELINES:
        if f"p_{name}" not in predictions.columns:
            continue
        reference = _metric(predictions, f"p_{name}", metric, n_bins)
        if (value < reference) if rule.metric.higher_is_better else (value > reference):
            worse.append(f"{name} {reference:.5f}")
    return worse


def _guarded(
    promoted: bool, reason: str, predictions: pl.DataFrame, rule: PromotionConfig, n_bins: int
) -> tuple[bool, str]:
    if not promoted:
        return promoted, reason
    worse = baselines_not_beaten(predictions, rule=rule, n_bins=n_bins)
    if worse:
        return False, f"{reason}, but does worse than {', '.join(worse)} on its own out-of-sample rows; not promoted"
    return True, f"{reason}, and no worse than {' or '.join(GUARD_BASELINES)}"


def decide_against_base_rate(predictions: pl.DataFrame, *, rule: PromotionConfig, n_bins: int) -> PromotionDecision:
    """The first model's test: beat the base-rate baseline on its own out-of-sample rows."""
    metric, rows = rule.metric.value, predictions.height
    value = _metric(predictions, "p_model", metric, n_bins)
    reference = _metric(predictions, "p_base_rate", metric, n_bins)
    if rows < rule.min_common_rows:
        promoted, reason = False, f"only {rows} out-of-sample rows (< {rule.min_common_rows}); not promoted"
    else:
        promoted = beats(rule, value, reference)
        verdict = "beats" if promoted else "does not beat"
        reason = (
            f"first model: {metric} {value:.5f} {verdict} the base-rate baseline {reference:.5f} "
            f"by more than {rule.margin} on {rows} out-of-sample rows"
        )
        promoted, reason = _guarded(promoted, reason, predictions, rule, n_bins)
        if not promoted:
            reason += "; no champion yet"
    return PromotionDecision(promoted, reason, metric, rule.margin, value, "base_rate", reference, rows, None)


def decide_against_champion(
    challenger: pl.DataFrame,
    champion: pl.DataFrame,
    *,
    champion_version: str,
    rule: PromotionConfig,
    n_bins: int,
) -> PromotionDecision:
    """Challenger vs champion on the rows both scored out of sample (the same evaluation window)."""
    metric = rule.metric.value
    keys = ["coin_id", "timestamp"]
    common = challenger.select(*keys, "y", "p_model").join(
        champion.select(*keys, pl.col("p_model").alias("p_champion")), on=keys, how="inner"
    )
    rows, label = common.height, f"champion v{champion_version}"
    if rows < rule.min_common_rows:
        reason = (
            f"only {rows} out-of-sample rows in common with {label} (< {rule.min_common_rows}); "
            "no fair comparison, not promoted"
        )
        return PromotionDecision(False, reason, metric, rule.margin, None, label, None, rows, champion_version)
    value = _metric(common, "p_model", metric, n_bins)
    reference = _metric(common, "p_champion", metric, n_bins)
    stamps = common.get_column("timestamp")
    promoted = beats(rule, value, reference)
    reason = (
        f"challenger {metric} {value:.5f} {'beats' if promoted else 'does not beat'} {label} {reference:.5f} "
        f"by more than {rule.margin} on {rows} common rows ({str(stamps.min())[:10]}..{str(stamps.max())[:10]})"
    )
    promoted, reason = _guarded(promoted, reason, challenger, rule, n_bins)
    return PromotionDecision(promoted, reason, metric, rule.margin, value, label, reference, rows, champion_version)


def decide_promotion(
    client: MlflowClient, *, config: ExperimentConfig, challenger_predictions: pl.DataFrame
) -> PromotionDecision:
    """Apply the declared rule: beat the champion (or the base rate, for the first) on the same rows."""
    n_bins = config.evaluation.ece_bins
    champion = champion_version(client, config.model_name)
    if champion is None:
        return decide_against_base_rate(challenger_predictions, rule=config.promotion, n_bins=n_bins)
    champion_run = champion.run_id or dict(champion.tags).get(f"{TAG_PREFIX}run_id", "")
    return decide_against_champion(
        challenger_predictions,
        run_predictions(client, str(champion_run)),
        champion_version=str(champion.version),
        rule=config.promotion,
        n_bins=n_bins,
    )


def apply_decision(
    client: MlflowClient, *, model_name: str, version: str, run_id: str, decision: PromotionDecision
) -> None:
    """Record the decision on the run and the version; move the champion alias if promoted."""
    outcome = "promoted" if decision.promoted else "not-promoted"
    for key, value in (
        ("promotion.decision", outcome),
        ("promotion.reason", decision.reason),
        ("promotion.metric", decision.metric),
        ("promotion.reference", decision.reference),
    ):
        client.set_tag(run_id, f"{TAG_PREFIX}{key}", value)
        client.set_model_version_tag(model_name, version, f"{TAG_PREFIX}{key}", value)
    client.log_dict(run_id, decision.as_dict(), "evaluation/promotion.json")
    if decision.promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version)


def load_registered_model(
    settings: Settings, *, model_name: str, version: str | None = None
) -> tuple[DirectionModel, ModelVersion]:
    """A registered model by version, or the champion (never "latest") when no version is named."""
    client = configure_mlflow(settings)
    try:
        if version is None:
            found: ModelVersion = client.get_model_version_by_alias(model_name, CHAMPION)
        else:
            found = client.get_model_version(model_name, version)
    except MlflowException as error:
        what = f"version {version}" if version else f"a '{CHAMPION}' alias"
        raise ModelNotFoundError(f"registered model {model_name!r} has no {what} ({error.message})") from error
    loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{found.version}")
    python_model = loaded.unwrap_python_model()
    assert isinstance(python_model, DirectionPyfunc)
    return python_model.model, found
