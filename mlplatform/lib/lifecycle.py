"""One week of a model's life: train on the window before week W, evaluate on W, gate, decide aliases.

This is where a reader finds the whole decision: which rows train, which rows evaluate,
how the challenger is compared with the champion, and when an alias moves.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd

from mlplatform import names
from mlplatform.lib import audit_integrity, promotion
from mlplatform.lib import gates as gate_lib
from mlplatform.lib.aliases import CHALLENGER, CHAMPION
from mlplatform.lib.audit import AuditEvent, append_events
from mlplatform.lib.explain import Importance
from mlplatform.lib.metrics import MetricEstimate, evaluate, paired_bootstrap
from mlplatform.lib.plots import classification_plots, regression_plots
from mlplatform.lib.promotion import AliasChange
from mlplatform.lib.source import Window, rows_in_window
from mlplatform.lib.spec_hash import GATES_HASH_TAG, SPEC_ARTIFACT, normalized_spec, spec_hash, spec_tags
from mlplatform.lib.table_schemas import evaluations_schema, predictions_schema, validate_table
from mlplatform.lib.training import (
    CODE_FACTORY_TAG,
    CODE_FINGERPRINT_TAG,
    SEED,
    Predictions,
    build_pipeline,
    code_tags,
    encode_target,
    fingerprint,
    predict,
    split_xy,
)
from mlplatform.lib.warehouse import lock_model, replace_week_rows
from mlplatform.specs import ModelSpec
from mlplatform.specs.team_metrics import register_spec_metrics

if TYPE_CHECKING:  # MLflow is imported by the deciding process only, never by training workers
    from mlplatform.lib.metrics import PairedComparison
    from mlplatform.lib.tracking import Tracker


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
    predictions: pd.DataFrame
    plots: dict[str, bytes]
    champion_version: str | None = None  # what the champion gate compared with
    alias_changes: list[AliasChange] = field(default_factory=list)
    alias_note: str = ""  # why aliases moved or not
    importance: Importance | None = None  # global feature importance (None: see explain_note)
    explain_note: str = ""
    importance_png: bytes | None = None
    artifact_uri: str = ""  # where the run's artifacts (model card, importance) are stored
    code: dict[str, str] = field(default_factory=dict)  # the team's factory and its module's fingerprint (code_tags)


def training_window(spec: ModelSpec, week_start: datetime, since: datetime | None = None) -> Window:
    """The N weeks strictly before week W: what week W's model trains on; from ``since`` instead when a concept
    change came inside them (:func:`mlplatform.lib.recovery.training_start`: only the new regime)."""
    normal = week_start - pd.Timedelta(weeks=spec.partitions.training_window_weeks)
    return Window(max(normal, since) if since is not None and since < week_start else normal, week_start)


def split_train_eval(features: pd.DataFrame, spec: ModelSpec, week_start: datetime,
                     since: datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Window]:
    """Training rows: the N weeks strictly before W (from ``since`` after a concept change); evaluation rows: week W
    only. Never overlapping."""
    train_window = training_window(spec, week_start, since)
    eval_window = Window(week_start, week_start + pd.Timedelta(weeks=1))
    train = rows_in_window(features, spec.time_column, train_window)
    evaluation = rows_in_window(features, spec.time_column, eval_window)
    return train, evaluation, train_window


SNAPSHOT_EVALUATION_SHARE = 0.3
"""Share of a snapshot's rows held out for evaluation (docs/fairness.md: how a snapshot dataset is handled)."""


