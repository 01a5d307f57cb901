"""Prediction logic shared by the service and batch scoring: no I/O, no DataFrame, numpy only.

For each horizon the requested rows of the in-memory feature matrix are gathered into one float64
array and passed straight to the boosters (``inplace_predict``: no DMatrix, no pandas), then
calibrated exactly as :class:`training.model.DirectionModel` does. Contributions (TreeSHAP via
``pred_contribs``) are computed only for the items that ask for them, because they cost about ten
predictions each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from serving.feature_store import FeatureSnapshot
from serving.schemas import (
    Contribution,
    ErrorCode,
    ItemError,
    PredictionItem,
    PredictionResult,
    PriceTarget,
    horizon_label,
    parse_horizon,
)

if TYPE_CHECKING:
    from training.model import DirectionModel

FloatArray = npt.NDArray[np.float64]
DEFAULT_TOP_K = 5
# The next daily data point replaces a prediction: the feature timestamp plus one day.
DATA_INTERVAL = timedelta(days=1)
CONFIDENCE_DEFINITION = "|p_up - 0.5| * 2 on the calibrated probability of up"


@dataclass(frozen=True)
class ServedModel:
    """A loaded champion: the model, its registry identity and what serving needs precomputed."""

    horizon_days: int
    name: str
    version: str
    run_id: str | None
    model: DirectionModel
    loaded_at: datetime
    feature_names: tuple[str, ...] = field(init=False)
    # Positions of the lowest, middle and highest return quantile in the sorted quantile output.
    low: int = field(init=False)
    mid: int = field(init=False)
    high: int = field(init=False)

    def __post_init__(self) -> None:
        alphas = self.model.alphas
        object.__setattr__(self, "feature_names", tuple(self.model.feature_names))
        object.__setattr__(self, "low", 0)
        object.__setattr__(self, "high", len(alphas) - 1)
        object.__setattr__(self, "mid", int(np.argmin([abs(a - 0.5) for a in alphas])))

    @property
    def horizon(self) -> str:
        return horizon_label(self.horizon_days)

    def probability(self, features: FloatArray) -> FloatArray:
        """Calibrated probability of up, straight from the booster (same numbers as DirectionModel)."""
        raw = np.asarray(self.model.classifier.inplace_predict(features), dtype=np.float64)
        return self.model.calibrator.apply(raw)

    def quantiles(self, features: FloatArray) -> FloatArray:
        """Sorted log-return quantiles, one column per alpha (same numbers as DirectionModel)."""
        out = np.asarray(self.model.quantile_model.inplace_predict(features), dtype=np.float64)
        return np.sort(out.reshape(len(features), len(self.model.alphas)), axis=1)


@dataclass(frozen=True, eq=False)
class PrecomputedAnswers:
    """Every coin's calibrated probability and return quantiles per horizon, for one snapshot and model set.

    The inputs change once a day (a new data point) or when a champion moves, so the booster pass
    over all coins is done once per change instead of once per request. Each row of a booster
    prediction is computed independently of the others, so the numbers are the ones a per-request
    call on that row gives (a test checks they are equal).
    """

    snapshot: FeatureSnapshot
    models: Mapping[int, ServedModel]
    p_up: Mapping[int, FloatArray]
    quantiles: Mapping[int, FloatArray]

    def for_horizon(
        self, days: int, snapshot: FeatureSnapshot, served: ServedModel
    ) -> tuple[FloatArray, FloatArray] | None:
        """The horizon's arrays if they come from exactly this snapshot and model, else None."""
        if snapshot is not self.snapshot or self.models.get(days) is not served or days not in self.p_up:
            return None
        return self.p_up[days], self.quantiles[days]


def precompute_answers(models: Mapping[int, ServedModel], snapshot: FeatureSnapshot) -> PrecomputedAnswers:
    """One booster pass per horizon over every coin of the snapshot (skipping horizons lacking features)."""
    p_up: dict[int, FloatArray] = {}
    quantiles: dict[int, FloatArray] = {}
    for days, served in models.items():
        if not snapshot.coin_ids:
            continue
        try:
            columns = snapshot.columns_for(served.feature_names)
        except KeyError:
            continue
        features = np.ascontiguousarray(snapshot.matrix[:, columns])
        p_up[days] = served.probability(features)
        quantiles[days] = served.quantiles(features)
    return PrecomputedAnswers(snapshot=snapshot, models=dict(models), p_up=p_up, quantiles=quantiles)


