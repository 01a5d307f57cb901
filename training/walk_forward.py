"""Walk-forward training and evaluation of the pooled (all coins) direction model.

Time is cut into test windows of ``refit_every_days`` days from ``first_test_start``. For each
window a fresh model is fitted on the rows strictly before ``test_start - gap`` (gap >= horizon,
so every training label's future price lies before the test window), then scores the window.
Inside a training window, time order is kept everywhere:

- early stopping uses the last ``early_stopping_fraction`` of the rows, the model being fitted on
  the rows before that tail minus the gap;
- calibration is fitted out of fold: the last ``calibration_fraction`` of the rows is cut into
  ``calibration_folds`` chunks, each predicted by a model (with the early-stopped tree count)
  trained only on rows before the chunk minus the gap; the calibrator learns from those
  predictions, and the fold's classifier is then refitted on the whole training window (the
  scheme of scikit-learn's ``CalibratedClassifierCV(ensemble=False)``, made time-ordered);
  ``calibration: shrink`` fits one weight the same way (log-odds shrinkage toward the training
  base rate, or toward even odds with that base rate taken out, each chunk judged against the base
  rate its own model knew), ``calibration: none``
  fits nothing and serves the raw probability;
- the quantile model (one multi-quantile XGBoost, ``reg:quantileerror``) and the baselines are
  fitted on the whole training window.

No test row is ever used to fit, stop or calibrate anything.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import xgboost as xgb

from training.baselines import FittedBaselines, fit_baselines
from training.config import CalibrationMethod, ExperimentConfig, ShrinkPrior, WindowKind
from training.labels import FWD_RETURN, LABEL, TRAILING_RETURN
from training.model import Calibrator, DirectionModel, fit_calibrator

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
EPOCH = date(1970, 1, 1)


def day_number(value: date) -> int:
    """Days since 1970-01-01 (the integer time axis used inside training)."""
    return (value - EPOCH).days


def day_date(number: int) -> date:
    """The date of a day number."""
    return date.fromordinal(EPOCH.toordinal() + int(number))


@dataclass(frozen=True)
class Dataset:
    """Labelled rows as arrays, sorted by day (then coin)."""

    coin_id: npt.NDArray[np.str_]
    day: IntArray
    features: FloatArray
    y: FloatArray
    fwd_return: FloatArray
    trailing_return: FloatArray
    price: FloatArray
    feature_names: list[str]

    def __len__(self) -> int:
        return len(self.day)

    def subset(self, mask: BoolArray) -> Dataset:
        """The rows where ``mask`` is true."""
        return Dataset(
            coin_id=self.coin_id[mask],
            day=self.day[mask],
            features=self.features[mask],
            y=self.y[mask],
            fwd_return=self.fwd_return[mask],
            trailing_return=self.trailing_return[mask],
            price=self.price[mask],
            feature_names=self.feature_names,
        )


def dataset_from_frame(frame: pl.DataFrame, feature_names: list[str]) -> Dataset:
    """Arrays from a labelled frame (see :func:`training.data.labelled_frame`)."""
    ordered = frame.sort("timestamp", "coin_id")
    return Dataset(
        coin_id=ordered.get_column("coin_id").to_numpy().astype(np.str_),
        day=ordered.get_column("timestamp").dt.epoch("d").to_numpy().astype(np.int64),
        features=ordered.select(pl.col(feature_names).cast(pl.Float64)).to_numpy().astype(np.float64),
        y=ordered.get_column(LABEL).cast(pl.Float64).to_numpy(),
        fwd_return=ordered.get_column(FWD_RETURN).to_numpy().astype(np.float64),
        trailing_return=ordered.get_column(TRAILING_RETURN).cast(pl.Float64).fill_null(np.nan).to_numpy(),
        price=ordered.get_column("price").cast(pl.Float64).to_numpy(),
        feature_names=list(feature_names),
    )


class NotEnoughDataError(ValueError):
    """A training window too small to fit, stop early and calibrate."""


@dataclass
class FitResult:
    """A model fitted on one training window and what it learned on the way."""

    model: DirectionModel
    baselines: FittedBaselines
    n_trees: int
    early_stopping_logloss: float
    n_rows: int
    n_calibration_rows: int
    first_day: date
    last_day: date


def _classifier_params(config: ExperimentConfig) -> dict[str, Any]:
    c = config.classifier
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "learning_rate": c.learning_rate,
        "max_depth": c.max_depth,
        "min_child_weight": c.min_child_weight,
        "subsample": c.subsample,
        "colsample_bytree": c.colsample_bytree,
        "reg_lambda": c.reg_lambda,
        "reg_alpha": c.reg_alpha,
        "max_bin": c.max_bin,
        "nthread": c.n_jobs,
        "seed": c.seed,
    }


def _quantile_params(config: ExperimentConfig) -> dict[str, Any]:
    q = config.quantile
    return {
        "objective": "reg:quantileerror",
        "quantile_alpha": np.asarray(q.alphas),
        "tree_method": "hist",
        "learning_rate": q.learning_rate,
        "max_depth": q.max_depth,
        "min_child_weight": q.min_child_weight,
        "subsample": q.subsample,
        "reg_lambda": q.reg_lambda,
        "max_bin": q.max_bin,
        "nthread": config.classifier.n_jobs,
        "seed": config.classifier.seed,
    }


def _matrix(data: Dataset, label: FloatArray | None = None) -> xgb.DMatrix:
    return xgb.DMatrix(data.features, label=label, feature_names=data.feature_names, nthread=-1)


def _start_of_tail(days: IntArray, fraction: float) -> int:
    """The first day of the time-ordered tail holding about ``fraction`` of the rows."""
    return int(days[min(len(days) - 1, int(len(days) * (1 - fraction)))])


def _fit_classifier(config: ExperimentConfig, train: Dataset, rounds: int) -> xgb.Booster:
    return xgb.train(_classifier_params(config), _matrix(train, train.y), num_boost_round=rounds)


def _predict(booster: xgb.Booster, data: Dataset) -> FloatArray:
    return np.asarray(booster.predict(_matrix(data)), dtype=np.float64)


def _check_rows(what: str, data: Dataset, minimum: int) -> None:
    if len(data) < minimum or len(np.unique(data.y)) < 2:
        raise NotEnoughDataError(
            f"{what}: {len(data)} rows (need at least {minimum} with both outcomes); "
            "start the test windows later or lower walk_forward.min_train_rows"
        )


# Candidate shrink weights: a fine grid is exact enough for one parameter and never fails to converge.
SHRINK_GRID = np.linspace(0.0, 1.0, 101)


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, 1e-9, 1 - 1e-9)
    result: FloatArray = np.log(q / (1 - q))
    return result


def fit_shrink_weight(
    raw: FloatArray, y: FloatArray, base_rate: FloatArray, toward: ShrinkPrior = ShrinkPrior.BASE_RATE
) -> float:
    """The weight w in [0, 1] minimising the log loss of the shrink map (see ``shrink_logit``)."""
    if len(raw) < 20 or len(np.unique(y)) < 2:
        raise ValueError(f"too few out-of-fold predictions to fit a shrink weight ({len(raw)} rows)")
    raw_logit, base_logit = _logit(raw), _logit(base_rate)
    losses = []
    for weight in SHRINK_GRID:
        p = np.clip(1.0 / (1.0 + np.exp(-shrink_logit(weight, raw_logit, base_logit, toward))), 1e-6, 1 - 1e-6)
        losses.append(-float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))))
    return float(SHRINK_GRID[int(np.argmin(losses))])


def shrink_logit(weight: float, raw_logit: FloatArray, base_logit: FloatArray, toward: ShrinkPrior) -> FloatArray:
    """The shrunk log-odds: toward the base rate, or toward even odds with the base rate taken out."""
    if toward is ShrinkPrior.EVEN:
        centred: FloatArray = weight * (raw_logit - base_logit)
        return centred
    shrunk: FloatArray = weight * raw_logit + (1 - weight) * base_logit
    return shrunk


def shrink_calibrator(weight: float, base_rate: float, toward: ShrinkPrior = ShrinkPrior.BASE_RATE) -> Calibrator:
    """The shrink map as a log-odds-linear calibrator, sigmoid(a * logit(raw) + b)."""
    # Calibrator.apply maps every non-isotonic method through sigmoid(a * logit(raw) + b), so the
    # served model (DirectionModel.probability) applies exactly this map:
    # toward the base rate a = w, b = (1 - w) * logit(base_rate); toward even odds b = -w * logit(base_rate).
    base_logit = float(_logit(np.asarray([base_rate]))[0])
    intercept = -weight * base_logit if toward is ShrinkPrior.EVEN else (1 - weight) * base_logit
    return Calibrator(method=CalibrationMethod.SHRINK, a=weight, b=intercept)


def identity_calibrator() -> Calibrator:
    """The map of ``calibration: none``: the raw probability (clipped like every calibrated one)."""
    return Calibrator(method=CalibrationMethod.NONE, a=1.0, b=0.0)


def _fit_out_of_fold_calibrator(train: Dataset, config: ExperimentConfig, n_trees: int) -> tuple[Calibrator, int]:
    """The calibrator learned from out-of-fold predictions of the training tail, and their row count."""
    wf, gap, days = config.walk_forward, config.gap_days, train.day
    calibration_start = int(np.searchsorted(days, _start_of_tail(days, wf.calibration_fraction)))
    edges = np.linspace(calibration_start, len(days), wf.calibration_folds + 1).astype(int)
    # Chunks are whole days: [first day, next chunk's first day), so no row lands in two chunks.
    bounds = [int(days[edge]) for edge in edges[:-1]] + [int(days[-1]) + 1]
    oof_raw: list[FloatArray] = []
    oof_y: list[FloatArray] = []
    # The base rate each chunk's model knew (its own training rows): what shrinkage pulls toward or takes out.
    oof_prior: list[FloatArray] = []
    for chunk_first, chunk_stop in itertools.pairwise(bounds):
        if chunk_stop <= chunk_first:
            continue
        chunk = train.subset((days >= chunk_first) & (days < chunk_stop))
        past = train.subset(days < chunk_first - gap)
        if len(past) < wf.min_train_rows // 2 or len(np.unique(past.y)) < 2:
            continue
        oof_raw.append(_predict(_fit_classifier(config, past, n_trees), chunk))
        oof_y.append(chunk.y)
        oof_prior.append(np.full(len(chunk), float(np.mean(past.y))))
    if not oof_raw:
        raise NotEnoughDataError("no calibration chunk has enough earlier rows to train on")
    raw, y = np.concatenate(oof_raw), np.concatenate(oof_y)
    if wf.calibration is CalibrationMethod.SHRINK:
        weight = fit_shrink_weight(raw, y, np.concatenate(oof_prior), wf.shrink_toward)
        return shrink_calibrator(weight, float(np.mean(train.y)), wf.shrink_toward), len(y)
    return fit_calibrator(wf.calibration, raw, y), len(y)


def fit_direction_model(train: Dataset, config: ExperimentConfig) -> FitResult:
    """Fit classifier (early-stopped), out-of-fold calibrator, quantile model and baselines."""
    wf, gap = config.walk_forward, config.gap_days
    _check_rows("training window", train, wf.min_train_rows)
    days = train.day

    # 1. Early stopping on the time-ordered tail, fitted on what precedes it minus the gap.
    tail_start = _start_of_tail(days, wf.early_stopping_fraction)
    fit_part = train.subset(days < tail_start - gap)
    tail = train.subset(days >= tail_start)
    _check_rows("early-stopping fit part", fit_part, wf.min_train_rows // 2)
    evals_result: dict[str, dict[str, list[float]]] = {}
    stopped = xgb.train(
        _classifier_params(config),
        _matrix(fit_part, fit_part.y),
        num_boost_round=config.classifier.n_estimators,
        evals=[(_matrix(tail, tail.y), "tail")],
        early_stopping_rounds=config.classifier.early_stopping_rounds,
        evals_result=evals_result,
        verbose_eval=False,
    )
    n_trees = int(stopped.best_iteration) + 1
    tail_logloss = float(evals_result["tail"]["logloss"][n_trees - 1])

    # 2. Out-of-fold predictions for the calibrator, each chunk predicted from its past only.
    if wf.calibration is CalibrationMethod.NONE:
        calibrator, n_calibration_rows = identity_calibrator(), 0
    else:
        calibrator, n_calibration_rows = _fit_out_of_fold_calibrator(train, config, n_trees)

    # 3. The fold's models on the whole training window.
    classifier = _fit_classifier(config, train, n_trees)
    quantile_model = xgb.train(
        _quantile_params(config),
        xgb.DMatrix(train.features, label=train.fwd_return, feature_names=train.feature_names),
        num_boost_round=config.quantile.n_estimators,
    )
    model = DirectionModel(
        horizon_days=config.horizon_days,
        feature_names=train.feature_names,
        classifier=classifier,
        calibrator=calibrator,
        quantile_model=quantile_model,
        alphas=list(config.quantile.alphas),
    )
    return FitResult(
        model=model,
        baselines=fit_baselines(train.y, train.trailing_return),
        n_trees=n_trees,
        early_stopping_logloss=tail_logloss,
        n_rows=len(train),
        n_calibration_rows=n_calibration_rows,
        first_day=day_date(int(days[0])),
        last_day=day_date(int(days[-1])),
    )


@dataclass(frozen=True)
class Fold:
    """One walk-forward step: where it trained and what it scored."""

    index: int
    train_first: date
    train_last: date
    test_first: date
    test_last: date
    n_train: int
    n_test: int
    n_trees: int
    base_rate: float

    def as_dict(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, date) else value for key, value in self.__dict__.items()}


@dataclass
class WalkForwardResult:
    """All out-of-sample predictions of a walk-forward run, and its folds."""

    folds: list[Fold]
    predictions: pl.DataFrame
    skipped: list[str] = field(default_factory=list)


def training_mask(day: IntArray, test_start: int, config: ExperimentConfig) -> BoolArray:
    """Rows a fold testing from ``test_start`` may train on (before the purge gap)."""
    mask = day < test_start - config.gap_days
    if config.walk_forward.window is WindowKind.ROLLING:
        assert config.walk_forward.train_days is not None
        mask &= day >= test_start - config.gap_days - config.walk_forward.train_days
    result: BoolArray = mask
    return result


def prediction_frame(fit: FitResult, test: Dataset, *, fold: int) -> pl.DataFrame:
    """A fold's out-of-sample rows: labels, model and baseline probabilities, return quantiles."""
    raw = fit.model.raw_probability(test.features)
    quantiles = fit.model.return_quantiles(test.features)
    baselines = fit.baselines.predict(test.trailing_return)
    columns: dict[str, Any] = {
        "coin_id": test.coin_id.tolist(),
        "timestamp": pl.Series(test.day).cast(pl.Int32).cast(pl.Date).cast(pl.Datetime("us", "UTC")),
        "fold": np.full(len(test), fold, dtype=np.int64),
        "price": test.price,
        "y": test.y,
        "fwd_return": test.fwd_return,
        "trailing_return": test.trailing_return,
        "p_raw": raw,
        "p_model": fit.model.calibrator.apply(raw),
        **{f"p_{name}": values for name, values in baselines.items()},
    }
    for i, alpha in enumerate(fit.model.alphas):
        columns[f"q{round(alpha * 100):02d}"] = quantiles[:, i]
    return pl.DataFrame(columns)