def snapshot_holdout(rows: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A snapshot (no event time) has one week and no earlier week to train on: hold out a fixed share of its rows.

    Each row's side is decided by a hash of its content, not by its position: the split is the same on every
    run whatever order the warehouse returns the rows in, and identical rows never sit on both sides.
    """
    columns = [c for c in spec.modelling_columns if c in rows.columns and c != spec.time_column]
    hashed = pd.util.hash_pandas_object(rows[columns], index=False, hash_key=f"mlplatform{SEED:06d}").to_numpy()
    held_out = (hashed % 1000) < SNAPSHOT_EVALUATION_SHARE * 1000
    return rows[~held_out], rows[held_out]


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


@dataclass(frozen=True)
class WindowCandidate:
    """One training window tried after a concept change, scored out of time on the newest labelled week."""

    name: str
    start: datetime
    validation: float | None  # the primary metric on the newest week, trained on the weeks before it (None: untried)
    train_rows: int
    note: str = ""


@dataclass(frozen=True)
class WindowChoice:
    """The window a week after a concept change trains on, and the evidence: each candidate's out-of-time score."""

    start: datetime
    chosen: str
    candidates: list[WindowCandidate]
    metric: str

    def text(self) -> str:
        tried = "; ".join(f"{c.name} from {c.start:%Y-%m-%d}: "
                          + (f"{self.metric} {c.validation:.4g} ({c.train_rows} rows)" if c.validation is not None
                             else c.note) for c in self.candidates)
        return f"{self.chosen} chosen ({tried})"


def choose_window(spec: ModelSpec, features: pd.DataFrame, week_start: datetime, change_start: datetime) -> WindowChoice:
    """After a concept change, the change-point window (from ``change_start``) or the spec's window, by evidence.

    Each candidate is trained on its window up to the newest labelled week before W (W-1) and scored on W-1 (out of
    time; week W stays the version's own evaluation). The better score wins; a candidate with nothing to train on
    before W-1 cannot be scored, and then the change-point window is kept (the recovery's default): it is the only
    one that holds no week of the old regime.
    """
    from mlplatform.lib.metrics import metric_value
    from mlplatform.specs.tasks import is_lower_better

    newest = week_start - pd.Timedelta(weeks=1)
    normal = training_window(spec, week_start).start
    held = rows_in_window(features, spec.time_column, Window(newest, week_start))
    metric = spec.primary_metric
    candidates = []
    for name, start in ((f"change-point window ({(week_start - change_start).days // 7} weeks)", change_start),
                        (f"the spec's {spec.partitions.training_window_weeks}-week window", normal)):
        train = rows_in_window(features, spec.time_column, Window(start, newest))
        if train.empty or held.empty:
            candidates.append(WindowCandidate(name, start, None, len(train),
                                              "not scored: no week before the newest to train on"))
            continue
        x_train, y_train = split_xy(train, spec)
        if spec.task != "regression" and len(np.unique(y_train)) < 2:
            candidates.append(WindowCandidate(name, start, None, len(train), "not scored: a single class"))
            continue
        pipeline = build_pipeline(spec)
        pipeline.fit(x_train, y_train)
        x_held, y_held = split_xy(held, spec)
        scored = predict(pipeline, x_held, spec.task, spec.decision_threshold)
        value = metric_value(metric, encode_target(y_held, spec.task, scored.classes), scored.score,
                             spec.decision_threshold)
        candidates.append(WindowCandidate(name, start, float(value) if np.isfinite(value) else None, len(train),
                                          "" if np.isfinite(value) else "not scored: undefined on the newest week"))
    change, usual = candidates
    chosen = change
    if change.validation is not None and usual.validation is not None:
        better = usual.validation < change.validation if is_lower_better(metric) else usual.validation > change.validation
        chosen = usual if better else change
    return WindowChoice(chosen.start, chosen.name, candidates, metric)


def training_data_check(spec: ModelSpec, train: pd.DataFrame, recent: pd.DataFrame,
                        recent_label: str) -> gate_lib.GateOutcome:
    """The training-data gate: the training window against recent production inputs, with the drift tests.

    Its method is ``gates.training_data.method``, else ``drift.method`` (with drift's alpha and effect floor).
    """
    from mlplatform.lib.drift import drift_report, profile_reference, settings_from_spec
    from mlplatform.lib.text import add_current_proxies, add_reference_proxies, proxy_columns

    if recent.empty:
        return gate_lib.training_data_gate(None, recent_label)
    gate = spec.gates.training_data
    text = spec.features.text  # compared through per-document numbers, as drift does (mlplatform.lib.text)
    if text:
        train, vocabularies = add_reference_proxies(train, text)
        recent = add_current_proxies(recent, text, vocabularies)
    profile = profile_reference(train, [*spec.features.numeric, *proxy_columns(text)], spec.features.categorical)
    report = drift_report(gate.method or spec.drift.method, profile, recent, gate.max_drifted_share,
                          settings_from_spec(spec.drift))
    return gate_lib.training_data_gate(report, recent_label)


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
    fairness_gate: gate_lib.GateOutcome | None = None  # only for a spec with a fairness section
    eval_fingerprint: str = ""  # of week W's evaluation rows: what `mlplatform reproduce` checks besides training's
    importance: Importance | None = None
    explain_note: str = ""  # how the importance was computed, or why it could not be
    background: pd.DataFrame | None = None  # training rows a non-tree version's predictions are explained against
    code: dict[str, str] = field(default_factory=dict)  # the team's factory and its module's fingerprint (code_tags)


def training_and_evaluation_rows(spec: ModelSpec, features: pd.DataFrame, week_start: datetime,
                                 since: datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Window]:
    """The rows week W's model trains on and is evaluated on, and its training window (what the fingerprints cover).

    A snapshot (no event time) splits its one week into training and held-out rows.
    """
    train, evaluation, train_window = split_train_eval(features, spec, week_start, since)
    if spec.source.timestamp is None:
        train, evaluation = snapshot_holdout(evaluation, spec)
        train_window = Window(week_start, week_start + pd.Timedelta(weeks=1))
    return train, evaluation, train_window


def train_week(spec: ModelSpec, features: pd.DataFrame, week_start: datetime,
               production_inputs: pd.DataFrame | None = None,
               since: datetime | None = None) -> TrainedWeek | TrainingHalted | str:
    """Fit on the window before week W and score week W; a string explains why the week was skipped.

    ``since``: the first week of a new regime after a confirmed concept change (the window starts there).

    The training-data gate runs first: when it fails nothing is trained (TrainingHalted).
    Pure: no store is touched, so weeks can train in parallel.
    """
    week = week_start.date().isoformat()
    register_spec_metrics(spec)  # a worker process received the spec, not the registry of the process that loaded it
    train, evaluation, train_window = training_and_evaluation_rows(spec, features, week_start, since)
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
    threshold = spec.decision_threshold
    challenger = predict(pipeline, x_eval, spec.task, threshold)
    y_metric = encode_target(y_eval, spec.task, challenger.classes)
    metrics = evaluate(spec.task, y_metric, challenger.score, seed=SEED, threshold=threshold, extra=tuple(spec.metrics))
    metric = spec.primary_metric
    plots = (regression_plots(y_metric, challenger.score, spec.name) if spec.task == "regression"
             else classification_plots(y_metric, challenger.score, spec.task, spec.name, threshold))
    rules = spec.columns.get(spec.target)
    sanity = gate_lib.sanity_gate(
        spec.task, challenger.label,
        allowed_range=gate_lib.prediction_range(y_train, rules.min if rules else None, rules.max if rules else None)
        if spec.task == "regression" else None,
        allowed_classes=list(np.unique(y_train)) if spec.task != "regression" else None,
    )
    params = {
        "estimator": spec.estimator_name, **{f"estimator.{k}": v for k, v in spec.estimator.params.items()},
        "seed": SEED, "task": spec.task, "target": spec.target,
        "features.numeric": ",".join(spec.features.numeric), "features.categorical": ",".join(spec.features.categorical),
        "training_window_weeks": spec.partitions.training_window_weeks,
        "train_start": f"{train_window.start:%Y-%m-%d}", "train_end": f"{train_window.end:%Y-%m-%d}",
        **({"train_since_change": f"{since:%Y-%m-%d}"} if since is not None and since < week_start else {}),
        "eval_week": week, "train_rows": len(train), "eval_rows": len(evaluation),
        **({"features.text": ",".join(spec.features.text)} if spec.features.text else {}),
    }
    predictions = pd.DataFrame({
        "week": pd.Timestamp(week_start).normalize(),
        spec.time_column: evaluation[spec.time_column].to_numpy(),
        **{key: evaluation[key].to_numpy() for key in spec.source.key if key != spec.time_column},
        "actual": y_metric, "prediction": challenger.score, "predicted_label": [str(v) for v in challenger.label],
    })
    if spec.source.timestamp is None:
        params["snapshot_evaluation_share"] = SNAPSHOT_EVALUATION_SHARE
    importance, explain_note, background = explain_version(spec, pipeline, x_train, x_eval, y_metric)
    return TrainedWeek(
        week, train_window, len(train), len(evaluation), fingerprint(train, spec), pipeline, x_train.head(5), x_eval,
        y_metric, challenger, metrics, plots, gate_lib.threshold_gate(metric, metrics[metric].value, spec.gates.threshold),
        sanity, data_gate, params, predictions, fairness_check(spec, evaluation, y_metric, challenger.score),
        fingerprint(evaluation, spec),
        importance, explain_note, background, code_tags(spec),
    )


def explain_version(spec: ModelSpec, pipeline: Any, x_train: pd.DataFrame, x_eval: pd.DataFrame,
                    y_metric: np.ndarray) -> tuple[Importance | None, str, pd.DataFrame | None]:
    """Global importance on a capped sample of week W's evaluation rows (and, for a non-tree model, the training
    rows its single predictions are explained against). An explanation that fails never stops the week."""
    from mlplatform.lib import explain

    try:
        importance = explain.global_importance(pipeline, x_eval, y_metric, spec.task, spec.primary_metric, seed=SEED,
                                               threshold=spec.decision_threshold)
    except Exception as error:  # noqa: BLE001 - explanations inform; they never decide
        return None, f"not explained: {type(error).__name__}: {error}", None
    background = None if importance.method == explain.TREE_SHAP else explain.background_rows(x_train, seed=SEED)
    note = f"{explain.METHOD_TEXT[importance.method]}, on {importance.rows} of the week's {len(x_eval)} evaluation rows"
    return importance, note, background


def fairness_check(spec: ModelSpec, evaluation: pd.DataFrame, y_metric: np.ndarray,
                   score: np.ndarray) -> gate_lib.GateOutcome | None:
    """The fairness gate on week W's evaluation rows: the sensitive columns travel with them, never into the model."""
    if spec.fairness is None:
        return None
    from mlplatform.lib.fairness import fairness_report, group_labels

    fair = spec.fairness
    report = fairness_report(spec.task, y_metric, score, group_labels(evaluation, fair.sensitive, fair.bands),
                             spec.primary_metric, fair.max_demographic_parity_difference,
                             fair.max_equalized_odds_difference, fair.min_group_rows, spec.decision_threshold)
    return gate_lib.fairness_gate(report)


def champion_comparison(spec: ModelSpec, trained: TrainedWeek, tracker: Tracker,
                        champion_version: str | None) -> PairedComparison | None:
    """The challenger against ``champion_version`` on week W's evaluation rows (paired bootstrap); None: no champion."""
    if champion_version is None:
        return None
    champion_model = tracker.load_version(spec.name, champion_version)
    champion_pred = predict(champion_model, trained.x_eval, spec.task, spec.decision_threshold)
    champion_score = champion_pred.score
    if spec.task == "multiclass":  # align label indices to the challenger's classes
        index = {c: i for i, c in enumerate(trained.challenger.classes or [])}
        champion_score = np.array([index.get(c, -1) for c in champion_pred.label], dtype=float)
    return paired_bootstrap(spec.primary_metric, trained.y_metric, trained.challenger.score, champion_score,
                            seed=SEED, threshold=spec.decision_threshold)


def gate_outcomes(spec: ModelSpec, trained: TrainedWeek, tracker: Tracker,
                  champion_version: str | None) -> list[gate_lib.GateOutcome]:
    """Every gate's verdict on a week's model: threshold, beat the champion, sanity, fairness, training data.

    One list for the weekly step, ``mlplatform check`` and ``mlplatform import``, so they judge alike.
    """
    comparison = champion_comparison(spec, trained, tracker, champion_version)
    return [
        trained.threshold_gate,
        gate_lib.champion_gate(comparison, spec.gates.beat_champion.alpha, champion_version, trained.week,
                               spec.gates.beat_champion.test, spec.gates.beat_champion.margin),
        trained.sanity_gate,
    ] + ([trained.fairness_gate] if trained.fairness_gate is not None else []) \
        + ([trained.data_gate] if trained.data_gate is not None else [])


def decide_week(spec: ModelSpec, trained: TrainedWeek, tracker: Tracker, champion_version: str | None,
                dagster_run_id: str | None = None) -> WeekResult:
    """Compare with the champion of week W on W's rows, then log and register the version (no alias moves here).

    Runs in week order in one process. ``champion_version`` comes from
    :func:`mlplatform.lib.promotion.champion_as_of`; aliases move in :func:`record_week`.
    """
    week = trained.week
    outcomes = gate_outcomes(spec, trained, tracker, champion_version)
    metrics = trained.metrics
    metric_values = logged_metrics(metrics)
    window = trained.train_window
    recorded_spec = spec_tags(spec)  # which spec the gates ran under: promotion refuses a version of an older one
    recorded_spec |= trained.code  # the team's own code (estimator.factory): its module's fingerprint
    tags = {"mlplatform.model": spec.name, "mlplatform.week": week, "data.fingerprint": trained.fingerprint,
            "data.eval_fingerprint": trained.eval_fingerprint,
            "data.train_window": f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}",
            **recorded_spec, **({"dagster.run_id": dagster_run_id} if dagster_run_id else {})}
    gate_report = {g.name: {"passed": g.passed, "reason": g.reason, **_jsonable(g.facts)} for g in outcomes}
    passed = all(g.passed for g in outcomes)
    version_tags = {
        "week": week, "gates": "passed" if passed else "failed",
        **{f"gate.{g.name}": "passed" if g.passed else "failed" for g in outcomes},
        "data.fingerprint": trained.fingerprint, **recorded_spec,
    }
    explanation = explanation_artifacts(spec, trained)
    logged = tracker.log_trained_model(
        spec.name, f"{spec.name}-{week}", trained.pipeline, trained.x_example, trained.params, metric_values, tags,
        {**trained.plots, names.GATES_ARTIFACT: json.dumps(gate_report, indent=2),
         SPEC_ARTIFACT: json.dumps(normalized_spec(spec), indent=2, sort_keys=True), **explanation}, version_tags,
    )
    predictions = trained.predictions.assign(model_version=logged.version)
    return WeekResult(week, logged.version, logged.run_id, logged.experiment_id, window, trained.train_rows,
                      trained.eval_rows, trained.fingerprint, metrics, outcomes, predictions, trained.plots,
                      champion_version, importance=trained.importance, explain_note=trained.explain_note,
                      importance_png=explanation.get(names.IMPORTANCE_PNG), artifact_uri=logged.artifact_uri,
                      code=trained.code)