def _error(item: PredictionItem, code: ErrorCode, message: str) -> PredictionResult:
    return PredictionResult(coin=item.coin, horizon=item.horizon, error=ItemError(code=code, message=message))


def _top_contributions(
    names: tuple[str, ...], contribs: FloatArray, values: FloatArray, top_k: int
) -> list[Contribution]:
    # The last column is the bias (the model's base log-odds), not a feature.
    per_feature = contribs[: len(names)]
    order = np.argsort(-np.abs(per_feature), kind="stable")[:top_k]
    return [
        Contribution(
            feature=names[j],
            contribution=float(per_feature[j]),
            value=None if np.isnan(values[j]) else float(values[j]),
        )
        for j in order
    ]


def predict_items(
    items: Sequence[PredictionItem],
    *,
    models: Mapping[int, ServedModel],
    snapshot: FeatureSnapshot | None,
    now: datetime,
    max_age: timedelta,
    known_horizons: Sequence[int] = (),
    precomputed: PrecomputedAnswers | None = None,
) -> list[PredictionResult]:
    """Answer every item, in order: a prediction, or a per-item error (never a guess).

    ``known_horizons`` are horizons the platform declares: asking for one whose champion is not
    loaded is ``model_unavailable``; any other horizon is ``unknown_horizon``. ``precomputed``
    answers (see :func:`precompute_answers`) are used only when they were computed from this very
    snapshot and model version; otherwise the boosters are called on the requested rows.
    """
    results: list[PredictionResult | None] = [None] * len(items)
    # horizon -> [(item position, matrix row)]
    wanted: dict[int, list[tuple[int, int]]] = {}
    for position, item in enumerate(items):
        days = parse_horizon(item.horizon)
        if days is None or (days not in models and days not in known_horizons):
            offered = ", ".join(horizon_label(d) for d in sorted({*models, *known_horizons})) or "none"
            results[position] = _error(
                item, ErrorCode.UNKNOWN_HORIZON, f"unknown horizon {item.horizon!r}; served horizons: {offered}"
            )
            continue
        if snapshot is None:
            results[position] = _error(
                item, ErrorCode.FEATURES_UNAVAILABLE, "no feature vectors have been published to the online store yet"
            )
            continue
        row = snapshot.row_of(item.coin)
        if row is None:
            results[position] = _error(
                item, ErrorCode.UNKNOWN_COIN, f"unknown coin {item.coin!r}: no feature vector in the online store"
            )
            continue
        # Checked after the coin, so a caller asking about a coin we do not know hears that first.
        if days not in models:
            results[position] = _error(
                item, ErrorCode.MODEL_UNAVAILABLE, f"no champion model is loaded for horizon {horizon_label(days)}"
            )
            continue
        age = now - snapshot.timestamps[row]
        if age > max_age:
            results[position] = _error(
                item,
                ErrorCode.STALE_FEATURES,
                f"the newest features of {snapshot.coin_ids[row]!r} are from {snapshot.timestamps[row].isoformat()}, "
                f"{age.total_seconds() / 3600:.1f} h old (limit {max_age.total_seconds() / 3600:.1f} h)",
            )
            continue
        wanted.setdefault(days, []).append((position, row))

    for days, pairs in wanted.items():
        served = models[days]
        try:
            columns = snapshot.columns_for(served.feature_names) if snapshot is not None else None
        except KeyError as error:
            for position, _ in pairs:
                results[position] = _error(items[position], ErrorCode.MODEL_FEATURE_MISMATCH, str(error.args[0]))
            continue
        assert snapshot is not None
        assert columns is not None
        rows = np.fromiter((row for _, row in pairs), dtype=np.intp, count=len(pairs))
        explain = [i for i, (position, _) in enumerate(pairs) if items[position].contributions]
        cached = precomputed.for_horizon(days, snapshot, served) if precomputed is not None else None
        features: FloatArray | None = None
        if cached is not None:
            p_up, quantiles = cached[0][rows], cached[1][rows]
        else:
            features = np.ascontiguousarray(snapshot.matrix[np.ix_(rows, columns)])
            p_up = served.probability(features)
            quantiles = served.quantiles(features)
        contribs: FloatArray | None = None
        if explain:
            explained = np.ascontiguousarray(snapshot.matrix[np.ix_(rows[explain], columns)])
            contribs = served.model.contributions(explained)
        contrib_of = {i: k for k, i in enumerate(explain)}
        alphas = served.model.alphas
        for i, (position, row) in enumerate(pairs):
            item = items[position]
            price = float(snapshot.prices[row])
            p = float(p_up[i])
            targets = price * np.exp(quantiles[i])
            top: list[Contribution] | None = None
            if contribs is not None and i in contrib_of:
                values = snapshot.matrix[row, columns]
                top = _top_contributions(
                    served.feature_names, contribs[contrib_of[i]], values, item.top_k or DEFAULT_TOP_K
                )
            results[position] = PredictionResult(
                coin=item.coin,
                horizon=item.horizon,
                coin_id=snapshot.coin_ids[row],
                symbol=snapshot.symbols[row],
                probability_up=p,
                probability_down=1.0 - p,
                confidence=abs(p - 0.5) * 2.0,
                direction="up" if p >= 0.5 else "down",
                price=price,
                price_target=PriceTarget(
                    median=float(targets[served.mid]),
                    low=float(targets[served.low]),
                    high=float(targets[served.high]),
                    low_quantile=alphas[served.low],
                    high_quantile=alphas[served.high],
                    interval=round(alphas[served.high] - alphas[served.low], 6),
                ),
                model_name=served.name,
                model_version=served.version,
                feature_timestamp=snapshot.timestamps[row],
                expires_at=snapshot.timestamps[row] + DATA_INTERVAL,
                contributions=top,
            )
    return [result for result in results if result is not None]


