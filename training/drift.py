"""Drift of the serving champion's inputs and outputs, measured with Evidently.

For one horizon, the champion (``models:/khalsi-direction-<H>d@champion``) is compared with what
it answers today:

- **reference**: the feature rows its final model was fitted on. The MLflow run that produced the
  version records that window (``khalsi.final_model_first_day`` / ``_last_day``) and the coins it
  read (``data/window.json``); the rows are rebuilt from the lake by the training code
  (:func:`features.build_feature_frame`), which is point-in-time, so later ingests do not change them;
- **current**: the last ``current_days`` days of feature rows up to ``as_of`` (default: the newest
  day in the lake), every coin in the lake. The online store keeps only each coin's latest vector;
  these rows are exactly the vectors it published on those days (same code, same inputs).

Per feature, the test is Evidently's ``wasserstein``: the Wasserstein-1 distance between the two
distributions in units of the reference's standard deviation. Its usual fixed threshold (0.1) is
meaningless for daily market features: they are autocorrelated, so an N-day window is one market
regime: on the bundled 2017-2019 data of five coins, 30-day windows taken *inside* the training
window already had 75-90% of their features past 0.1 (median distance 0.3-0.4), so every check
would say "drift". Each feature's threshold is therefore
calibrated on the reference itself: the ``window_quantile`` (95%) of the same distance between the
reference and its own N-day windows (one every ``calibration_stride_days``), never below
``min_feature_threshold``. A feature has drifted when today's window is further from the training
data than 95% of the training data's own windows were. The champion's predicted probability on
both windows is tested the same way. What this does not flag: a shift the training data had
already seen. Against a 2017-2019 reference (the 2017-18 bubble included), late 2019 with its
daily returns doubled stays within the training windows' range; quadrupled, it is drift.

Verdict (every threshold is a field of :class:`DriftThresholds`):

- ``drift`` when the share of drifted features reaches ``drift_share``;
- ``warning`` when it reaches ``warning_share``, when the predicted probabilities drifted, or when
  the stored predictions whose label is known by ``as_of`` score a Brier worse than the model's
  walk-forward figure by more than ``brier_margin`` (on at least ``min_matured_predictions``);
- ``ok`` otherwise.

The Evidently HTML report, Evidently's own JSON and this module's JSON summary are written under
``KHALSI_HOME/reports/drift/<timestamp>/<H>d/``.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import polars as pl
import sqlalchemy as sa
from mlflow.exceptions import MlflowException

from features import FEATURE_COLUMNS, build_feature_frame, check_market
from khalsi.db.engine import create_sync_engine
from khalsi.db.models import Prediction
from khalsi.settings import Settings
from training.config import registered_model_name
from training.data import read_lake_inputs
from training.labels import LABEL, add_labels
from training.metrics import brier, log_loss
from training.model import DirectionModel
from training.registry import (
    TAG_PREFIX,
    champion_version,
    configure_mlflow,
    load_registered_model,
    run_config,
)

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

FloatArray = npt.NDArray[np.float64]

DRIFT_METHOD = "wasserstein"
PREDICTION_COLUMN = "p_up"
REPORTS_DIR = ("reports", "drift")
REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
EVIDENTLY_JSON = "evidently.json"
HISTOGRAM_BINS = 10
# Evidently's own floor for the reference's standard deviation in the normed distance.
MIN_NORM = 0.001


class Verdict(StrEnum):
    OK = "ok"
    WARNING = "warning"
    DRIFT = "drift"


class DriftInputError(RuntimeError):
    """There is nothing to compare: no reference rows, no current rows, or no recorded training window."""


@dataclass(frozen=True)
class DriftThresholds:
    """The declared rules of the verdict (see the module docstring)."""

    window_quantile: float = 0.95
    min_feature_threshold: float = 0.1
    calibration_stride_days: int = 7
    max_calibration_windows: int = 60
    # Fewer reference windows than this and the thresholds fall back to the floor (said in the reasons).
    min_calibration_windows: int = 10
    # At the 95th percentile about 5% of the features of an ordinary window pass their threshold by
    # chance: a warning at twice that, drift at five times (bundled data: 0-5% for windows inside the
    # training period, 22% at the 2017 bubble's peak, 30% with daily returns quadrupled).
    warning_share: float = 0.10
    drift_share: float = 0.25
    min_matured_predictions: int = 30
    brier_margin: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.window_quantile < 1:
            raise ValueError(f"window_quantile must be in (0, 1), got {self.window_quantile}")
        if not 0 < self.warning_share <= self.drift_share <= 1:
            raise ValueError(
                f"need 0 < warning_share <= drift_share <= 1, got {self.warning_share}, {self.drift_share}"
            )


# -- the champion and its training window ------------------------------------------------------------


@dataclass(frozen=True)
class ChampionReference:
    """The serving champion of a horizon and what it was trained on."""

    horizon_days: int
    model_name: str
    version: str
    run_id: str
    model: DirectionModel
    first_day: date
    last_day: date
    coins: tuple[str, ...] | None
    walk_forward: dict[str, float]


def _day(value: str) -> date:
    return date.fromisoformat(value[:10])


def _training_coins(client: Any, run_id: str) -> tuple[str, ...] | None:
    """The coins the run read (its data window), else its config's, else None (all)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            window = json.loads(Path(client.download_artifacts(run_id, "data/window.json", tmp)).read_text())
        except (OSError, ValueError, MlflowException):  # a run logged without it
            window = {}
    coins = window.get("coins")
    if coins:
        return tuple(str(c) for c in coins)
    configured = run_config(client, run_id).data.coins
    return tuple(configured) if configured else None