def walk_forward(
    data: Dataset, config: ExperimentConfig, *, progress: Callable[[str], None] | None = None
) -> WalkForwardResult:
    """Fit and score every walk-forward fold; the concatenated predictions are all out of sample."""
    wf = config.walk_forward
    day = data.day
    last_day = int(day.max())
    if wf.test_end is not None:
        last_day = min(last_day, day_number(wf.test_end))
    start = day_number(wf.first_test_start)
    folds: list[Fold] = []
    frames: list[pl.DataFrame] = []
    skipped: list[str] = []
    for test_start in range(start, last_day + 1, wf.refit_every_days):
        test_end = min(test_start + wf.refit_every_days - 1, last_day)
        test_mask = (day >= test_start) & (day <= test_end)
        if not test_mask.any():
            continue
        train = data.subset(training_mask(day, test_start, config))
        # The purge gap, checked rather than trusted: every training label is known before the test.
        if len(train) and int(train.day.max()) + config.horizon_days >= test_start:
            raise AssertionError("a training label overlaps the test window")
        try:
            fit = fit_direction_model(train, config)
        except NotEnoughDataError as error:
            skipped.append(f"{day_date(test_start)}: {error}")
            continue
        test = data.subset(test_mask)
        fold = Fold(
            index=len(folds),
            train_first=fit.first_day,
            train_last=fit.last_day,
            test_first=day_date(int(test.day.min())),
            test_last=day_date(int(test.day.max())),
            n_train=fit.n_rows,
            n_test=len(test),
            n_trees=fit.n_trees,
            base_rate=fit.baselines.base_rate,
        )
        folds.append(fold)
        frames.append(prediction_frame(fit, test, fold=fold.index))
        if progress is not None:
            progress(
                f"fold {fold.index}: train {fold.train_first}..{fold.train_last} ({fold.n_train} rows, "
                f"{fold.n_trees} trees) -> test {fold.test_first}..{fold.test_last} ({fold.n_test} rows)"
            )
    if not folds:
        detail = "; ".join(skipped) or "no test window inside the data"
        raise NotEnoughDataError(f"walk-forward produced no fold ({detail})")
    return WalkForwardResult(folds=folds, predictions=pl.concat(frames), skipped=skipped)