def all_items(snapshot: FeatureSnapshot, horizons: Sequence[int]) -> list[PredictionItem]:
    """One item per coin and horizon (batch scoring asks everything)."""
    return [
        PredictionItem(coin=coin_id, horizon=horizon_label(days)) for coin_id in snapshot.coin_ids for days in horizons
    ]


def feature_set_digest(names: Sequence[str]) -> str:
    """A short, stable identifier of an ordered feature list."""
    import hashlib

    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def prediction_rows(
    results: Sequence[PredictionResult],
    *,
    models: Mapping[int, ServedModel],
    feature_version: int | None,
    source: str = "batch-score",
) -> list[dict[str, object]]:
    """Rows for the ``predictions`` table from successful results (errors are not rows)."""
    rows: list[dict[str, object]] = []
    by_name = {served.name: served for served in models.values()}
    for result in results:
        if result.error is not None or result.model_name is None or result.price_target is None:
            continue
        served = by_name[result.model_name]
        target = result.price_target
        rows.append(
            {
                "coin_id": result.coin_id,
                "symbol": result.symbol,
                "timeframe": served.horizon,
                "probability_up": result.probability_up,
                "probability_down": result.probability_down,
                "confidence_level": result.confidence,
                "price_target": target.median,
                "price_target_low": target.low,
                "price_target_high": target.high,
                "model_name": served.name,
                "model_version": served.version,
                "feature_timestamp": result.feature_timestamp,
                "expires_at": result.expires_at,
                "methodology": {
                    "source": source,
                    "model_name": served.name,
                    "model_version": served.version,
                    "model_run_id": served.run_id,
                    "horizon_days": served.horizon_days,
                    "feature_timestamp": result.feature_timestamp.isoformat() if result.feature_timestamp else None,
                    "feature_store_version": feature_version,
                    "feature_set": {
                        "names": list(served.feature_names),
                        "sha256_16": feature_set_digest(served.feature_names),
                    },
                    "price": result.price,
                    "calibration": served.model.calibrator.method.value,
                    "confidence": CONFIDENCE_DEFINITION,
                    "price_target": {
                        "formula": "price * exp(q), q = predicted log-return quantile",
                        "quantiles": served.model.alphas,
                        "interval": target.interval,
                    },
                },
            }
        )
    return rows
