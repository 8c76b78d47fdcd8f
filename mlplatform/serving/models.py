"""Loaded model versions, the immutable routing state, and the poller that swaps it when an alias moves.

Hot swap is one reference assignment: the poller builds a complete new :class:`ServingState` (loading any new
version first, off the request path) and assigns it; a request reads the reference once and uses that snapshot
from start to end, so it never sees half a swap.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.lib.aliases import CHALLENGER, CHAMPION
from mlplatform.lib.decision import DECISION_THRESHOLD, predicted_positive
from mlplatform.lib.servability import Servability, servability
from mlplatform.serving.fastpath import FastPreprocess, FlatTrees, compile_preprocess, compile_trees
from mlplatform.serving.schema import RecordSchema
from mlplatform.specs import ModelSpec

log = logging.getLogger(__name__)

FLAT_TREES_MAX_ROWS = 16
"""Up to this many rows the flat twin of a tree ensemble is faster (car_loan, 1 row: 0.44 ms of CPU instead of 2.5;
8 rows: 1.0 instead of 1.8); above it scikit-learn's per-row loop wins (100 rows: 3.5 ms instead of 6.0)."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, ready to predict on checked records (see :class:`RecordSchema`)."""

    name: str
    version: str
    task: str
    pipeline: Any
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    classes: tuple[Any, ...] | None
    threshold: float = DECISION_THRESHOLD  # binary: the positive class from this probability on (the spec's)
    fast: FastPreprocess | None = None  # the numpy twin of the preprocessing, when it reproduces it exactly
    trees: FlatTrees | None = None  # the flat twin of a HistGradientBoosting estimator, likewise
    verdict: Servability | None = None  # why it may be served (a person's forced approval is shown in /v1/models)
    text: tuple[str, ...] = ()  # free-text features (features.text): always the generic path

    @classmethod
    def of(cls, spec: ModelSpec, version: str, pipeline: Any, verdict: Servability | None = None) -> LoadedModel:
        classes = None if spec.task == "regression" else tuple(_plain(c) for c in pipeline.classes_)
        fast = (compile_preprocess(pipeline, spec.features.numeric, spec.features.categorical)
                if not spec.features.text else None)  # the numpy twin knows no TF-IDF
        trees = None
        if fast is not None:
            trees = compile_trees(pipeline.named_steps["estimator"], fast.transform(fast.probe_rows()))
        return cls(spec.name, str(version), spec.task, pipeline, tuple(spec.features.numeric),
                   tuple(spec.features.categorical), classes, spec.decision_threshold, fast, trees, verdict,
                   tuple(spec.features.text))

    @property
    def inline_rows(self) -> int:
        """Up to how many rows a batch may be scored on the event loop: the numpy-only twins (no pandas, no OpenMP,
        ~0.5 ms for a few rows) when both exist, else 0 (the predict thread scores)."""
        return FLAT_TREES_MAX_ROWS if self.fast is not None and self.trees is not None else 0

    def frame(self, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """The pipeline's input frame (when there is no fast twin), shaped like ``split_xy``: float64 numerics, object text categoricals with None."""
        count = len(rows)
        data: dict[str, Any] = {}
        for column in self.numeric:
            data[column] = np.fromiter((np.nan if r[column] is None else r[column] for r in rows), "float64", count)
        for column in (*self.categorical, *self.text):
            values = np.empty(count, dtype=object)
            values[:] = [r[column] for r in rows]
            data[column] = values
        return pd.DataFrame(data, copy=False)

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Per row: ``prediction`` (+ ``probabilities`` by class for classifiers) and ``score`` for the log.

        ``score`` follows ``lib.training.predict``: the value (regression), P(second class) (binary), the label's
        class index (multiclass). Labels are what ``lib.training.predict`` says: binary, the second class when its
        probability is at least the spec's ``evaluation.decision_threshold``; multiclass ``classes_[argmax(proba)]``.
        """
        if self.fast is not None:
            x, model = self.fast.transform(rows), self.pipeline.named_steps["estimator"]
        else:
            x, model = self.frame(rows), self.pipeline
        trees = self.trees if self.trees is not None and len(rows) <= FLAT_TREES_MAX_ROWS else None
        if self.task == "regression":
            values = trees.predict(x) if trees is not None else model.predict(x)
            return [{"prediction": v, "score": v} for v in np.asarray(values, "float64").tolist()]
        proba = np.asarray(trees.predict(x) if trees is not None else model.predict_proba(x), "float64")
        best = (predicted_positive(proba[:, 1], self.threshold).astype(int) if self.task == "binary"
                else proba.argmax(axis=1)).tolist()
        classes = self.classes or ()
        names = [str(c) for c in classes]
        outputs = []
        for row_proba, index in zip(proba.tolist(), best, strict=True):
            score = row_proba[1] if self.task == "binary" else float(index)
            outputs.append({"prediction": classes[index], "probabilities": dict(zip(names, row_proba, strict=True)),
                            "score": score})
        return outputs


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def finite_output(output: Mapping[str, Any]) -> bool:
    """Whether an output of :meth:`LoadedModel.predict` is all finite numbers (an input far outside the training
    data, e.g. 1.7e308 where the spec sets no bound, can overflow a model to inf or NaN)."""
    score = output["score"]
    if not math.isfinite(score):
        return False
    probabilities = output.get("probabilities")
    return probabilities is None or all(math.isfinite(p) for p in probabilities.values())


@dataclass(frozen=True)
class ModelState:
    """What is served for one model, and why (shown by GET /v1/models)."""

    spec: ModelSpec
    schema: RecordSchema
    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)  # version -> why it is not loaded
    registry_error: str | None = None
    checked_at: float | None = None
    canary_share: float | None = None  # the challenger's ``mlplatform.canary_share`` tag (a ramp step), if any

    @property
    def rollout_challenger(self) -> LoadedModel | None:
        """The challenger when it differs from the champion (else there is nothing to canary or shadow)."""
        if self.challenger is None or self.champion is None or self.challenger.version == self.champion.version:
            return None
        return self.challenger

    @property
    def canary_percent(self) -> float:
        if self.rollout_challenger is None:
            return 0.0
        return self.canary_share if self.canary_share is not None else float(self.spec.rollout.canary_percent)

    @property
    def shadow(self) -> bool:
        return bool(self.spec.rollout.shadow) and self.rollout_challenger is not None


@dataclass(frozen=True)
class ServingState:
    models: Mapping[str, ModelState]

    @property
    def ready(self) -> bool:
        return all(m.champion is not None for m in self.models.values())


REGISTRY_PAGE = 1000
"""Registered models per alias read (MLflow's largest page)."""


class RegistryUnavailable(RuntimeError):
    """The registry could not be read (as opposed to: it says there is no such model or alias)."""


class Registry:
    """The few registry reads serving needs, over the platform's :class:`Tracker`."""

    def __init__(self, tracker: Any):
        self.tracker = tracker
        self._probe: Any = None  # an open sqlite3 connection to a SQLite store, for change_token
        self.requests = 0  # alias reads sent to the registry (shown by tests and benchmarks)

    def change_token(self) -> int | None:
        """A number that changes whenever another connection commits to the registry's SQLite database (SQLite's
        ``PRAGMA data_version`` on a connection kept open; ~20 us), so the poller can skip reading the aliases
        through MLflow (~10 ms of CPU under the GIL) when nothing was written. None when the store is not SQLite
        (a tracking server) or the probe fails: then every poll reads the aliases."""
        uri = str(self.tracker.tracking_uri)
        if not uri.startswith("sqlite:///"):
            return None
        try:
            if self._probe is None:
                import sqlite3
                from urllib.parse import quote

                path = uri[len("sqlite:///"):]
                self._probe = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, check_same_thread=False,
                                              isolation_level=None)
            return int(self._probe.execute("pragma data_version").fetchone()[0])
        except Exception:  # noqa: BLE001 - no probe: read the aliases every time
            self.close()
            return None

    def close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                probe.close()
            except Exception:  # noqa: BLE001
                pass

    def aliases_of(self, models: Sequence[str]) -> dict[str, dict[str, str]]:
        """The aliases of every served model in one registry request (a page of up to 1,000 registered models;
        more pages only past that), whatever the number of models: a replica polling every 2 s costs a tracking
        server one request, not one per model. A model missing from the registry has no aliases."""
        wanted = set(models)
        found: dict[str, dict[str, str]] = {name: {} for name in wanted}
        token: str | None = None
        try:
            while True:
                self.requests += 1
                page = self.tracker.client.search_registered_models(max_results=REGISTRY_PAGE, page_token=token)
                for registered in page:
                    if registered.name in wanted:
                        found[registered.name] = {alias: str(v) for alias, v in dict(registered.aliases).items()}
                token = page.token
                if not token:
                    return found
        except Exception as error:  # noqa: BLE001 - any failure to read means: keep serving what we have
            raise RegistryUnavailable(f"{type(error).__name__}: {error}") from error

    def servability(self, model: str, version: str) -> Servability:
        """May production serve this version (:func:`mlplatform.lib.servability.servability`, the rule promotion
        applies too)."""
        try:
            return servability(self.tracker.version_tags(model, version))
        except Exception as error:  # noqa: BLE001
            raise RegistryUnavailable(f"{type(error).__name__}: {error}") from error

    def canary_share(self, model: str, version: str) -> float | None:
        """The ``mlplatform.canary_share`` tag of a version (percent), None when it has none or it is not a number."""
        from mlplatform.lib.promotion import CANARY_SHARE_TAG

        try:
            text = self.tracker.version_tags(model, version).get(CANARY_SHARE_TAG)
        except Exception as error:  # noqa: BLE001
            raise RegistryUnavailable(f"{type(error).__name__}: {error}") from error
        try:
            return min(100.0, max(0.0, float(text))) if text is not None else None
        except ValueError:
            log.warning("serving %s: v%s has a canary share tag %r that is not a number; using the spec's", model,
                        version, text)
            return None

    def load(self, model: str, version: str) -> Any:
        """The sklearn pipeline of a version (not cached here: the watcher keeps the versions in use)."""
        import mlflow

        mlflow.set_tracking_uri(self.tracker.tracking_uri)
        mlflow.set_registry_uri(self.tracker.tracking_uri)
        return mlflow.sklearn.load_model(f"models:/{model}/{version}")


class ModelWatcher:
    """Polls the aliases of every served model and swaps in a new :class:`ServingState` when they move.

    A version that :func:`mlplatform.lib.servability.servability` refuses (its gates failed and no person forced it)
    is never loaded, whatever alias points at it: the model keeps the version it served for that role before (the
    refusal is shown in /v1/models and logged). When the registry cannot be read the state is kept as it is (with
    the error shown).
    """

    def __init__(self, specs: Sequence[ModelSpec], registry: Registry, poll_seconds: float = 2.0,
                 on_swap: Callable[[ServingState], None] | None = None, keep_versions: int = 4,
                 full_read_seconds: float = 30.0):
        self.registry = registry
        self.poll_seconds = poll_seconds
        self.full_read_seconds = full_read_seconds
        self.skipped_polls = 0
        self.on_swap = on_swap
        self.keep_versions = keep_versions
        self.state = ServingState({s.name: ModelState(spec=s, schema=RecordSchema(s)) for s in specs})
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._warned: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0

    def start(self) -> ModelWatcher:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        close = getattr(self.registry, "close", None)
        if close is not None:
            close()

    def _run(self) -> None:
        """Poll every ``poll_seconds``. With a SQLite registry, the aliases are read only when the database changed
        since the last read (or ``full_read_seconds`` passed): reading them through MLflow took ~10 ms of CPU
        holding the GIL, every 2 s, which requests arriving meanwhile waited for."""
        last_token: int | None = None
        last_read = float("-inf")
        while not self._stop.is_set():
            registry = self.registry  # (tests swap it)
            probe = getattr(registry, "change_token", None)
            token = probe() if probe is not None else None  # taken before the read: a later write is seen next time
            if token is None or token != last_token or time.monotonic() - last_read >= self.full_read_seconds:
                try:
                    state = self.refresh()
                    last_token, last_read = token, time.monotonic()
                    if any(m.registry_error for m in state.models.values()):
                        last_token = None  # a failed read is retried at the next poll
                except Exception:  # noqa: BLE001 - the poller must survive anything and keep the old state
                    log.exception("serving: refreshing the models failed; keeping the current ones")
                    last_token = None
            else:
                self.skipped_polls += 1
            self._stop.wait(self.poll_seconds)

    def refresh(self) -> ServingState:
        """Read every model's aliases once; load what moved; assign the new state if anything changed."""
        current = self.state
        loaded_before = set(self._loaded)
        try:
            every, error = self.registry.aliases_of(list(current.models)), None
        except RegistryUnavailable as unavailable:
            every, error = {}, unavailable
        models = {name: self._refresh_model(state, every.get(name, {}), error)
                  for name, state in current.models.items()}
        if any(_served(models[n]) != _served(s) for n, s in current.models.items()):
            self.swaps += 1
        new = ServingState(models)
        self.state = new  # the swap: one reference assignment
        self._forget_unused(new)
        if self._loaded.keys() != loaded_before:
            # Everything alive now (libraries, models) lives as long as the service: keep it out of the garbage
            # collector's full passes, which otherwise walk millions of such objects (~100 ms pauses: the p99).
            gc.freeze()
        if self.on_swap is not None:
            self.on_swap(new)
        return new

    def _refresh_model(self, state: ModelState, aliases: dict[str, str],
                       read_error: RegistryUnavailable | None) -> ModelState:
        name = state.spec.name
        try:
            if read_error is not None:
                raise read_error
            refused: dict[str, str] = {}
            champion = self._resolve(state, aliases.get(CHAMPION), state.champion, refused)
            challenger = self._resolve(state, aliases.get(CHALLENGER), state.challenger, refused)
            share = self._canary_share(state, champion, challenger)
        except RegistryUnavailable as error:
            if state.registry_error != str(error):
                log.warning("serving %s: registry unavailable (%s); keeping versions %s", name, error, _served(state))
            return replace(state, registry_error=str(error), checked_at=time.time())
        return replace(state, champion=champion, challenger=challenger, aliases=aliases, refused=refused,
                       registry_error=None, checked_at=time.time(), canary_share=share)

    def _canary_share(self, state: ModelState, champion: LoadedModel | None,
                      challenger: LoadedModel | None) -> float | None:
        """The canary's share from its version tag, for a spec with a canary stage or a ramp (others never tag it:
        no extra registry read for them). Read at every refresh, so a ramp step is followed like an alias move."""
        rollout = state.spec.rollout
        if (challenger is None or champion is None or challenger.version == champion.version
                or not (rollout.ramp or rollout.auto_promote == "canary")):
            return None
        return self.registry.canary_share(state.spec.name, challenger.version)

    def _resolve(self, state: ModelState, version: str | None, serving: LoadedModel | None,
                 refused: dict[str, str]) -> LoadedModel | None:
        """The model to serve for an alias pointing at ``version`` (None: the alias is not set)."""
        name = state.spec.name
        if version is None:
            return None
        if serving is not None and serving.version == version:
            return serving
        verdict = self.registry.servability(name, version)  # read again on every move: a person may have forced it
        cached = self._loaded.get((name, version))
        if cached is not None and verdict.servable:
            if cached.verdict != verdict:
                cached = self._loaded[(name, version)] = replace(cached, verdict=verdict)
            return cached
        if not verdict.servable:
            refused[version] = verdict.why_not or "not servable"
            if (name, version) not in self._warned:
                self._warned.add((name, version))
                log.warning("serving %s: refusing v%s (%s) although an alias points at it; serving %s",
                            name, version, verdict.why_not, f"v{serving.version}" if serving else "nothing for that role")
            return serving
        try:
            pipeline = self.registry.load(name, version)
        except Exception as error:  # noqa: BLE001 - a broken artifact must not take down what is served
            refused[version] = f"could not be loaded: {type(error).__name__}: {error}"
            log.exception("serving %s: loading v%s failed; keeping %s", name, version, serving and serving.version)
            return serving
        loaded = LoadedModel.of(state.spec, version, pipeline, verdict)
        self._loaded[(name, version)] = loaded
        if verdict.forced:
            log.warning("serving %s: loaded v%s, forced into production by %s (%s): %s", name, version,
                        verdict.forced_by, verdict.forced_override, verdict.forced_reason)
        else:
            log.info("serving %s: loaded v%s", name, version)
        return loaded

    def _forget_unused(self, state: ServingState) -> None:
        """Keep the versions in use plus a few recent ones (an alias moved back is then instant)."""
        in_use = {(m.spec.name, v.version) for m in state.models.values() for v in (m.champion, m.challenger) if v}
        spare = [k for k in self._loaded if k not in in_use]
        for key in spare[: max(0, len(spare) - self.keep_versions)]:
            del self._loaded[key]


def _served(state: ModelState) -> tuple[str | None, str | None]:
    return (state.champion.version if state.champion else None,
            state.challenger.version if state.challenger else None)