def explanation_artifacts(spec: ModelSpec, trained: TrainedWeek) -> dict[str, bytes | str]:
    """The importance table (JSON) and bar plot, and a non-tree version's background rows (Parquet)."""
    if trained.importance is None:
        return {}
    from mlplatform.lib.explain import importance_plot

    artifacts: dict[str, bytes | str] = {
        names.IMPORTANCE_JSON: json.dumps({**trained.importance.as_dict(), "note": trained.explain_note}, indent=2),
        names.IMPORTANCE_PNG: importance_plot(trained.importance, f"{spec.name} week {trained.week}: what drives the model"),
    }
    if trained.background is not None:
        buffer = io.BytesIO()
        trained.background.to_parquet(buffer, index=False)
        artifacts[names.BACKGROUND_PARQUET] = buffer.getvalue()
    return artifacts


def logged_metrics(metrics: dict[str, MetricEstimate]) -> dict[str, float]:
    """The metrics as logged to MLflow (value and interval ends, finite ones only): what reproduce compares."""
    values = {name: estimate.value for name, estimate in metrics.items() if np.isfinite(estimate.value)}
    values |= {f"{name}_ci_low": e.low for name, e in metrics.items() if np.isfinite(e.low)}
    values |= {f"{name}_ci_high": e.high for name, e in metrics.items() if np.isfinite(e.high)}
    return values


