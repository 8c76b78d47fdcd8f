"""One week of a model's life: train on the window before week W, evaluate on W, gate, decide aliases.

This is where a reader finds the whole decision: which rows train, which rows evaluate,
how the challenger is compared with the champion, and when an alias moves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlplatform.lib import gates as gate_lib
from mlplatform.lib.aliases import CHALLENGER, CHAMPION
from mlplatform.lib.metrics import MetricEstimate, evaluate, paired_bootstrap
from mlplatform.lib.plots import classification_plots, regression_plots
from mlplatform.lib.source import Window, rows_in_window
from mlplatform.lib.training import SEED, Predictions, build_pipeline, encode_target, fingerprint, predict, split_xy
from mlplatform.specs import ModelSpec

if TYPE_CHECKING:  # MLflow is imported by the deciding process only, never by training workers
    from mlplatform.lib.tracking import Tracker


@dataclass
class AliasChange:
    model: str
    alias: str
    version: str
    previous_version: str | None
    actor: str
    reason: str
    week: str | None
    changed_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))

    def as_row(self) -> dict[str, Any]:
        return {"changed_at": self.changed_at, "model": self.model, "alias": self.alias, "version": self.version,
                "previous_version": self.previous_version, "actor": self.actor, "reason": self.reason,
                "week": self.week}


@dataclass
class WeekResult:
    week: str
    version: str
    run_id: str
    experiment_id: str
    train_window: Window
    train_rows: int
    eval_rows: int
    fingerprint: str
    metrics: dict[str, MetricEstimate]
    gates: list[gate_lib.GateOutcome]
    alias_changes: list[AliasChange]
    predictions: pd.DataFrame
    plots: dict[str, bytes]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def training_window(spec: ModelSpec, week_start: datetime) -> Window:
    """The N weeks strictly before week W: what week W's model trains on."""
    return Window(week_start - pd.Timedelta(weeks=spec.partitions.training_window_weeks), week_start)


def split_train_eval(features: pd.DataFrame, spec: ModelSpec, week_start: datetime) -> tuple[pd.DataFrame, pd.DataFrame, Window]:
    """Training rows: the N weeks strictly before W; evaluation rows: week W only. Never overlapping."""
    train_window = training_window(spec, week_start)
    eval_window = Window(week_start, week_start + pd.Timedelta(weeks=1))
    train = rows_in_window(features, spec.time_column, train_window)
    evaluation = rows_in_window(features, spec.time_column, eval_window)
    return train, evaluation, train_window


@dataclass
class TrainingHalted:
    """Week W was not trained: the training-data gate failed (its outcome says why)."""

    week: str
    gate: gate_lib.GateOutcome


def recent_inputs(features: pd.DataFrame, spec: ModelSpec, week_start: datetime,
                  production_inputs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, str]:
    """What production saw lately: the prediction log's inputs when given, else the features of the days before W."""
    days = spec.gates.training_data.recent_days
    if production_inputs is not None and not production_inputs.empty:
        return production_inputs, f"{len(production_inputs)} logged production inputs of the last {days} days"
    start = week_start - pd.Timedelta(days=days)
    recent = rows_in_window(features, spec.time_column, Window(start, week_start))
    return recent, f"the {days} days before {week_start:%Y-%m-%d} ({start:%Y-%m-%d}..)"


def training_data_check(spec: ModelSpec, train: pd.DataFrame, recent: pd.DataFrame,
                        recent_label: str) -> gate_lib.GateOutcome:
    """The training-data gate: the training window against recent production inputs, with the drift tests.

    Its method is ``gates.training_data.method``, else ``drift.method`` (with drift's alpha and effect floor).
    """
    from mlplatform.lib.drift import drift_report, profile_reference, settings_from_spec

    if recent.empty:
        return gate_lib.training_data_gate(None, recent_label)
    gate = spec.gates.training_data
    profile = profile_reference(train, spec.features.numeric, spec.features.categorical)
    report = drift_report(gate.method or spec.drift.method, profile, recent, gate.max_drifted_share,
                          settings_from_spec(spec.drift))
    return gate_lib.training_data_gate(report, recent_label)