def find_champion_reference(settings: Settings, horizon_days: int) -> ChampionReference | None:
    """The horizon's champion, its training window and walk-forward figures; None when there is no champion."""
    client = configure_mlflow(settings)
    name = registered_model_name(horizon_days)
    version = champion_version(client, name)
    if version is None:
        return None
    run_id = str(version.run_id or dict(version.tags).get(f"{TAG_PREFIX}run_id", ""))
    if not run_id:
        raise DriftInputError(f"{name} v{version.version} has no source run: its training window is unknown")
    run = client.get_run(run_id)
    tags = run.data.tags
    first, last = tags.get(f"{TAG_PREFIX}final_model_first_day"), tags.get(f"{TAG_PREFIX}final_model_last_day")
    if not first or not last:
        raise DriftInputError(
            f"{name} v{version.version} (run {run_id}) records no training window "
            f"({TAG_PREFIX}final_model_first_day/_last_day): it was not logged by a training run"
        )
    model, _ = load_registered_model(settings, model_name=name, version=str(version.version))
    if model.horizon_days != horizon_days:
        raise DriftInputError(f"{name} v{version.version} was trained for {model.horizon_days}d, not {horizon_days}d")
    metrics = run.data.metrics
    return ChampionReference(
        horizon_days=horizon_days,
        model_name=name,
        version=str(version.version),
        run_id=run_id,
        model=model,
        first_day=_day(first),
        last_day=_day(last),
        coins=_training_coins(client, run_id),
        walk_forward={key: float(metrics[key]) for key in ("brier", "log_loss", "n_predictions") if key in metrics},
    )


# -- the two windows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureWindows:
    """Reference and current feature rows, and the market rows known at ``as_of`` (for labels)."""

    reference: pl.DataFrame
    current: pl.DataFrame
    market: pl.DataFrame
    as_of: date
    current_days: int

    @property
    def current_start(self) -> datetime:
        """The first instant of the current window."""
        return _midnight(self.as_of) - timedelta(days=self.current_days - 1)

    @property
    def current_end(self) -> datetime:
        """The last day of the current window (00:00 UTC, as market rows are stamped)."""
        return _midnight(self.as_of)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _between(start: datetime, end: datetime) -> pl.Expr:
    utc = pl.Datetime("us", "UTC")
    return (pl.col("timestamp") >= pl.lit(start).cast(utc)) & (pl.col("timestamp") <= pl.lit(end).cast(utc))