def record_week(connection: duckdb.DuckDBPyConnection, spec: ModelSpec, trained: TrainedWeek, tracker: Tracker,
                actor: str, dagster_run_id: str | None = None) -> WeekResult:
    """Decide week W and record it as one unit on an open warehouse connection.

    The champion of W is read, the version logged and registered, then in one transaction:
    W's predictions and evaluation row, the audit rows, and the alias moves. A failure before
    the commit puts the aliases back (:mod:`mlplatform.lib.promotion`), so no alias ever moves
    without its audit row, and the week's rows never claim aliases that did not move.
    """
    connection.begin()  # the model's lock first (PostgreSQL): its champion is read and its week decided in order
    try:
        lock_model(connection, spec.name)
        champion = promotion.champion_as_of(connection, tracker, spec.name, trained.week)
        result = decide_week(spec, trained, tracker, champion, dagster_run_id)
        current = {alias: tracker.alias_version(spec.name, alias) for alias in (CHALLENGER, CHAMPION)}
        current_weeks = {alias: tracker.version_tags(spec.name, version).get("week") if version else None
                         for alias, version in current.items()}
        result.alias_changes, result.alias_note = promotion.gate_changes(
            spec.name, result.version, all(g.passed for g in result.gates), result.week, actor, spec.rollout.approval,
            current, current_weeks, spec.rollout)
        from mlplatform.lib import live_fairness

        result.alias_changes, result.alias_note, held = live_fairness.hold_auto_champion(
            spec, result.alias_changes, result.alias_note)  # live fairness required: champion waits for live traffic
        weeks = [pd.Timestamp(result.week)]
        predictions = validate_table(result.predictions, predictions_schema(spec),
                                     f"{spec.name}.{names.PREDICTIONS_TABLE}")
        evaluation = validate_table(evaluation_row(spec, result), evaluations_schema(spec),
                                    f"{spec.name}.{names.EVALUATIONS_TABLE}")  # before any write: a refusal moves nothing
    except Exception:
        connection.rollback()
        raise
    try:
        replace_week_rows(connection, spec.name, names.PREDICTIONS_TABLE, predictions, "week", weeks, transaction=False)
        replace_week_rows(connection, spec.name, names.EVALUATIONS_TABLE, evaluation, "week", weeks, transaction=False)
        append_events(connection, [*week_events(spec, result, actor, dagster_run_id), *held])
        for change in result.alias_changes:
            change.dagster_run_id = dagster_run_id
        anchored = promotion.apply_changes(connection, tracker, result.alias_changes)
    except Exception:
        connection.rollback()
        raise
    try:
        connection.commit()
    except Exception:
        promotion.restore(tracker, result.alias_changes)
        audit_integrity.restore_anchors(tracker, anchored)
        raise
    return result


