"""PNG figures logged with each run: reliability diagram, feature importance, SHAP summary.

Matplotlib with the Agg backend (no display). The SHAP summary uses XGBoost's own
``pred_contribs=True`` output, which is exact TreeSHAP for tree ensembles, so no extra package.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import polars as pl
from matplotlib.figure import Figure

from training.metrics import reliability_curve
from training.model import DirectionModel

FloatArray = npt.NDArray[np.float64]
LABELS = {
    "model": "model (calibrated)",
    "raw": "model (uncalibrated)",
    "base_rate": "base rate",
    "momentum": "momentum",
    "coin_flip": "p = 0.5",
}


def reliability_diagram(
    predictions: pl.DataFrame, path: Path, *, n_bins: int = 10, title: str = "Reliability (out of sample)"
) -> Path:
    """Observed up-frequency against mean predicted probability per bin, with row counts."""
    y = predictions.get_column("y").cast(pl.Float64).to_numpy()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    for name in ("model", "raw", "momentum", "base_rate"):
        column = f"p_{name}"
        if column not in predictions.columns:
            continue
        curve = reliability_curve(y, predictions.get_column(column).to_numpy(), n_bins=n_bins)
        ax.plot(curve["mean_predicted"], curve["observed"], marker="o", label=LABELS[name])
    ax.set_ylabel("observed frequency of 'up'")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    hist.hist(predictions.get_column("p_model").to_numpy(), bins=50, range=(0, 1), color="tab:blue")
    hist.set_xlabel("predicted probability of 'up'")
    hist.set_ylabel("rows")
    fig.tight_layout()
    return _save(fig, path)


def feature_importance(model: DirectionModel, path: Path, *, top: int = 20) -> Path:
    """Total gain of each feature in the classifier (the top ``top``)."""
    gains = model.classifier.get_score(importance_type="total_gain")
    ranked = sorted(gains.items(), key=lambda item: item[1], reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.3 * len(ranked) + 1)))
    if ranked:
        names, values = zip(*reversed(ranked), strict=True)
        ax.barh(names, values, color="tab:blue")
    else:
        ax.text(0.5, 0.5, "the classifier made no split (no feature helped)", ha="center", va="center")
    ax.set_xlabel("total gain")
    ax.set_title("XGBoost feature importance (classifier)")
    fig.tight_layout()
    return _save(fig, path)


def shap_summary(model: DirectionModel, features: FloatArray, path: Path, *, top: int = 15, seed: int = 0) -> Path:
    """Beeswarm-style summary of exact TreeSHAP contributions, coloured by feature value."""
    contribs = model.contributions(features)[:, :-1]
    order = np.argsort(np.abs(contribs).mean(axis=0))[::-1][:top]
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.35 * len(order) + 1)))
    for row, j in enumerate(reversed(order)):
        values = features[:, j]
        finite = np.isfinite(values)
        # Colour by within-feature rank so one outlier does not wash out the scale.
        colour = np.full(len(values), 0.5)
        if finite.any():
            ranks = values[finite].argsort().argsort()
            colour[finite] = ranks / max(1, finite.sum() - 1)
        jitter = rng.uniform(-0.3, 0.3, size=len(values))
        ax.scatter(contribs[:, j], row + jitter, c=colour, cmap="coolwarm", s=4, alpha=0.6, linewidths=0)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([model.feature_names[j] for j in reversed(order)])
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("contribution to log-odds of 'up' (TreeSHAP, XGBoost pred_contribs)")
    ax.set_title("SHAP summary (colour: feature value rank, blue low, red high)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