def alias_changes_for(spec: ModelSpec, version: str, passed: bool, current: dict[str, str | None],
                      week: str, actor: str) -> list[AliasChange]:
    """Only a version that passed every gate moves an alias: challenger always, champion when approval is auto."""
    if not passed:
        return []
    changes = [AliasChange(spec.name, CHALLENGER, version, current.get(CHALLENGER), actor,
                           f"passed every gate on week {week}", week)]
    if spec.rollout.approval == "auto":
        changes.append(AliasChange(spec.name, CHAMPION, version, current.get(CHAMPION), actor,
                                   f"approval: auto; passed every gate on week {week}", week))
    return changes


def rows_needed(spec: ModelSpec, week_start: datetime) -> Window:
    """The features rows week W reads: its training window, the recent days the data gate compares, the week."""
    back = max(pd.Timedelta(weeks=spec.partitions.training_window_weeks),
               pd.Timedelta(days=spec.gates.training_data.recent_days))
    return Window(week_start - back, week_start + pd.Timedelta(weeks=1))


@dataclass
class TrainedWeek:
    """Week W's model and everything about it that does not depend on the champion.

    Computed by :func:`train_week`, possibly in a worker process; :func:`decide_week` then adds
    the champion comparison, the registry version and the aliases, in week order.
    """

    week: str
    train_window: Window
    train_rows: int
    eval_rows: int
    fingerprint: str
    pipeline: Any
    x_example: pd.DataFrame
    x_eval: pd.DataFrame
    y_metric: np.ndarray
    challenger: Predictions
    metrics: dict[str, MetricEstimate]
    plots: dict[str, bytes]
    threshold_gate: gate_lib.GateOutcome
    sanity_gate: gate_lib.GateOutcome
    data_gate: gate_lib.GateOutcome | None
    params: dict[str, Any]
    predictions: pd.DataFrame  # per evaluation row; the version column is added once registered


def train_week(spec: ModelSpec, features: pd.DataFrame, week_start: datetime,
               production_inputs: pd.DataFrame | None = None) -> TrainedWeek | TrainingHalted | str:
    """Fit on the window before week W and score week W; a string explains why the week was skipped.

    The training-data gate runs first: when it fails nothing is trained (TrainingHalted).
    Pure: no store is touched, so weeks can train in parallel.
    """
    week = week_start.date().isoformat()
    train, evaluation, train_window = split_train_eval(features, spec, week_start)
    if train.empty:
        return f"week {week}: no features rows in the {spec.partitions.training_window_weeks} weeks before it to train on"
    if evaluation.empty:
        return f"week {week}: no features rows in the week to evaluate on"
    x_train, y_train = split_xy(train, spec)
    if spec.task != "regression" and len(np.unique(y_train)) < 2:
        return f"week {week}: the training window holds a single class of {spec.target}; cannot fit a classifier"
    data_gate = None
    if spec.gates.training_data.enabled:
        data_gate = training_data_check(spec, train, *recent_inputs(features, spec, week_start, production_inputs))
        if not data_gate.passed:
            return TrainingHalted(week, data_gate)

    pipeline = build_pipeline(spec)
    pipeline.fit(x_train, y_train)
    x_eval, y_eval = split_xy(evaluation, spec)
    challenger = predict(pipeline, x_eval, spec.task)
    y_metric = encode_target(y_eval, spec.task, challenger.classes)
    metrics = evaluate(spec.task, y_metric, challenger.score, seed=SEED)
    metric = spec.primary_metric
    plots = (regression_plots(y_metric, challenger.score, spec.name) if spec.task == "regression"
             else classification_plots(y_metric, challenger.score, spec.task, spec.name))
    rules = spec.columns.get(spec.target)
    sanity = gate_lib.sanity_gate(
        spec.task, challenger.label,
        allowed_range=gate_lib.prediction_range(y_train, rules.min if rules else None, rules.max if rules else None)
        if spec.task == "regression" else None,
        allowed_classes=list(np.unique(y_train)) if spec.task != "regression" else None,
    )
    params = {
        "estimator": spec.estimator.class_name, **{f"estimator.{k}": v for k, v in spec.estimator.params.items()},
        "seed": SEED, "task": spec.task, "target": spec.target,
        "features.numeric": ",".join(spec.features.numeric), "features.categorical": ",".join(spec.features.categorical),
        "training_window_weeks": spec.partitions.training_window_weeks,
        "train_start": f"{train_window.start:%Y-%m-%d}", "train_end": f"{train_window.end:%Y-%m-%d}",
        "eval_week": week, "train_rows": len(train), "eval_rows": len(evaluation),
    }
    predictions = pd.DataFrame({
        "week": pd.Timestamp(week_start).normalize(),
        spec.time_column: evaluation[spec.time_column].to_numpy(),
        **{key: evaluation[key].to_numpy() for key in spec.source.key if key != spec.time_column},
        "actual": y_metric, "prediction": challenger.score, "predicted_label": [str(v) for v in challenger.label],
    })
    return TrainedWeek(
        week, train_window, len(train), len(evaluation), fingerprint(train, spec), pipeline, x_train.head(5), x_eval,
        y_metric, challenger, metrics, plots, gate_lib.threshold_gate(metric, metrics[metric].value, spec.gates.threshold),
        sanity, data_gate, params, predictions,
    )