def week_events(spec: ModelSpec, result: WeekResult, actor: str, dagster_run_id: str | None) -> list[AuditEvent]:
    """The audit trail's record of week W: the version trained (window, fingerprint, metric) and each gate's verdict."""
    primary = result.metrics[spec.primary_metric]
    common = {"version": result.version, "week": result.week, "dagster_run_id": dagster_run_id,
              "mlflow_run_id": result.run_id, "data_fingerprint": result.fingerprint}
    code = result.code
    code_text = (f"; code {code[CODE_FACTORY_TAG]} fingerprint {code[CODE_FINGERPRINT_TAG][:12]}"
                 if CODE_FINGERPRINT_TAG in code else "")
    trained = AuditEvent(spec.name, "model_trained", actor,
                         f"v{result.version} trained on {result.train_window.start:%Y-%m-%d}..{result.train_window.end:%Y-%m-%d} "
                         f"({result.train_rows} rows); {spec.primary_metric} {primary.value:.4g} on week {result.week}"
                         + code_text,
                         details={**code, "train_rows": result.train_rows, "eval_rows": result.eval_rows,
                                  spec.primary_metric: primary.value, "ci": [primary.low, primary.high],
                                  "spec_hash": spec_hash(spec), "spec_gates_hash": spec_tags(spec)[GATES_HASH_TAG],
                                  "train_window": f"{result.train_window.start:%Y-%m-%d}..{result.train_window.end:%Y-%m-%d}"},
                         **common)
    gates = [AuditEvent(spec.name, "gate", actor, f"{g.name}: {g.reason}", passed=g.passed,
                        details={"gate": g.name}, **common) for g in result.gates]
    return [trained, *gates]


