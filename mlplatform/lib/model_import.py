"""Bring an existing model: a model trained elsewhere becomes a registered version, gated like any other.

``mlplatform import MODEL --file model.skops|model.pkl`` loads the file (skops by default: it refuses types it
does not trust instead of running them; pickle only when the caller allows it, because unpickling runs code),
refuses a model whose input columns do not match the spec, evaluates it on the spec's newest complete week,
runs every gate against the current champion on the same rows, and registers it through the Tracker with the
same tags a trained version carries (``gates``, ``gate.<name>``, the spec hashes), so promotion, serving and
monitoring treat it like any version. It records no training window or data fingerprint: it was not trained
here, so ``mlplatform reproduce`` refuses it and says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlplatform import names
from mlplatform.lib import gates as gate_lib
from mlplatform.lib.audit import AuditEvent
from mlplatform.lib.source import Window, rows_in_window, weeks_with_rows
from mlplatform.specs import ModelSpec

if TYPE_CHECKING:
    from mlplatform.lib.lifecycle import TrainedWeek
    from mlplatform.lib.tracking import Tracker

SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".pkl", ".pickle")
TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.")
"""skops types from these libraries (pinned with the platform) are trusted without asking; any other type the
file holds must be named with ``--trust`` (a type skops does not know could run code when it is built)."""

IMPORTED_FILE_TAG = "mlplatform.imported_file"
IMPORTED_SHA_TAG = "mlplatform.imported_sha256"
IMPORTED_BY_TAG = "mlplatform.imported_by"
IMPORTED_FORMAT_TAG = "mlplatform.imported_format"
IMPORTED_EVENT = "model_imported"


class ImportRefused(ValueError):
    """The file cannot become a version of the model; nothing was registered. The message says why and what to do."""


class NoEvaluationWeek(ValueError):
    """The spec has no complete week with rows (or its rows cannot be read): nothing to evaluate or train on."""


@dataclass
class LoadedFile:
    """A model read from a file, and what was trusted to read it."""

    model: Any
    file_format: str  # "skops" or "pickle"
    sha256: str
    trusted_types: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_file(path: Path, allow_pickle: bool = False, trust: Sequence[str] = ()) -> LoadedFile:
    """Read a model file: ``.skops`` through skops (types checked), ``.pkl``/``.pickle`` only with ``allow_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file; give the model file with --file")
    suffix = path.suffix.lower()
    sha = file_sha256(path)
    if suffix in SKOPS_SUFFIXES:
        return _load_skops(path, sha, trust)
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ImportRefused(
                f"{path.name} is a pickle file: loading a pickle runs whatever code it holds, so it is refused by "
                "default. Save the model with skops (skops.io.dump(model, 'model.skops')) and import that, or, if "
                "you trust where this file came from, give --allow-pickle")
        import pickle

        with path.open("rb") as handle:
            try:
                model = pickle.load(handle)  # noqa: S301 - explicitly allowed by the caller (--allow-pickle)
            except Exception as error:  # noqa: BLE001 - any failure to unpickle is the file's problem
                raise ImportRefused(f"{path.name}: not a loadable pickle ({type(error).__name__}: {error})") from None
        return LoadedFile(model, "pickle", sha, warnings=[
            f"{path.name} was loaded with pickle (--allow-pickle): unpickling runs the code the file holds; the "
            "platform stores the model with skops from here on"])
    raise ImportRefused(f"{path.name}: unknown model file type {suffix or '(none)'!r}; give a .skops file (or a "
                        ".pkl/.pickle file with --allow-pickle)")


def _load_skops(path: Path, sha: str, trust: Sequence[str]) -> LoadedFile:
    import skops.io

    try:
        untrusted = sorted(skops.io.get_untrusted_types(file=path))
    except Exception as error:  # noqa: BLE001 - a damaged or non-skops file
        raise ImportRefused(f"{path.name}: not a readable skops file ({type(error).__name__}: {error})") from None
    unknown = [t for t in untrusted if not t.startswith(TRUSTED_MODULES) and t not in set(trust)]
    if unknown:
        raise ImportRefused(
            f"{path.name} holds types outside scikit-learn, NumPy and SciPy that skops does not trust: "
            f"{', '.join(unknown)}. Building them could run code; if you know and trust them, name each with "
            "--trust TYPE")
    try:
        model = skops.io.load(path, trusted=untrusted)
    except Exception as error:  # noqa: BLE001
        raise ImportRefused(f"{path.name}: skops could not load it ({type(error).__name__}: {error})") from None
    return LoadedFile(model, "skops", sha, trusted_types=untrusted)