def read_feature_windows(
    settings: Settings, champion: ChampionReference, *, current_days: int = 30, as_of: date | None = None
) -> FeatureWindows:
    """Build the champion's reference rows and the last ``current_days`` days of rows from the lake."""
    if current_days < 1:
        raise ValueError(f"current_days must be at least 1, got {current_days}")
    # Nothing after as_of is read: a report "as of" a past day sees what the platform saw then.
    inputs = read_lake_inputs(settings.lake_dir, train_end=as_of)
    if inputs.market.height == 0:
        raise DriftInputError(f"the lake at {settings.lake_dir} holds no market data up to {as_of or 'now'}")
    check_market(inputs.market.lazy())
    frame = build_feature_frame(inputs.market.lazy(), inputs.fear_greed.lazy(), inputs.social_daily.lazy()).collect()
    newest = frame.get_column("timestamp").max()
    assert isinstance(newest, datetime)
    end_day = as_of or newest.date()
    current = frame.filter(_between(_midnight(end_day) - timedelta(days=current_days - 1), _midnight(end_day)))
    reference = frame.filter(_between(_midnight(champion.first_day), _midnight(champion.last_day)))
    if champion.coins is not None:
        reference = reference.filter(pl.col("coin_id").is_in(list(champion.coins)))
    if reference.height == 0:
        raise DriftInputError(
            f"the lake has no rows of {champion.model_name} v{champion.version}'s training window "
            f"{champion.first_day}..{champion.last_day}"
        )
    if current.height == 0:
        raise DriftInputError(f"the lake has no feature rows in the {current_days} days up to {end_day}")
    return FeatureWindows(
        reference=reference,
        current=current,
        market=inputs.market.select("coin_id", "timestamp", "price"),
        as_of=end_day,
        current_days=current_days,
    )


# -- the per-feature test and its calibration --------------------------------------------------------


def _finite(values: FloatArray) -> FloatArray:
    return values[np.isfinite(values)]


def normed_wasserstein(reference: FloatArray, current: FloatArray) -> float:
    """Evidently's ``wasserstein`` drift score: W1 / max(std(reference), 0.001), missing values dropped."""
    ref, cur = _finite(reference), _finite(current)
    if ref.size == 0 or cur.size == 0:
        return math.nan
    return _w1_presorted(np.sort(ref), cur) / max(float(np.std(ref)), MIN_NORM)


def _w1_presorted(ref_sorted: FloatArray, current: FloatArray) -> float:
    """Wasserstein-1 distance (the integral of |F_ref - F_cur|), SciPy's formula, reference already sorted.

    The calibration scores dozens of windows against the same long reference: sorting it once made
    each score about five times cheaper than ``scipy.stats.wasserstein_distance`` (which Evidently
    calls) on 40,000 rows. The stable sort of two sorted runs is a merge.
    """
    cur_sorted = np.sort(current)
    merged = np.sort(np.concatenate([ref_sorted, cur_sorted]), kind="stable")
    points = merged[:-1]
    ref_cdf = np.searchsorted(ref_sorted, points, side="right") / ref_sorted.size
    cur_cdf = np.searchsorted(cur_sorted, points, side="right") / cur_sorted.size
    return float(np.sum(np.abs(ref_cdf - cur_cdf) * np.diff(merged)))


def _column(frame: pl.DataFrame, name: str) -> FloatArray:
    return frame.get_column(name).cast(pl.Float64).fill_null(np.nan).to_numpy().astype(np.float64)


def calibration_windows(
    reference: pl.DataFrame, *, days: int, thresholds: DriftThresholds
) -> list[npt.NDArray[np.bool_]]:
    """Row masks of the reference's own ``days``-day windows, one every stride, evenly thinned to the cap."""
    stamps = reference.get_column("timestamp")
    first, last = stamps.min(), stamps.max()
    assert isinstance(first, datetime)
    assert isinstance(last, datetime)
    ends: list[datetime] = []
    end = first + timedelta(days=days - 1)
    while end <= last:
        ends.append(end)
        end += timedelta(days=thresholds.calibration_stride_days)
    if len(ends) > thresholds.max_calibration_windows:
        picks = np.linspace(0, len(ends) - 1, thresholds.max_calibration_windows).round().astype(int)
        ends = [ends[i] for i in sorted(set(picks.tolist()))]
    # Naive UTC microseconds on both sides of the comparison.
    naive = stamps.dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    masks: list[npt.NDArray[np.bool_]] = []
    for window_end in ends:
        start = np.datetime64((window_end - timedelta(days=days - 1)).replace(tzinfo=None), "us")
        stop = np.datetime64(window_end.replace(tzinfo=None), "us")
        masks.append((naive >= start) & (naive <= stop))
    return masks