def decide_week(spec: ModelSpec, trained: TrainedWeek, tracker: Tracker, actor: str,
                dagster_run_id: str | None = None) -> WeekResult:
    """Compare with the current champion on week W's rows, log and register the version, move aliases.

    Runs in week order in one process: each week's champion is whatever the weeks before left.
    """
    week, metric = trained.week, spec.primary_metric
    champion_version = tracker.alias_version(spec.name, CHAMPION)
    comparison = None
    if champion_version is not None:
        champion_model = tracker.load_version(spec.name, champion_version)
        champion_pred = predict(champion_model, trained.x_eval, spec.task)
        champion_score = champion_pred.score
        if spec.task == "multiclass":  # align label indices to the challenger's classes
            index = {c: i for i, c in enumerate(trained.challenger.classes or [])}
            champion_score = np.array([index.get(c, -1) for c in champion_pred.label], dtype=float)
        comparison = paired_bootstrap(metric, trained.y_metric, trained.challenger.score, champion_score, seed=SEED)

    outcomes = [
        trained.threshold_gate,
        gate_lib.champion_gate(comparison, spec.gates.beat_champion.alpha, champion_version),
        trained.sanity_gate,
    ] + ([trained.data_gate] if trained.data_gate is not None else [])
    metrics = trained.metrics
    metric_values = {name: estimate.value for name, estimate in metrics.items() if np.isfinite(estimate.value)}
    metric_values |= {f"{name}_ci_low": e.low for name, e in metrics.items() if np.isfinite(e.low)}
    metric_values |= {f"{name}_ci_high": e.high for name, e in metrics.items() if np.isfinite(e.high)}
    window = trained.train_window
    tags = {"mlplatform.model": spec.name, "mlplatform.week": week, "data.fingerprint": trained.fingerprint,
            "data.train_window": f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}",
            **({"dagster.run_id": dagster_run_id} if dagster_run_id else {})}
    gate_report = {g.name: {"passed": g.passed, "reason": g.reason, **_jsonable(g.facts)} for g in outcomes}
    passed = all(g.passed for g in outcomes)
    version_tags = {
        "week": week, "gates": "passed" if passed else "failed",
        **{f"gate.{g.name}": "passed" if g.passed else "failed" for g in outcomes},
        "data.fingerprint": trained.fingerprint,
    }
    logged = tracker.log_trained_model(
        spec.name, f"{spec.name}-{week}", trained.pipeline, trained.x_example, trained.params, metric_values, tags,
        {**trained.plots, "gates.json": json.dumps(gate_report, indent=2)}, version_tags,
    )
    current = {alias: tracker.alias_version(spec.name, alias) for alias in (CHALLENGER, CHAMPION)}
    changes = alias_changes_for(spec, logged.version, passed, current, week, actor)
    for change in changes:
        tracker.set_alias(spec.name, change.alias, change.version)
    predictions = trained.predictions.assign(model_version=logged.version)
    return WeekResult(week, logged.version, logged.run_id, logged.experiment_id, window, trained.train_rows,
                      trained.eval_rows, trained.fingerprint, metrics, outcomes, changes, predictions, trained.plots)