def input_problem(model: Any, spec: ModelSpec) -> str | None:
    """Why ``model`` cannot take the spec's feature columns (or give the spec's kind of answer); None when it can."""
    features = spec.feature_columns
    if not hasattr(model, "predict"):
        return f"a {type(model).__name__} has no predict method: not a scikit-learn estimator or pipeline"
    names_in = getattr(model, "feature_names_in_", None)
    if names_in is not None:
        fitted = [str(c) for c in names_in]
        missing, extra = [c for c in features if c not in fitted], [c for c in fitted if c not in features]
        if missing or extra:
            return (f"its input columns do not match the spec {spec.name}: the model was fitted on {fitted}; the spec's "
                    f"features are {features}"
                    + (f"; not in the model: {missing}" if missing else "")
                    + (f"; not features of the spec: {extra}" if extra else "")
                    + ". Refit it on the spec's feature columns, or change the spec's features")
    else:
        count = getattr(model, "n_features_in_", None)
        if count is None:
            return (f"a {type(model).__name__} records neither feature_names_in_ nor n_features_in_: it does not look "
                    "fitted; fit it before saving")
        if int(count) != len(features):
            return (f"its input columns do not match the spec {spec.name}: the model takes {int(count)} columns, the "
                    f"spec has {len(features)} features {features}. Refit it on those columns (in that order, or "
                    "fit on a DataFrame so the names are recorded)")
    classes = getattr(model, "classes_", None)
    if spec.task == "regression" and classes is not None:
        return f"it is a classifier (classes {list(classes)}) and the spec's task is regression"
    if spec.task != "regression":
        if classes is None:
            return f"it is not a classifier (no classes_) and the spec's task is {spec.task}"
        if spec.task == "binary" and (len(classes) != 2 or not hasattr(model, "predict_proba")):
            return f"a binary spec needs two classes and predict_proba; the model has classes {list(classes)}"
    return None


def platform_pipeline(model: Any, spec: ModelSpec, x: pd.DataFrame) -> Any:
    """The imported model behind the platform's two steps: ``preprocess`` selects the spec's feature columns in the
    order the model was fitted on (passed through unchanged), ``estimator`` is the model as it came.

    The step names are what explanations and serving read (as for an ``estimator.factory`` model). A model fitted
    without column names gets an array of the spec's features in the spec's order.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    names_in = getattr(model, "feature_names_in_", None)
    order = [str(c) for c in names_in] if names_in is not None else spec.feature_columns
    numeric = [c for c in order if c in spec.features.numeric]
    categorical = [c for c in order if c in spec.features.categorical]
    if order == numeric + categorical:  # named like build_pipeline's steps, so numbers are typed as numbers
        parts = [(kind, "passthrough", columns) for kind, columns in
                 (("numeric", numeric), ("categorical", categorical)) if columns]
    else:
        parts = [("columns", "passthrough", order)]
    select = ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)
    if names_in is not None:
        select.set_output(transform="pandas")
    select.fit(x)
    return Pipeline([("preprocess", select), ("estimator", model)])


def complete_weeks(spec: ModelSpec, today: date) -> list[str]:
    """The spec's weeks (Mondays, ISO dates) that have ended by ``today``; a snapshot has its one week."""
    start = spec.partitions.start
    if spec.source.timestamp is None:
        return [start.isoformat()]
    end = min(spec.partitions.end or today, today)
    weeks, week = [], start
    while week + timedelta(days=7) <= end:
        weeks.append(week.isoformat())
        week += timedelta(days=7)
    return weeks


def newest_week(spec: ModelSpec, today: date) -> str:
    """The newest complete week whose source holds rows: what an import is evaluated on and ``check`` trains for."""
    weeks = weeks_with_rows(spec, complete_weeks(spec, today))
    if not weeks:
        raise NoEvaluationWeek(f"{spec.name}: no complete week with rows in {spec.source_path} (partitions from "
                            f"{spec.partitions.start}); nothing to evaluate on")
    return weeks[-1]


