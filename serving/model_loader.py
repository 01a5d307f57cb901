"""Champions from the MLflow registry and the feature snapshot, kept current without a restart.

:class:`ServingRuntime` holds one :class:`ServingState`, replaced whole on every change (a Python
reference assignment is atomic, and a request reads it once at its start, so it never sees half a
swap):

- ``models``: horizon -> :class:`serving.predict.ServedModel`, the version holding the ``champion``
  alias of ``khalsi-direction-<H>d`` (never "latest"). The alias is resolved first and that exact
  version is loaded (``models:/<name>/<version>``), so the version reported is the one answering
  even if the alias moves during the load;
- ``snapshot``: the online store's :class:`serving.feature_store.FeatureSnapshot`;
- ``answers``: every coin's probability and quantiles per horizon, from one booster pass over the
  snapshot's matrix made at the swap (inputs change daily, requests come all the time), so a request
  costs lookups, the staleness check and, if asked, its own TreeSHAP contributions.

A background thread polls the alias every ``model_poll_seconds`` and the store's version every
``feature_poll_seconds`` and swaps in what changed. A failed load keeps the previous model or
snapshot and records the error (reported by health/readiness), so a bad publication never takes a
serving model away.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from khalsi.settings import ServingSettings, Settings
from serving.feature_store import FeatureSnapshot, OnlineFeatureStore, open_feature_store
from serving.predict import PrecomputedAnswers, ServedModel, precompute_answers, predict_items
from serving.schemas import (
    PredictionItem,
    PredictionResult,
    ServedModelStatus,
    ServiceStatus,
    horizon_label,
    serving_settings,
)

logger = logging.getLogger(__name__)


def served_horizons(options: ServingSettings) -> tuple[int, ...]:
    """The horizons to serve: the configured ones, else every horizon training declares."""
    if options.horizons:
        return tuple(options.horizons)
    from training.config import HORIZONS

    return tuple(HORIZONS)


def model_name(horizon_days: int) -> str:
    """The registered model of a horizon (training's naming)."""
    from training.config import registered_model_name

    return registered_model_name(horizon_days)


def champion_versions(settings: Settings, horizons: Sequence[int]) -> dict[int, str | None]:
    """The version each horizon's ``champion`` alias points at (None: no alias yet); a registry read only."""
    from training.registry import champion_version, configure_mlflow

    client = configure_mlflow(settings)
    found: dict[int, str | None] = {}
    for days in horizons:
        version = champion_version(client, model_name(days))
        found[days] = str(version.version) if version is not None else None
    return found


def load_champion(settings: Settings, horizon_days: int, *, version: str | None = None) -> ServedModel:
    """Load a horizon's champion (or the named version) from the registry."""
    from training.registry import load_registered_model

    name = model_name(horizon_days)
    model, found = load_registered_model(settings, model_name=name, version=version)
    if model.horizon_days != horizon_days:
        raise ValueError(f"{name} v{found.version} was trained for {model.horizon_days}d, not {horizon_days}d")
    return ServedModel(
        horizon_days=horizon_days,
        name=name,
        version=str(found.version),
        run_id=found.run_id,
        model=model,
        loaded_at=datetime.now(UTC),
    )


def load_champions(settings: Settings, horizons: Sequence[int]) -> tuple[dict[int, ServedModel], dict[str, str]]:
    """Every horizon's champion that can be loaded, and why the others could not."""
    models: dict[int, ServedModel] = {}
    errors: dict[str, str] = {}
    for days in horizons:
        try:
            models[days] = load_champion(settings, days)
        except Exception as error:
            # One horizon's failure must not stop the others.
            errors[f"model:{horizon_label(days)}"] = f"{type(error).__name__}: {error}"
    return models, errors


@dataclass(frozen=True)
class ServingState:
    """What answers requests: the champions, the feature snapshot and their precomputed answers."""

    models: Mapping[int, ServedModel]
    snapshot: FeatureSnapshot | None
    answers: PrecomputedAnswers | None


class ServingRuntime:
    """The champions and feature vectors in memory, refreshed in the background, answering predictions."""

    def __init__(
        self,
        settings: Settings,
        *,
        options: ServingSettings | None = None,
        clock: Callable[[], datetime] | None = None,
        store: OnlineFeatureStore | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or serving_settings(settings)
        self.horizons = served_horizons(self.options)
        self.max_age = timedelta(hours=self.options.max_feature_age_hours)
        if clock is None:
            from khalsi.ingest.sources import source_clock

            clock = source_clock(settings)
        self.clock = clock
        self.store = store or open_feature_store(settings)
        # One reference, replaced whole: a request reads models, snapshot and answers that belong together.
        self.state = ServingState(models={}, snapshot=None, answers=None)
        self.errors: dict[str, str] = {}
        self._refresh_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def models(self) -> Mapping[int, ServedModel]:
        return self.state.models

    @property
    def snapshot(self) -> FeatureSnapshot | None:
        return self.state.snapshot

    def _swap(
        self, *, models: Mapping[int, ServedModel] | None = None, snapshot: FeatureSnapshot | None = None
    ) -> None:
        """Install new models and/or a new snapshot with their precomputed answers, in one assignment."""
        with self._swap_lock:
            current = self.state
            new_models = current.models if models is None else models
            new_snapshot = current.snapshot if snapshot is None else snapshot
            answers = precompute_answers(new_models, new_snapshot) if new_models and new_snapshot else None
            self.state = ServingState(models=new_models, snapshot=new_snapshot, answers=answers)
        # What was just loaded lives until the next swap: keep it out of the collector's way.
        gc.freeze()

    # -- loading and refreshing -------------------------------------------------------------------

    def load(self) -> None:
        """Load every champion and the current snapshot (at start-up)."""
        with self._refresh_lock:
            models, errors = load_champions(self.settings, self.horizons)
            self.errors = errors
            self._swap(models=models)
        self.refresh_features()

    def refresh_models(self) -> bool:
        """Swap in any horizon whose champion alias moved; True if something changed."""
        with self._refresh_lock:
            try:
                versions = champion_versions(self.settings, self.horizons)
            except Exception as error:
                # A registry hiccup keeps the models being served.
                self.errors["registry"] = f"{type(error).__name__}: {error}"
                return False
            self.errors.pop("registry", None)
            updated = dict(self.models)
            changed = False
            for days, version in versions.items():
                key = f"model:{horizon_label(days)}"
                current = updated.get(days)
                if version is None:
                    # The alias was removed: keep answering with what is loaded, but say so.
                    if current is not None:
                        self.errors[key] = (
                            f"{model_name(days)} has no champion alias any more; still serving v{current.version}"
                        )
                    continue
                if current is not None and current.version == version:
                    self.errors.pop(key, None)
                    continue
                try:
                    updated[days] = load_champion(self.settings, days, version=version)
                except Exception as error:
                    # Keep the previous champion on a failed load.
                    self.errors[key] = f"loading {model_name(days)} v{version} failed: {type(error).__name__}: {error}"
                    continue
                self.errors.pop(key, None)
                logger.info(
                    "serving %s v%s for %s (was %s)",
                    model_name(days),
                    version,
                    horizon_label(days),
                    f"v{current.version}" if current else "nothing",
                )
                changed = True
            if changed:
                self._swap(models=updated)
            return changed

    def refresh_features(self) -> bool:
        """Reload the snapshot if the store's version moved; True if it changed."""
        try:
            version = self.store.version()
            if self.snapshot is not None and self.snapshot.version == version:
                return False
            if version == 0:
                self.errors["features"] = "no feature vectors have been published yet"
                return False
            snapshot = self.store.read()
        except Exception as error:
            # Keep the previous snapshot on a bad read.
            self.errors["features"] = f"{type(error).__name__}: {error}"
            return False
        if snapshot is None:
            return False
        self._swap(snapshot=snapshot)
        self.errors.pop("features", None)
        return True

    def start_polling(self) -> None:
        """Poll the alias and the store's version in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="khalsi-serving-refresh", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        next_models = time.monotonic() + self.options.model_poll_seconds
        while not self._stop.wait(self.options.feature_poll_seconds):
            self.refresh_features()
            if time.monotonic() >= next_models:
                self.refresh_models()
                next_models = time.monotonic() + self.options.model_poll_seconds

    def stop(self) -> None:
        """Stop polling and release the store's connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.store.close()

    # -- answering --------------------------------------------------------------------------------

    def predict(self, items: Sequence[PredictionItem]) -> list[PredictionResult]:
        """Answer items against the models and snapshot current at the call (read once each)."""
        state = self.state
        return predict_items(
            items,
            models=state.models,
            snapshot=state.snapshot,
            now=self.clock(),
            max_age=self.max_age,
            known_horizons=self.horizons,
            precomputed=state.answers,
        )

    @property
    def ready(self) -> bool:
        """Ready when at least one champion and a feature snapshot are loaded."""
        return bool(self.models) and self.snapshot is not None

    def status(self) -> ServiceStatus:
        """Loaded versions, feature snapshot and the latest errors."""
        state = self.state
        models, snapshot = state.models, state.snapshot
        return ServiceStatus(
            ready=bool(models) and snapshot is not None,
            models=[
                ServedModelStatus(
                    horizon=served.horizon,
                    model_name=served.name,
                    model_version=served.version,
                    run_id=served.run_id,
                    loaded_at=served.loaded_at,
                )
                for _, served in sorted(models.items())
            ],
            missing_horizons=[horizon_label(d) for d in self.horizons if d not in models],
            feature_version=snapshot.version if snapshot else None,
            feature_backend=self.store.backend,
            feature_published_at=snapshot.published_at if snapshot else None,
            newest_feature_timestamp=max(snapshot.timestamps, default=None) if snapshot else None,
            coins=len(snapshot.coin_ids) if snapshot else 0,
            last_errors=dict(self.errors),
        )
