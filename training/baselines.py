"""The baselines every model is compared with, each fitted on the training window only.

- ``coin_flip``: p = 0.5 for every row;
- ``base_rate``: p = the share of "up" labels in the training window of the fold;
- ``momentum``: p = the training window's up-share among rows whose trailing H-day return had the
  same sign (up / down-or-flat), the base rate where the trailing return is unknown. A one-rule
  model calibrated on training data: it says how much a naive trend follower would score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

BASELINES = ("coin_flip", "base_rate", "momentum")


@dataclass(frozen=True)
class FittedBaselines:
    """What the baselines learned from one training window."""

    base_rate: float
    up_after_rise: float
    up_after_fall: float

    def predict(self, trailing_return: FloatArray) -> dict[str, FloatArray]:
        """Each baseline's probability of "up" for rows with these trailing returns (NaN: unknown)."""
        n = len(trailing_return)
        momentum = np.where(
            np.isnan(trailing_return),
            self.base_rate,
            np.where(trailing_return > 0, self.up_after_rise, self.up_after_fall),
        )
        return {
            "coin_flip": np.full(n, 0.5),
            "base_rate": np.full(n, self.base_rate),
            "momentum": momentum.astype(np.float64),
        }

    def as_dict(self) -> dict[str, float]:
        return {
            "base_rate": self.base_rate,
            "up_after_rise": self.up_after_rise,
            "up_after_fall": self.up_after_fall,
        }


def _share(y: FloatArray, fallback: float, prior_weight: float = 10.0) -> float:
    # A few pseudo-observations at the base rate keep a tiny group from giving 0 or 1.
    return float((y.sum() + prior_weight * fallback) / (len(y) + prior_weight))


def fit_baselines(y_train: FloatArray, trailing_return_train: FloatArray) -> FittedBaselines:
    """Fit the baselines on a training window's labels and trailing returns."""
    if len(y_train) == 0:
        raise ValueError("cannot fit baselines on an empty training window")
    base_rate = float(np.mean(y_train))
    known = ~np.isnan(trailing_return_train)
    rising = known & (trailing_return_train > 0)
    falling = known & ~(trailing_return_train > 0)
    return FittedBaselines(
        base_rate=base_rate,
        up_after_rise=_share(y_train[rising], base_rate),
        up_after_fall=_share(y_train[falling], base_rate),
    )