def gate_column(gate: str) -> str:
    """The evaluations table's column holding a gate's verdict (read by the runner's summary and the backtest)."""
    return f"gate_{gate}"


def evaluation_row(spec: ModelSpec, result: WeekResult) -> pd.DataFrame:
    """Week W's row of the ``<model>.evaluations`` table: the one definition of its columns."""
    primary = result.metrics[spec.primary_metric]
    return pd.DataFrame([{
        "week": pd.Timestamp(result.week),
        "model_version": result.version,
        "mlflow_run_id": result.run_id,
        "train_start": pd.Timestamp(result.train_window.start),
        "train_rows": result.train_rows,
        "eval_rows": result.eval_rows,
        "data_fingerprint": result.fingerprint,
        "metric": spec.primary_metric,
        "value": primary.value,
        "ci_low": primary.low,
        "ci_high": primary.high,
        "metrics_json": json.dumps({k: e.as_dict() for k, e in result.metrics.items()}),
        **{gate_column(g.name): g.passed for g in result.gates},
        "gate_reasons_json": json.dumps({g.name: g.reason for g in result.gates}),
        "champion_compared": result.champion_version,
        "aliases_set": ",".join(c.alias for c in result.alias_changes),
        "evaluated_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
    }]).astype({"champion_compared": "string"})  # a first week has none: the column must still be text