def calibrated_thresholds(
    reference: pl.DataFrame, columns: list[str], *, days: int, thresholds: DriftThresholds
) -> tuple[dict[str, float], int]:
    """Each column's threshold: the quantile of its score over the reference's own windows (floored).

    A window is scored against the whole reference, itself included: with a reference many windows
    long that inflates nothing measurably, and it is the distance the current window is held to.
    """
    masks = calibration_windows(reference, days=days, thresholds=thresholds)
    floor = thresholds.min_feature_threshold
    if len(masks) < thresholds.min_calibration_windows:
        return dict.fromkeys(columns, floor), len(masks)
    out: dict[str, float] = {}
    for name in columns:
        values = _column(reference, name)
        finite = np.isfinite(values)
        ref_sorted = np.sort(values[finite])
        norm = max(float(np.std(ref_sorted)), MIN_NORM)
        scores = [_w1_presorted(ref_sorted, values[mask & finite]) / norm for mask in masks if (mask & finite).any()]
        quantile = float(np.quantile(scores, thresholds.window_quantile)) if scores else floor
        out[name] = max(floor, quantile)
    return out, len(masks)


# -- the summary -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSummary:
    first: str
    last: str
    rows: int
    coins: list[str]


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    score: float
    threshold: float
    drifted: bool
    reference_mean: float
    current_mean: float


@dataclass(frozen=True)
class PredictionDrift:
    """The champion's probability of "up" on the reference rows vs the current rows."""

    score: float
    threshold: float
    drifted: bool
    reference_mean: float
    current_mean: float
    reference_quantiles: dict[str, float]
    current_quantiles: dict[str, float]


@dataclass(frozen=True)
class StoredPredictionCheck:
    """The ``predictions`` rows of this champion in the current window, and how the matured ones scored."""

    count: int
    mean_probability_up: float | None
    histogram: list[int]
    matured: int
    realised_brier: float | None
    realised_log_loss: float | None
    walk_forward_brier: float | None
    walk_forward_log_loss: float | None
    degraded: bool


@dataclass(frozen=True)
class DriftSummary:
    """What one drift check found, and the verdict with its reasons."""

    horizon_days: int
    model_name: str
    model_version: str
    run_id: str
    generated_at: str
    as_of: str
    current_days: int
    method: str
    verdict: Verdict
    reasons: list[str]
    thresholds: DriftThresholds
    calibration_windows: int
    reference: WindowSummary
    current: WindowSummary
    features: list[FeatureDrift]
    excluded_features: dict[str, str]
    drifted_features: list[str]
    drifted_share: float
    prediction: PredictionDrift
    stored_predictions: StoredPredictionCheck
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (no NaN: a missing figure is null)."""
        safe: dict[str, Any] = _json_safe(asdict(self))
        return safe


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _window_summary(frame: pl.DataFrame) -> WindowSummary:
    stamps = frame.get_column("timestamp")
    first, last = stamps.min(), stamps.max()
    assert isinstance(first, datetime)
    assert isinstance(last, datetime)
    return WindowSummary(
        first=first.date().isoformat(),
        last=last.date().isoformat(),
        rows=frame.height,
        coins=sorted(frame.get_column("coin_id").unique().to_list()),
    )


def _quantiles(values: FloatArray) -> dict[str, float]:
    finite = _finite(values)
    if finite.size == 0:
        return {}
    return {f"q{int(q * 100):02d}": float(np.quantile(finite, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}


def _mean(values: FloatArray) -> float:
    finite = _finite(values)
    return float(finite.mean()) if finite.size else math.nan


# -- stored predictions ------------------------------------------------------------------------------


def read_stored_predictions(settings: Settings, champion: ChampionReference) -> pl.DataFrame:
    """This champion version's stored predictions (coin_id, feature_timestamp in UTC, probability_up)."""
    schema = {"coin_id": pl.String(), "feature_timestamp": pl.Datetime("us", "UTC"), "probability_up": pl.Float64()}
    engine = create_sync_engine(settings)
    try:
        if not sa.inspect(engine).has_table(Prediction.__tablename__):
            return pl.DataFrame(schema=schema)
        query = sa.select(Prediction.coin_id, Prediction.feature_timestamp, Prediction.probability_up).where(
            Prediction.model_name == champion.model_name,
            Prediction.model_version == champion.version,
            Prediction.timeframe == f"{champion.horizon_days}d",
        )
        with engine.connect() as connection:
            rows = connection.execute(query).all()
    finally:
        engine.dispose()
    return pl.DataFrame(
        [
            (
                coin_id,
                stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC),
                None if probability is None else float(probability),
            )
            for coin_id, stamp, probability in rows
        ],
        schema=schema,
        orient="row",
    )


