"""Experiment configuration: every training run is declared in a YAML file validated here.

A config names the horizon, the features, the model parameters, the walk-forward windows, the date
ranges, the evaluation settings and the promotion rule. The whole validated config is logged with
the run, so a run can always be reproduced from what MLflow holds.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
HORIZONS = (1, 7)


class ConfigError(ValueError):
    """A config file that is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowKind(StrEnum):
    EXPANDING = "expanding"
    ROLLING = "rolling"


class CalibrationMethod(StrEnum):
    ISOTONIC = "isotonic"
    SIGMOID = "sigmoid"
    # The classifier's raw probability as it is (no map fitted), for when calibrating hurts.
    NONE = "none"
    # Shrink toward the training window's base rate in log-odds, p = sigmoid(w * logit(raw) +
    # (1 - w) * logit(base_rate)), with one weight 0 <= w <= 1 fitted out of fold. Unlike Platt it
    # has no free intercept, so it cannot learn the (shifting) up-rate of the most recent rows.
    SHRINK = "shrink"


class ShrinkPrior(StrEnum):
    """Where ``calibration: shrink`` pulls the classifier's probability."""

    # The training window's up-share: p = sigmoid(w * logit(raw) + (1 - w) * logit(base_rate)).
    BASE_RATE = "base_rate"
    # Even odds: p = sigmoid(w * (logit(raw) - logit(base_rate))). The trees' tilt is kept and the
    # training window's up-share is dropped, for horizons where the up-share of one period says
    # nothing about the next (it swings with the market regime; docs/model-card.md).
    EVEN = "even"


class DataConfig(_Strict):
    # The first day any row may come from (early BTC-only history teaches little about 17 coins).
    start: date = date(2015, 1, 1)
    # Nothing after this day is read for training, calibration or early stopping (None: all data).
    train_end: date | None = None
    # Restrict to these CoinGecko ids (None: every coin in the lake).
    coins: list[str] | None = None


class WalkForwardConfig(_Strict):
    window: WindowKind = WindowKind.EXPANDING
    # Length of the training window when ``window`` is rolling.
    train_days: int | None = Field(default=None, ge=30)
    first_test_start: date = date(2019, 1, 1)
    # Last day scored (None: the last labelled day).
    test_end: date | None = None
    # Each fold is refitted every this many days and scores the days until the next refit.
    refit_every_days: int = Field(default=120, ge=1)
    # Days between the last training row and the first test row; raised to the horizon if lower,
    # so no training label can look at a price inside the test window.
    gap_days: int = Field(default=0, ge=0)
    # The time-ordered tail of each training window used for early stopping (a share of its rows).
    early_stopping_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    # Calibration is fitted on out-of-fold predictions: the last ``calibration_fraction`` of the
    # training rows is cut into ``calibration_folds`` time-ordered chunks, each predicted by a model
    # trained only on rows before it (minus the gap).
    calibration: CalibrationMethod = CalibrationMethod.ISOTONIC
    calibration_fraction: float = Field(default=0.3, gt=0, lt=0.8)
    calibration_folds: int = Field(default=2, ge=1, le=10)
    # Only read by ``calibration: shrink``.
    shrink_toward: ShrinkPrior = ShrinkPrior.BASE_RATE
    min_train_rows: int = Field(default=500, ge=50)

    @model_validator(mode="after")
    def _rolling_needs_length(self) -> WalkForwardConfig:
        if self.window is WindowKind.ROLLING and self.train_days is None:
            raise ValueError("walk_forward.train_days is required when walk_forward.window is 'rolling'")
        return self


class ClassifierConfig(_Strict):
    n_estimators: int = Field(default=400, ge=1)
    learning_rate: float = Field(default=0.03, gt=0, le=1)
    max_depth: int = Field(default=3, ge=1, le=12)
    min_child_weight: float = Field(default=20.0, ge=0)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    reg_lambda: float = Field(default=5.0, ge=0)
    reg_alpha: float = Field(default=0.0, ge=0)
    max_bin: int = Field(default=128, ge=16)
    early_stopping_rounds: int = Field(default=40, ge=1)
    n_jobs: int = Field(default=2, ge=1)
    seed: int = 0