WORKERS_ENV = "MLPLATFORM_TRAINING_WORKERS"
THREADS_ENV = "MLPLATFORM_THREADS_PER_RUN"
MIN_ROWS_FOR_WORKERS = 50_000
"""Below this many rows per training window a fit takes well under a second: starting worker
processes would cost more than training weeks side by side saves (docs/benchmarks.md)."""


def threads_per_run(cores: int, max_concurrent_runs: int | None, environ: Mapping[str, str] | None = None
                    ) -> int | None:
    """The cores one run's fits may use, or None for all of them.

    Several runs on one machine, each fitting with as many OpenMP threads as there are cores, spin against each
    other: two gradient-boosting backfills at once took longer than one after the other, and about half as long
    with their share of threads each (docs/benchmarks.md). So where the instance starts ``max_concurrent_runs``
    runs at once (the shared mode), a run gets its share, cores / max_concurrent_runs, at least one.
    ``MLPLATFORM_THREADS_PER_RUN`` overrides it (a number; 0: all cores). The embedded instance runs one run at a
    time: no limit.
    """
    environ = os.environ if environ is None else environ
    configured = environ.get(THREADS_ENV, "").strip()
    if configured:
        try:
            threads = int(configured)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={configured!r}: expected a whole number of threads per run "
                             "(0: all cores)") from None
        if threads < 0:
            raise ValueError(f"{THREADS_ENV}={configured!r}: expected 0 (all cores) or more")
        return threads or None
    if not max_concurrent_runs or max_concurrent_runs <= 1:
        return None
    return max(1, cores // max_concurrent_runs)


def training_workers(n_weeks: int, window_rows: int, run_threads: int | None = None) -> int:
    """Worker processes for a run of ``n_weeks``: MLPLATFORM_TRAINING_WORKERS when set, else one per core for
    big windows (1 means train in this process), never more than the run's cores (``run_threads``)."""
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        try:
            workers = int(configured)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={configured!r}: expected a whole number of worker processes "
                             "(1 trains in the run's own process)") from None
    else:
        workers = (run_threads or os.cpu_count() or 1) if window_rows >= MIN_ROWS_FOR_WORKERS else 1
    return max(1, min(workers, n_weeks))