def check_stored_predictions(
    stored: pl.DataFrame, windows: FeatureWindows, champion: ChampionReference, thresholds: DriftThresholds
) -> StoredPredictionCheck:
    """Stored predictions of the current window; Brier and log-loss of those whose label was known at as_of."""
    in_window = stored.filter(
        pl.col("probability_up").is_not_null()
        & (pl.col("feature_timestamp") >= pl.lit(windows.current_start).cast(pl.Datetime("us", "UTC")))
        & (pl.col("feature_timestamp") <= pl.lit(windows.current_end).cast(pl.Datetime("us", "UTC")))
    )
    # The market rows stop at as_of, so a label whose day t + H is later is null: not yet matured.
    labels = (
        add_labels(windows.market.lazy(), champion.horizon_days)
        .select("coin_id", pl.col("timestamp").alias("feature_timestamp"), LABEL)
        .collect()
    )
    matured = in_window.join(labels, on=["coin_id", "feature_timestamp"], how="left").filter(
        pl.col(LABEL).is_not_null()
    )
    p_all = in_window.get_column("probability_up").to_numpy().astype(np.float64)
    histogram = np.histogram(p_all, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0].tolist() if p_all.size else []
    wf_brier, wf_log_loss = champion.walk_forward.get("brier"), champion.walk_forward.get("log_loss")
    realised_brier = realised_log_loss = None
    if matured.height:
        y = matured.get_column(LABEL).cast(pl.Float64).to_numpy()
        p = matured.get_column("probability_up").to_numpy().astype(np.float64)
        realised_brier, realised_log_loss = brier(y, p), log_loss(y, p)
    degraded = (
        matured.height >= thresholds.min_matured_predictions
        and realised_brier is not None
        and wf_brier is not None
        and realised_brier > wf_brier + thresholds.brier_margin
    )
    return StoredPredictionCheck(
        count=in_window.height,
        mean_probability_up=float(p_all.mean()) if p_all.size else None,
        histogram=[int(c) for c in histogram],
        matured=matured.height,
        realised_brier=realised_brier,
        realised_log_loss=realised_log_loss,
        walk_forward_brier=wf_brier,
        walk_forward_log_loss=wf_log_loss,
        degraded=degraded,
    )


# -- the comparison ----------------------------------------------------------------------------------


def _with_probability(frame: pl.DataFrame, model: DirectionModel) -> pl.DataFrame:
    matrix = frame.select([pl.col(n).cast(pl.Float64).fill_null(np.nan) for n in model.feature_names]).to_numpy()
    return frame.with_columns(pl.Series(PREDICTION_COLUMN, model.probability(matrix.astype(np.float64))))


def _evidently_report(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: list[str],
    limits: dict[str, float],
    drift_share: float,
) -> tuple[Snapshot, dict[str, float]]:
    """Evidently's drift of every column (features and prediction) and the drifted-features count.

    Columns are listed most drifted first (by the same score computed here), so the HTML opens on
    what moved. Evidently's scores are the ones returned.
    """
    # Imported here: Evidently takes seconds to import, and only this step needs it.
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    features = [c for c in columns if c != PREDICTION_COLUMN]
    ratio = {c: normed_wasserstein(_column(reference, c), _column(current, c)) / limits[c] for c in features}
    ordered = sorted(features, key=lambda c: -ratio[c])
    drift_by_column = {
        name: ValueDrift(column=name, method=DRIFT_METHOD, threshold=limits[name])
        for name in [PREDICTION_COLUMN, *ordered]
    }
    count = DriftedColumnsCount(
        columns=features, method=DRIFT_METHOD, per_column_threshold=limits, drift_share=drift_share
    )
    metrics = [drift_by_column[PREDICTION_COLUMN], count, *(drift_by_column[c] for c in ordered)]
    definition = DataDefinition(numerical_columns=columns)
    snapshot = Report(metrics).run(
        Dataset.from_pandas(current.select(columns).to_pandas(), data_definition=definition),
        Dataset.from_pandas(reference.select(columns).to_pandas(), data_definition=definition),
    )
    return snapshot, {
        name: float(snapshot.metric_results[metric.metric_id].value) for name, metric in drift_by_column.items()
    }