def run_week(spec: ModelSpec, features: pd.DataFrame, week_start: datetime, tracker: Tracker,
             actor: str, dagster_run_id: str | None = None,
             production_inputs: pd.DataFrame | None = None) -> WeekResult | TrainingHalted | str:
    """Train, log, evaluate, gate and promote week W in this process; a string explains why it was skipped."""
    trained = train_week(spec, features, week_start, production_inputs)
    if not isinstance(trained, TrainedWeek):
        return trained
    return decide_week(spec, trained, tracker, actor, dagster_run_id)


WORKERS_ENV = "MLPLATFORM_TRAINING_WORKERS"
MIN_ROWS_FOR_WORKERS = 50_000
"""Below this many rows per training window a fit takes well under a second: starting worker
processes (~3 s) would cost more than training weeks side by side saves."""


def training_workers(n_weeks: int, window_rows: int) -> int:
    """Worker processes for a run of ``n_weeks``: MLPLATFORM_TRAINING_WORKERS when set, else one per core for
    big windows (1 means train in this process)."""
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        try:
            workers = int(configured)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={configured!r}: expected a whole number of worker processes "
                             "(1 trains in the run's own process)") from None
    else:
        workers = (os.cpu_count() or 1) if window_rows >= MIN_ROWS_FOR_WORKERS else 1
    return max(1, min(workers, n_weeks))


@contextmanager
def deciding_threads(workers: int) -> Iterator[None]:
    """While ``workers`` processes train on every core, the deciding process runs single-threaded.

    Its OpenMP/BLAS threads would spin against the busy workers: scoring the champion took
    ~10x longer (0.5 s instead of 0.05 s a week at 12,500 rows).
    """
    if workers <= 1:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def workers_for_run(spec: ModelSpec, features: pd.DataFrame, week_starts: Sequence[datetime]) -> int:
    """:func:`training_workers` for a run, sized by the rows of its last (fullest) week's training window."""
    window = training_window(spec, week_starts[-1])
    return training_workers(len(week_starts), len(rows_in_window(features, spec.time_column, window)))


def train_weeks(spec: ModelSpec, features: pd.DataFrame, week_starts: Sequence[datetime],
                workers: int = 1) -> Iterator[TrainedWeek | TrainingHalted | str]:
    """:func:`train_week` for each week, yielded in week order.

    With ``workers`` > 1 the weeks train side by side in worker processes (joblib/loky; each
    fit gets cores / workers threads) while the caller decides the weeks already done: a
    backfill's fits overlap its MLflow and Dagster bookkeeping. Results are identical either way.
    """
    if workers <= 1 or len(week_starts) < 2:
        for week_start in week_starts:
            yield train_week(spec, features, week_start)
        return
    from joblib import Parallel, delayed

    # max_nbytes=None: send plain copies (no read-only memory maps); pre_dispatch bounds the weeks in flight.
    parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator", max_nbytes=None,
                        pre_dispatch=f"{2 * workers}")
    yield from parallel(delayed(train_week)(spec, rows_in_window(features, spec.time_column, rows_needed(spec, week)), week)
                        for week in week_starts)


def _jsonable(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in facts.items()}