@contextmanager
def deciding_threads(workers: int, run_threads: int | None = None) -> Iterator[None]:
    """While ``workers`` processes train on every core, the deciding process runs single-threaded; training in
    this process, it uses the run's ``run_threads`` (None: all cores).

    Its OpenMP/BLAS threads would spin against the busy workers: scoring the champion took
    an order of magnitude longer (docs/benchmarks.md).
    """
    limit = 1 if workers > 1 else run_threads
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit):
        yield


def workers_for_run(spec: ModelSpec, features: pd.DataFrame, week_starts: Sequence[datetime],
                    run_threads: int | None = None) -> int:
    """:func:`training_workers` for a run, sized by the rows of its last (fullest) week's training window."""
    window = training_window(spec, week_starts[-1])
    return training_workers(len(week_starts), len(rows_in_window(features, spec.time_column, window)), run_threads)


def train_weeks(spec: ModelSpec, features: pd.DataFrame, week_starts: Sequence[datetime],
                workers: int = 1, logged_inputs: pd.DataFrame | None = None,
                since: Mapping[datetime, datetime] | None = None, run_threads: int | None = None
                ) -> Iterator[TrainedWeek | TrainingHalted | str]:
    """:func:`train_week` for each week, yielded in week order.

    ``logged_inputs``: the prediction log's production inputs (a ``time`` column and the features); each week's
    training-data gate then compares with the ones of its own recent days, when there are any.
    ``since``: per week, the start of its new-regime window after a concept change (weeks not in it: the normal one).
    With ``workers`` > 1 the weeks train side by side in worker processes (joblib/loky; each
    fit gets cores / workers threads) while the caller decides the weeks already done: a
    backfill's fits overlap its MLflow and Dagster bookkeeping. Results are identical either way.
    """
    def production(week: datetime) -> pd.DataFrame | None:
        return production_inputs_before(spec, logged_inputs, week)

    starts = dict(since or {})
    if workers <= 1 or len(week_starts) < 2:
        for week_start in week_starts:
            yield train_week(spec, features, week_start, production(week_start), starts.get(week_start))
        return
    from joblib import Parallel, delayed, parallel_config

    # max_nbytes=None: send plain copies (no read-only memory maps); pre_dispatch bounds the weeks in flight.
    # A run with its share of the cores (``run_threads``) splits that share among its workers, not the machine.
    inner = {"inner_max_num_threads": max(1, run_threads // workers)} if run_threads else {}
    with parallel_config(backend="loky", **inner):
        parallel = Parallel(n_jobs=workers, return_as="generator", max_nbytes=None, pre_dispatch=f"{2 * workers}")
    yield from parallel(delayed(train_week)(spec, rows_in_window(features, spec.time_column, rows_needed(spec, week)),
                                            week, production(week), starts.get(week))
                        for week in week_starts)


def production_inputs_before(spec: ModelSpec, logged_inputs: pd.DataFrame | None, week_start: datetime) -> pd.DataFrame | None:
    """The logged production inputs of the ``gates.training_data.recent_days`` before week W; None when there are none."""
    if logged_inputs is None or logged_inputs.empty:
        return None
    start = week_start - pd.Timedelta(days=spec.gates.training_data.recent_days)
    recent = logged_inputs[(logged_inputs["time"] >= start) & (logged_inputs["time"] < week_start)]
    present = [c for c in spec.feature_columns if c in recent.columns]
    if recent.empty or len(present) < len(spec.feature_columns):
        return None
    return recent[present].reset_index(drop=True)


def _jsonable(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in facts.items()}