def evaluated_week(spec: ModelSpec, pipeline: Any, features: pd.DataFrame, week: str) -> TrainedWeek:
    """Score ``pipeline`` on week W's rows with the weekly step's metrics, gates, plots and explanation.

    The result is a :class:`~mlplatform.lib.lifecycle.TrainedWeek` with no training rows, so the champion
    comparison and the explanation artifacts are the weekly step's own.
    """
    from mlplatform.lib.lifecycle import (
        TrainedWeek,
        explain_version,
        fairness_check,
        training_and_evaluation_rows,
        training_window,
    )
    from mlplatform.lib.metrics import evaluate
    from mlplatform.lib.plots import classification_plots, regression_plots
    from mlplatform.lib.training import SEED, encode_target, fingerprint, predict, split_xy

    week_start = datetime.fromisoformat(week)
    _, evaluation, _ = training_and_evaluation_rows(spec, features, week_start)
    if evaluation.empty:
        raise ImportRefused(f"{spec.name}: week {week} has no features rows to evaluate the model on")
    x_eval, y_eval = split_xy(evaluation, spec)
    threshold = spec.decision_threshold
    try:
        scored = predict(pipeline, x_eval, spec.task, threshold)
    except Exception as error:  # noqa: BLE001 - the model's own code failed on the spec's rows
        raise ImportRefused(f"{spec.name}: the model failed on week {week}'s rows ({type(error).__name__}: {error}); "
                            "it does not take the spec's feature columns as the platform gives them") from None
    y_metric = encode_target(y_eval, spec.task, scored.classes)
    metrics = evaluate(spec.task, y_metric, scored.score, seed=SEED, threshold=threshold, extra=tuple(spec.metrics))
    plots = (regression_plots(y_metric, scored.score, spec.name) if spec.task == "regression"
             else classification_plots(y_metric, scored.score, spec.task, spec.name, threshold))
    rules = spec.columns.get(spec.target)
    y_known = features[spec.target].dropna().to_numpy()  # the target as the data knows it: the week and the days before
    if spec.task == "regression":
        y_known = y_known.astype("float64")
    sanity = gate_lib.sanity_gate(
        spec.task, scored.label,
        allowed_range=gate_lib.prediction_range(y_known, rules.min if rules else None, rules.max if rules else None)
        if spec.task == "regression" else None,
        allowed_classes=(list(rules.categories) if rules and rules.categories else list(np.unique(y_known)))
        if spec.task != "regression" else None,
    )
    metric = spec.primary_metric
    predictions = pd.DataFrame({
        "week": pd.Timestamp(week_start).normalize(),
        spec.time_column: evaluation[spec.time_column].to_numpy(),
        **{key: evaluation[key].to_numpy() for key in spec.source.key if key != spec.time_column},
        "actual": y_metric, "prediction": scored.score, "predicted_label": [str(v) for v in scored.label],
    })
    importance, explain_note, background = explain_version(spec, pipeline, x_eval, x_eval, y_metric)
    eval_window = Window(week_start, week_start + timedelta(days=7))
    reference = training_window(spec, week_start)
    return TrainedWeek(
        week, eval_window, 0, len(evaluation), "", pipeline, x_eval.head(5), x_eval, y_metric, scored, metrics, plots,
        gate_lib.threshold_gate(metric, metrics[metric].value, spec.gates.threshold), sanity, None,
        {"estimator": f"imported {type(pipeline.named_steps['estimator']).__name__}", "task": spec.task,
         "target": spec.target, "eval_week": week, "eval_rows": len(evaluation),
         # drift monitoring compares production inputs with the champion's train_start..train_end; an imported
         # model's own training rows are unknown, so that reference is the spec's training window before the week
         "train_start": f"{reference.start:%Y-%m-%d}", "train_end": f"{reference.end:%Y-%m-%d}",
         "imported": "trained elsewhere; train_start..train_end is the drift reference window, not its training rows"},
        predictions, fairness_check(spec, evaluation, y_metric, scored.score), fingerprint(evaluation, spec),
        importance, explain_note, background,
    )


@dataclass
class ImportResult:
    model: str
    version: str
    run_id: str
    week: str
    gates: list[gate_lib.GateOutcome]
    champion_version: str | None
    loaded: LoadedFile

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def lines(self) -> list[str]:
        out = [f"{self.model}: imported as v{self.version} ({self.loaded.file_format}, sha256 "
               f"{self.loaded.sha256[:16]}), evaluated on week {self.week} (MLflow run {self.run_id})"]
        if self.loaded.trusted_types:
            out.append(f"  skops types trusted: {', '.join(self.loaded.trusted_types)}")
        out += [f"  {'pass' if g.passed else 'FAIL'}  {g.name}: {g.reason}" for g in self.gates]
        out.append(f"  gates {'passed' if self.passed else 'failed'}: "
                   + (f"promote it with `mlplatform promote {self.model} --version {self.version} --by NAME`"
                      if self.passed else "production will not serve it (promote --force overrides, audited)"))
        return out