class QuantileConfig(_Strict):
    alphas: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9])
    n_estimators: int = Field(default=150, ge=1)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    max_depth: int = Field(default=3, ge=1, le=12)
    min_child_weight: float = Field(default=20.0, ge=0)
    subsample: float = Field(default=0.8, gt=0, le=1)
    reg_lambda: float = Field(default=5.0, ge=0)
    max_bin: int = Field(default=128, ge=16)

    @model_validator(mode="after")
    def _alphas_inside_unit_interval(self) -> QuantileConfig:
        if not self.alphas or any(not 0 < alpha < 1 for alpha in self.alphas):
            raise ValueError("quantile.alphas must be a non-empty list of values strictly between 0 and 1")
        if sorted(set(self.alphas)) != self.alphas:
            raise ValueError("quantile.alphas must be increasing and distinct")
        return self


class BootstrapConfig(_Strict):
    # Block bootstrap by date: days are resampled in blocks of consecutive days, all coins of a day
    # together, because returns are correlated across coins and (for H > 1) across days.
    method: Literal["block"] = "block"
    block_days: int = Field(default=30, ge=1)
    n_resamples: int = Field(default=400, ge=10)
    confidence: float = Field(default=0.9, gt=0.5, lt=1)
    seed: int = 0


class EvaluationConfig(_Strict):
    ece_bins: int = Field(default=10, ge=2, le=50)
    bootstrap: BootstrapConfig = BootstrapConfig()


class PromotionMetric(StrEnum):
    BRIER = "brier"
    LOG_LOSS = "log_loss"
    ECE = "ece"
    AUC = "auc"

    @property
    def higher_is_better(self) -> bool:
        return self is PromotionMetric.AUC


class PromotionConfig(_Strict):
    metric: PromotionMetric = PromotionMetric.BRIER
    # The challenger must beat the champion (or, for the first model, the base-rate baseline) by
    # at least this much on the metric, on the same evaluation rows.
    margin: float = Field(default=0.0005, ge=0)
    # Fewer common evaluation rows than this and no comparison is trusted (nothing is promoted).
    min_common_rows: int = Field(default=200, ge=1)


class ExperimentConfig(_Strict):
    """One declared experiment."""

    name: str = Field(min_length=1)
    description: str = ""
    horizon_days: int = Field(ge=1, le=90)
    # Feature columns to use (None: every column in ``features.FEATURE_COLUMNS``).
    features: list[str] | None = None
    registered_model: str | None = None
    data: DataConfig = DataConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    quantile: QuantileConfig = QuantileConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    promotion: PromotionConfig = PromotionConfig()

    @property
    def gap_days(self) -> int:
        """The purge gap actually applied: never shorter than the horizon."""
        return max(self.walk_forward.gap_days, self.horizon_days)

    @property
    def model_name(self) -> str:
        """The registered model this experiment's models go to."""
        return self.registered_model or registered_model_name(self.horizon_days)

    def with_train_end(self, train_end: date | None) -> ExperimentConfig:
        """The same experiment with a different training cut-off (None keeps the declared one)."""
        if train_end is None:
            return self
        return self.model_copy(update={"data": self.data.model_copy(update={"train_end": train_end})})

    def flat_params(self) -> dict[str, str]:
        """The config as flat ``section.key -> value`` strings, for MLflow params."""
        return {key: str(value) for key, value in _flatten(self.model_dump(mode="json")).items()}


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            flat.update(_flatten(item, f"{name}."))
        else:
            flat[name] = item
    return flat


def registered_model_name(horizon_days: int) -> str:
    """The registry name of a horizon's direction model, e.g. ``khalsi-direction-1d``."""
    return f"khalsi-direction-{horizon_days}d"


def load_config(path: Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file (a clear error naming the file otherwise)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read experiment config ({error})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment config must be a YAML mapping")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: invalid experiment config:\n{error}") from error


def default_config_path(horizon_days: int) -> Path:
    """The bundled default config of a horizon (``training/configs/direction_<H>d.yaml``)."""
    path = CONFIG_DIR / f"direction_{horizon_days}d.yaml"
    if not path.exists():
        known = ", ".join(f"{h}d" for h in HORIZONS)
        raise ConfigError(f"no default config for horizon {horizon_days}d (defaults exist for {known})")
    return path


def default_config(horizon_days: int) -> ExperimentConfig:
    """The default experiment of a horizon."""
    return load_config(default_config_path(horizon_days))


def config_to_yaml(config: ExperimentConfig) -> str:
    """The config as YAML (what is logged with the run)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