def assess_drift(
    champion: ChampionReference,
    windows: FeatureWindows,
    stored: pl.DataFrame,
    *,
    thresholds: DriftThresholds | None = None,
    now: datetime | None = None,
) -> tuple[DriftSummary, Snapshot]:
    """Test every feature and the predicted probability, check stored predictions, and decide the verdict."""
    rules = thresholds or DriftThresholds()
    missing = [name for name in champion.model.feature_names if name not in FEATURE_COLUMNS]
    if missing:
        raise DriftInputError(f"the champion uses features the pipeline no longer builds: {', '.join(missing)}")
    reference = _with_probability(windows.reference, champion.model)
    current = _with_probability(windows.current, champion.model)
    excluded: dict[str, str] = {}
    tested: list[str] = []
    for name in champion.model.feature_names:
        if not np.isfinite(_column(reference, name)).any():
            excluded[name] = "no values in the reference window"
        elif not np.isfinite(_column(current, name)).any():
            excluded[name] = "no values in the current window"
        else:
            tested.append(name)
    if not tested:
        raise DriftInputError("no feature has values in both windows")
    columns = [*tested, PREDICTION_COLUMN]
    limits, n_windows = calibrated_thresholds(reference, columns, days=windows.current_days, thresholds=rules)
    snapshot, scores = _evidently_report(reference, current, columns, limits, rules.drift_share)

    features = [
        FeatureDrift(
            name=name,
            score=scores[name],
            threshold=limits[name],
            # Evidently's rule for this test: drifted when the score reaches the threshold.
            drifted=scores[name] >= limits[name],
            reference_mean=_mean(_column(reference, name)),
            current_mean=_mean(_column(current, name)),
        )
        for name in tested
    ]
    drifted = [f.name for f in features if f.drifted]
    share = len(drifted) / len(features)
    p_ref, p_cur = _column(reference, PREDICTION_COLUMN), _column(current, PREDICTION_COLUMN)
    prediction = PredictionDrift(
        score=scores[PREDICTION_COLUMN],
        threshold=limits[PREDICTION_COLUMN],
        drifted=scores[PREDICTION_COLUMN] >= limits[PREDICTION_COLUMN],
        reference_mean=_mean(p_ref),
        current_mean=_mean(p_cur),
        reference_quantiles=_quantiles(p_ref),
        current_quantiles=_quantiles(p_cur),
    )
    stored_check = check_stored_predictions(stored, windows, champion, rules)
    verdict, reasons = decide_verdict(
        share=share,
        n_features=len(features),
        drifted=drifted,
        prediction=prediction,
        stored=stored_check,
        thresholds=rules,
    )
    if n_windows < rules.min_calibration_windows:
        reasons.append(
            f"only {n_windows} reference windows of {windows.current_days} days: thresholds are the floor "
            f"{rules.min_feature_threshold}, not calibrated"
        )
    if excluded:
        reasons.append(f"{len(excluded)} features not tested (no values in a window): {', '.join(sorted(excluded))}")
    new_coins = sorted(set(current.get_column("coin_id").unique().to_list()) - set(reference.get_column("coin_id")))
    if new_coins:
        reasons.append(f"coins served but absent from training: {', '.join(new_coins)}")
    summary = DriftSummary(
        horizon_days=champion.horizon_days,
        model_name=champion.model_name,
        model_version=champion.version,
        run_id=champion.run_id,
        generated_at=(now or datetime.now(UTC)).isoformat(),
        as_of=windows.as_of.isoformat(),
        current_days=windows.current_days,
        method=DRIFT_METHOD,
        verdict=verdict,
        reasons=reasons,
        thresholds=rules,
        calibration_windows=n_windows,
        reference=_window_summary(reference),
        current=_window_summary(current),
        features=features,
        excluded_features=excluded,
        drifted_features=drifted,
        drifted_share=share,
        prediction=prediction,
        stored_predictions=stored_check,
    )
    return summary, snapshot