def register_import(spec: ModelSpec, trained: TrainedWeek, loaded: LoadedFile, tracker: Tracker, file_name: str,
                    actor: str, reason: str) -> ImportResult:
    """Gate the evaluated model against the current champion and register it with a trained version's tags.

    No alias moves: a person promotes it (``mlplatform promote``), as every approval.
    """
    from mlplatform.lib.aliases import CHAMPION
    from mlplatform.lib.lifecycle import _jsonable, explanation_artifacts, gate_outcomes, logged_metrics
    from mlplatform.lib.spec_hash import SPEC_ARTIFACT, normalized_spec, spec_tags

    champion = tracker.alias_version(spec.name, CHAMPION)
    outcomes = gate_outcomes(spec, trained, tracker, champion)
    passed = all(g.passed for g in outcomes)
    provenance = {IMPORTED_FILE_TAG: file_name, IMPORTED_SHA_TAG: loaded.sha256, IMPORTED_BY_TAG: actor,
                  IMPORTED_FORMAT_TAG: loaded.file_format}
    recorded_spec = spec_tags(spec)
    tags = {"mlplatform.model": spec.name, "mlplatform.week": trained.week,
            "data.eval_fingerprint": trained.eval_fingerprint, "mlflow.note.content": reason, **recorded_spec,
            **provenance}
    version_tags = {"week": trained.week, "gates": "passed" if passed else "failed",
                    **{f"gate.{g.name}": "passed" if g.passed else "failed" for g in outcomes},
                    **recorded_spec, **provenance}
    gate_report = {g.name: {"passed": g.passed, "reason": g.reason, **_jsonable(g.facts)} for g in outcomes}
    logged = tracker.log_trained_model(
        spec.name, f"{spec.name}-import-{trained.week}", trained.pipeline, trained.x_example, trained.params,
        logged_metrics(trained.metrics), tags,
        {**trained.plots, names.GATES_ARTIFACT: json.dumps(gate_report, indent=2),
         SPEC_ARTIFACT: json.dumps(normalized_spec(spec), indent=2, sort_keys=True),
         **explanation_artifacts(spec, trained)}, version_tags)
    return ImportResult(spec.name, logged.version, logged.run_id, trained.week, outcomes, champion, loaded)


def import_events(spec: ModelSpec, result: ImportResult, file_name: str, actor: str, reason: str) -> list[AuditEvent]:
    """The audit trail's record of an import: who brought which file (its SHA-256) and why, then each gate."""
    primary = spec.primary_metric
    common = {"version": result.version, "week": result.week, "mlflow_run_id": result.run_id}
    imported = AuditEvent(
        spec.name, IMPORTED_EVENT, actor,
        f"v{result.version} imported from {file_name} ({result.loaded.file_format}, sha256 "
        f"{result.loaded.sha256[:12]}): {reason}",
        details={"file": file_name, "sha256": result.loaded.sha256, "format": result.loaded.file_format,
                 "reason": reason, "trusted_types": result.loaded.trusted_types,
                 "gates": "passed" if result.passed else "failed", "metric": primary}, **common)
    gates = [AuditEvent(spec.name, "gate", actor, f"{g.name}: {g.reason}", passed=g.passed, details={"gate": g.name},
                        **common) for g in result.gates]
    return [imported, *gates]


def week_features(spec: ModelSpec, week: str, warehouse: Path) -> pd.DataFrame:
    """The features rows of week W (and the days before it the weekly step reads) as the data stands now."""
    from mlplatform.lib.lifecycle import rows_needed
    from mlplatform.lib.reproduce import ReproductionRefused, current_rows

    week_start = datetime.fromisoformat(week)
    try:
        frame, _ = current_rows(spec, rows_needed(spec, week_start), warehouse)
    except ReproductionRefused as refused:
        raise NoEvaluationWeek(str(refused)) from None
    return rows_in_window(frame, spec.time_column, rows_needed(spec, week_start))