def decide_verdict(
    *,
    share: float,
    n_features: int,
    drifted: list[str],
    prediction: PredictionDrift,
    stored: StoredPredictionCheck,
    thresholds: DriftThresholds,
) -> tuple[Verdict, list[str]]:
    """The verdict by the declared rules, with one reason per rule that fired (or why all is well)."""
    reasons: list[str] = []
    verdict = Verdict.OK
    listed = ", ".join(drifted[:8]) + (" ..." if len(drifted) > 8 else "")
    if share >= thresholds.drift_share:
        verdict = Verdict.DRIFT
        reasons.append(
            f"{len(drifted)}/{n_features} features drifted ({share:.0%} >= {thresholds.drift_share:.0%}): {listed}"
        )
    elif share >= thresholds.warning_share:
        verdict = Verdict.WARNING
        reasons.append(
            f"{len(drifted)}/{n_features} features drifted ({share:.0%} >= {thresholds.warning_share:.0%}): {listed}"
        )
    if prediction.drifted:
        verdict = max(verdict, Verdict.WARNING, key=_severity)
        reasons.append(
            f"predicted probabilities drifted (score {prediction.score:.3f} >= {prediction.threshold:.3f}; "
            f"mean {prediction.reference_mean:.3f} -> {prediction.current_mean:.3f})"
        )
    if stored.degraded:
        verdict = max(verdict, Verdict.WARNING, key=_severity)
        reasons.append(
            f"realised Brier {stored.realised_brier:.4f} on {stored.matured} matured predictions is worse than "
            f"the walk-forward {stored.walk_forward_brier:.4f} by more than {thresholds.brier_margin}"
        )
    if verdict is Verdict.OK:
        reasons.append(
            f"{len(drifted)}/{n_features} features drifted ({share:.0%} < {thresholds.warning_share:.0%}), "
            "predicted probabilities stable"
            + (
                f", realised Brier {stored.realised_brier:.4f} on {stored.matured} matured predictions"
                if stored.realised_brier is not None
                else ""
            )
        )
    return verdict, reasons


def _severity(verdict: Verdict) -> int:
    return [Verdict.OK, Verdict.WARNING, Verdict.DRIFT].index(verdict)


# -- files -------------------------------------------------------------------------------------------


def report_stamp(now: datetime | None = None) -> str:
    """The folder name of one report run, e.g. ``20250101T020000Z`` (UTC)."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def report_folder(settings: Settings, stamp: str, horizon_days: int) -> Path:
    """``KHALSI_HOME/reports/drift/<stamp>/<H>d``."""
    return settings.home.joinpath(*REPORTS_DIR, stamp, f"{horizon_days}d")


def write_drift_report(summary: DriftSummary, snapshot: Snapshot, folder: Path) -> DriftSummary:
    """Write the Evidently HTML and JSON and the summary JSON; the summary with its file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    html, evidently_json, summary_json = folder / REPORT_HTML, folder / EVIDENTLY_JSON, folder / SUMMARY_JSON
    snapshot.save_html(str(html))
    snapshot.save_json(str(evidently_json))
    written = replace(
        summary, files={"html": str(html), "evidently": str(evidently_json), "summary": str(summary_json)}
    )
    # Written last, through a temporary name: a summary on disk means the report beside it is complete.
    partial = summary_json.with_suffix(".json.tmp")
    partial.write_text(json.dumps(written.as_dict(), indent=2, allow_nan=False), encoding="utf-8")
    partial.replace(summary_json)
    return written


def build_drift_report(
    settings: Settings,
    horizon_days: int,
    *,
    current_days: int = 30,
    as_of: date | None = None,
    thresholds: DriftThresholds | None = None,
    stamp: str | None = None,
) -> DriftSummary | None:
    """Compare the horizon's champion with the last ``current_days`` days, write the report; None: no champion."""
    champion = find_champion_reference(settings, horizon_days)
    if champion is None:
        return None
    windows = read_feature_windows(settings, champion, current_days=current_days, as_of=as_of)
    stored = read_stored_predictions(settings, champion)
    summary, snapshot = assess_drift(champion, windows, stored, thresholds=thresholds)
    return write_drift_report(summary, snapshot, report_folder(settings, stamp or report_stamp(), horizon_days))
