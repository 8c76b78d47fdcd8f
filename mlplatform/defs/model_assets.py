"""``<model>/model``, ``<model>/evaluation`` (a version per week) and ``<model>/backtest``, in one step.

Model and evaluation are fused in one multi-asset because a range of weeks runs as
one run (single-run backfills) but every week needs its own version, metrics and
gate verdicts: the step loops over the weeks and records a materialization and the
gate checks per week, each tagged with its partition. The weekly logic itself is
:func:`mlplatform.lib.lifecycle.train_week` (which may run in worker processes)
then :func:`~mlplatform.lib.lifecycle.record_week`, in week order, which decides,
registers, writes the week's rows and moves aliases with their audit rows as one unit.

The model gates act at promotion: a failed gate keeps that version away from every alias
(and so from serving, which loads only versions whose gates passed). They are not Dagster
blocking checks: one run handles a range of weeks, so a week's failure must not stop the
other weeks, and nothing downstream in the run consumes the version.
"""

import os
from collections.abc import Iterator
from datetime import datetime, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetMaterialization,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    multi_asset,
)

from mlplatform import names
from mlplatform.defs.audit_assets import audit_trail_materialization
from mlplatform.defs.keys import backtest_key, evaluation_key, features_key, model_key
from mlplatform.defs.metadata import (
    column_schema,
    column_schema_metadata,
    image,
    owners,
    plot,
    rows_table,
    scalar_or_json,
)
from mlplatform.defs.mlflow_run import owning_run_id
from mlplatform.defs.partitions import run_window, weekly_multi_asset_options
from mlplatform.defs.resources import ModelRegistry, Warehouse
from mlplatform.lib import gates as gate_lib
from mlplatform.lib.audit import AuditEvent, append_events
from mlplatform.lib.source import Window
from mlplatform.lib.table_schemas import backtest_schema, evaluations_schema, predictions_schema, validate_table
from mlplatform.specs import ModelSpec

AT_PROMOTION = " Acts at promotion: a failure keeps this week's version away from every alias (and from serving); " \
    "it does not stop the run's other weeks."
GATE_DESCRIPTIONS = {
    gate_lib.THRESHOLD: "Primary metric on week W meets the spec's absolute threshold (gates.threshold)." + AT_PROMOTION,
    gate_lib.CHAMPION: "The challenger against the champion of week W on the same rows, by the spec's "
    "gates.beat_champion.test (each model's check names its own: see _champion_description)." + AT_PROMOTION,
    gate_lib.SANITY: "Predictions are finite, inside the target's range or classes, and not constant." + AT_PROMOTION,
    gate_lib.FAIRNESS: "Groups of each sensitive attribute (fairness.sensitive) get the model's outcome at rates "
    "within fairness.max_demographic_parity_difference (and max_equalized_odds_difference when set), on week W's "
    "evaluation rows; groups under fairness.min_group_rows rows are shown but do not decide. Metadata: the per-group "
    "table." + AT_PROMOTION,
    gate_lib.TRAINING_DATA: "Before training: the training window is not drifted from recent production inputs "
    "(more than gates.training_data.max_drifted_share of the features drifted). A failure halts training for "
    "the week: no version is created, the champion stays.",
}

def _champion_description(spec: ModelSpec) -> str:
    """The champion check names the spec's test (gates.beat_champion.test and margin), not only the gate's name."""
    chosen = spec.gates.beat_champion
    text = gate_lib.champion_test_description(chosen.test, chosen.margin, chosen.alpha)
    return text[0].upper() + text[1:] + " (gates.beat_champion)." + AT_PROMOTION


MARKDOWN_FACTS = {"per_group"}
"""Gate facts that are markdown tables (the fairness gate's per-group table): shown as tables in the UI."""


def build_model_assets(spec: ModelSpec):
    """The fused weekly model + evaluation step, with the gates as checks on the model."""
    window_weeks = spec.partitions.training_window_weeks
    training_window = TimeWindowPartitionMapping(start_offset=-window_weeks, end_offset=0,
                                                 allow_nonexistent_upstream_partitions=True)

    @multi_asset(
        name=names.multi_asset_op(spec.name, "model_and_evaluation"),
        specs=[
            AssetSpec(
                model_key(spec), group_name=spec.name, owners=owners(spec), kinds={"mlflow", "scikit-learn"},
                deps=[AssetDep(features_key(spec), partition_mapping=training_window)], skippable=True,
                description=f"A {spec.estimator_name} for week W, trained on the {window_weeks} weeks of "
                "features before W, logged to MLflow and registered as a version of "
                f"`{spec.name}`. Becomes `challenger` only when every gate passes"
                + ((" and `champion` too (approval: auto)." if spec.rollout.auto_promote == "immediate" else
                    " (approval: auto: `champion` once the canary analysis finds its live evidence good enough).")
                   if spec.rollout.approval == "auto" else "."),
            ),
            AssetSpec(
                evaluation_key(spec), group_name=spec.name, owners=owners(spec), kinds={"mlflow", "scikit-learn"},
                deps=[model_key(spec)], skippable=True,
                description=f"Out-of-time evaluation of week W's model on week W only: {spec.task} metrics with "
                f"bootstrap intervals, plots, per-row predictions (table `predictions`). Table "
                f"`{spec.name}.{names.EVALUATIONS_TABLE}`.",
                metadata={**column_schema_metadata(evaluations_schema(spec)),
                          "predictions_column_schema": MetadataValue.table_schema(column_schema(predictions_schema(spec)))},
            ),
            AssetSpec(
                backtest_key(spec), group_name=spec.name, owners=owners(spec), kinds={"duckdb"},
                deps=[evaluation_key(spec)], skippable=True,
                description="Walk-forward backtest: each week's model scored on the week after its training window, "
                "over every evaluated week (recomputed whenever weeks are evaluated).",
                metadata=column_schema_metadata(backtest_schema(spec)),
            ),
        ],
        check_specs=[AssetCheckSpec(name, asset=model_key(spec), blocking=False,
                                    description=_champion_description(spec) if name == gate_lib.CHAMPION else text)
                     for name, text in GATE_DESCRIPTIONS.items()
                     if name != gate_lib.FAIRNESS or spec.fairness is not None],
        **weekly_multi_asset_options(spec),
    )
    def model_and_evaluation(context: AssetExecutionContext) -> Iterator:
        from mlplatform.lib.lifecycle import (
            TrainingHalted,
            choose_window,
            deciding_threads,
            record_week,
            rows_needed,
            threads_per_run,
            train_weeks,
            workers_for_run,
        )
        from mlplatform.lib.model_card import store_card_at_training

        warehouse: Warehouse = context.resources.warehouse
        registry: ModelRegistry = context.resources.model_registry
        window = run_window(context)
        if model_key(spec) not in context.selected_asset_keys:
            yield _backtest_result(spec, warehouse)
            return
        week_starts = [datetime.combine(week_start, datetime.min.time()) for week_start in window.week_starts()]
        needed = Window(rows_needed(spec, week_starts[0]).start, window.end)
        features = warehouse.read_window(spec.name, names.FEATURES, spec.time_column, needed)
        tracker = registry.tracker()
        logged = _logged_production_inputs(spec, context.resources.platform, week_starts)
        actor = f"dagster run {context.run.run_id}"
        trigger = context.run.tags.get(names.TRIGGER_TAG)
        if trigger in (names.DRIFT_TRIGGER, names.DECAY_TRIGGER):  # a retrain one of the sensors requested
            sensor = context.run.tags.get("dagster/sensor_name", names.retrain_sensor(spec.name))
            if trigger == names.DRIFT_TRIGGER:
                week_seen = context.run.tags.get(names.DRIFT_WEEK_TAG)
                why, record = f"drift check failed on week {week_seen}", context.run.tags.get(names.DRIFT_CHECK_RECORD_TAG)
            else:
                week_seen = context.run.tags.get(names.DECAY_WEEK_TAG)
                why = (f"recovery from a concept change goes on: live performance on week {week_seen} still short of "
                       "the pre-change level" if context.run.tags.get(names.RECOVERY_TAG) == "true" else
                       f"live performance decayed on week {week_seen} (live_degradation failed)")
                record = context.run.tags.get(names.DECAY_CHECK_RECORD_TAG)
            with warehouse.get_connection() as connection:
                append_events(connection, [AuditEvent(
                    spec.name, "retrain_requested", sensor, f"{why}: retrain for {window.start:%Y-%m-%d}",
                    week=week_seen, dagster_run_id=context.run.run_id,
                    details={"trigger": trigger, "check_record": record})])
        since = _new_regime_starts(spec, warehouse, week_starts)
        window_choices: dict[str, str] = {}
        for week_start, start in list(since.items()):
            if spec.rollout.rollback.choose_window:
                choice = choose_window(spec, features, week_start, start)
                since[week_start] = choice.start
                window_choices[f"{week_start:%Y-%m-%d}"] = choice.text()
            context.log.info(f"{spec.name} week {week_start:%Y-%m-%d}: after the concept change, trains from "
                             f"{since[week_start]:%Y-%m-%d}" + (f": {window_choices[f'{week_start:%Y-%m-%d}']}"
                                                               if window_choices else " (docs/production.md)"))
        run_threads = threads_per_run(os.cpu_count() or 1, _max_concurrent_runs(context.instance))
        workers = workers_for_run(spec, features, week_starts, run_threads)
        if workers > 1:
            context.log.info(f"training {len(week_starts)} weeks in {workers} worker processes")
        elif run_threads is not None:
            context.log.info(f"training with {run_threads} thread(s) per fit: this run's share of the machine's "
                             f"cores (MLPLATFORM_THREADS_PER_RUN, docs/shared-services.md)")
        recorded = 0
        weeks_text = f"weeks {week_starts[0]:%Y-%m-%d}..{week_starts[-1]:%Y-%m-%d}"
        with deciding_threads(workers, run_threads), tracker.parent_run(spec.name, context.run.run_id,
                                                           f"Dagster run {context.run.run_id}: {weeks_text}",
                                                           owner_run_id=owning_run_id(tracker, context.run.run_id)):
            for week_start, trained in zip(week_starts, train_weeks(spec, features, week_starts, workers, logged, since,
                                                                       run_threads),
                                           strict=True):
                week = week_start.date().isoformat()
                if isinstance(trained, str):
                    context.log.warning(f"skipped {trained}")
                    continue
                if isinstance(trained, TrainingHalted):
                    context.log.warning(f"{spec.name} week {week}: {trained.gate.reason}")
                    _log_gate(context, spec, week, None, trained.gate)
                    with warehouse.get_connection() as connection:
                        append_events(connection, [AuditEvent(
                            spec.name, "training_halted", actor, trained.gate.reason, week=week, passed=False,
                            dagster_run_id=context.run.run_id, details={"gate": trained.gate.name})])
                    continue
                with warehouse.get_connection() as connection:  # waits while another process holds the lock
                    result = record_week(connection, spec, trained, tracker, actor, context.run.run_id)
                    card = store_card_at_training(connection, spec, result, tracker)
                _log_week(context, spec, registry, result, card, window_choices.get(week))
                recorded += 1
        if not recorded:
            context.log.warning(f"no week in {window.start:%Y-%m-%d}..{window.end:%Y-%m-%d} could be trained")
        with warehouse.get_connection() as connection:  # the trail as this step left it (a read, same process)
            context.log_event(audit_trail_materialization(spec, connection))
        if backtest_key(spec) in context.selected_asset_keys:
            yield _backtest_result(spec, warehouse)

    return model_and_evaluation


def _max_concurrent_runs(instance) -> int | None:
    """How many runs the instance's ``dagster.yaml`` lets start at once (``concurrency.runs``: 4 in the shared mode's,
    1 in the embedded one's); None when it does not say (a test or ephemeral instance)."""
    value = (instance.get_settings("concurrency") or {}).get("runs", {}).get("max_concurrent_runs")
    return value if isinstance(value, int) else None


def _new_regime_starts(spec: ModelSpec, warehouse: Warehouse, week_starts: list[datetime]) -> dict[datetime, datetime]:
    """Per week trained after a confirmed concept change, where its window starts (the change week:
    :func:`mlplatform.lib.recovery.training_start`); weeks with the spec's normal window are absent."""
    from mlplatform.lib.recovery import as_datetime, read_rows, training_start

    with warehouse.get_connection() as connection:
        rows = read_rows(connection, spec.name)
    starts = {week: training_start(rows, f"{week:%Y-%m-%d}", spec.partitions.training_window_weeks)
              for week in week_starts} if rows else {}
    return {week: as_datetime(start) for week, start in starts.items() if start is not None}


def _logged_production_inputs(spec: ModelSpec, platform, week_starts: list[datetime]):
    """What production scored (champion and canary traffic, batch scores) in the recent days before the run's
    weeks, if logged."""
    from mlplatform.lib.prediction_log import read_prediction_log
    from mlplatform.lib.routing import ANSWERED_ROLES

    start = week_starts[0] - timedelta(days=spec.gates.training_data.recent_days)
    logged = read_prediction_log(platform.home_path, spec.name, start, week_starts[-1], roles=list(ANSWERED_ROLES))
    return logged if len(logged) else None


def _log_week(context: AssetExecutionContext, spec: ModelSpec, registry: ModelRegistry, result,
              card: tuple[str | None, str], window_choice: str | None = None) -> None:
    """The materializations of model and evaluation for week W, and its gates as check evaluations."""
    card_uri, card_note = card
    card_metadata = {"model_card_note": MetadataValue.text(card_note)}
    if card_uri is not None:
        card_metadata["model_card"] = (MetadataValue.path(card_uri.removeprefix("file://"))
                                       if card_uri.startswith("file://") else MetadataValue.url(card_uri))
        card_metadata["model_card_url"] = MetadataValue.url(card_uri)
    metric = spec.primary_metric
    primary = result.metrics[metric]
    run_url = registry.run_url(result.experiment_id, result.run_id)
    context.log_event(AssetMaterialization(
        asset_key=model_key(spec), partition=result.week,
        metadata={
            "model_version": MetadataValue.text(result.version),
            "mlflow_run": MetadataValue.url(run_url),
            "mlflow_model_version": MetadataValue.url(registry.version_url(spec.name, result.version)),
            "training_window": MetadataValue.text(
                f"{result.train_window.start:%Y-%m-%d} .. {result.train_window.end:%Y-%m-%d} (end excluded)"),
            **({"window_choice": MetadataValue.text(window_choice)} if window_choice else {}),
            "train_rows": result.train_rows,
            "data_fingerprint": MetadataValue.text(result.fingerprint),
            "estimator": MetadataValue.text(spec.estimator_name),
            "gates_passed": all(g.passed for g in result.gates),
            "champion_compared": MetadataValue.text(f"v{result.champion_version}" if result.champion_version
                                                    else "none"),
            "aliases_set": MetadataValue.text(", ".join(c.alias for c in result.alias_changes) or "none"),
            "aliases": MetadataValue.text(result.alias_note),
            **card_metadata,
        },
    ))
    metric_table = rows_table(["metric", "value", "95% CI"], [
        (name, f"{e.value:.4g}", f"{e.low:.4g} .. {e.high:.4g}") for name, e in result.metrics.items()])
    gate_table = rows_table(["gate", "outcome", "reason"], [
        (g.name, "PASS" if g.passed else "FAIL", g.reason) for g in result.gates])
    context.log_event(AssetMaterialization(
        asset_key=evaluation_key(spec), partition=result.week,
        metadata={
            metric: primary.value,
            f"{metric}_ci_low": primary.low,
            f"{metric}_ci_high": primary.high,
            "eval_rows": result.eval_rows,
            "model_version": MetadataValue.text(result.version),
            "metrics": MetadataValue.md(metric_table),
            "gates": MetadataValue.md(gate_table),
            "plots": MetadataValue.md("\n\n".join(image(png, name) for name, png in result.plots.items())),
            "feature_importance": MetadataValue.md(
                f"{result.importance.markdown(15)}\n\n_{result.explain_note}_\n\n"
                + (image(result.importance_png, "feature importance") if result.importance_png else "")
                if result.importance is not None else f"_{result.explain_note}_"),
            "top_features": MetadataValue.text(", ".join(result.importance.top()) if result.importance else "none"),
            **card_metadata,
            "mlflow_run": MetadataValue.url(run_url),
        },
    ))
    for outcome in result.gates:
        _log_gate(context, spec, result.week, result.version, outcome)
    context.log.info(
        f"{spec.name} week {result.week}: v{result.version} {metric}={primary.value:.4g} gates "
        + ", ".join(f"{g.name}={'pass' if g.passed else 'FAIL'}" for g in result.gates) + f"; aliases {result.alias_note}"
    )


def _log_gate(context: AssetExecutionContext, spec: ModelSpec, week: str, version: str | None, outcome) -> None:
    """One gate verdict as the week's check evaluation on the model, with its reason and facts."""
    facts = {k: MetadataValue.md(v) if k in MARKDOWN_FACTS else scalar_or_json(v)
             for k, v in outcome.facts.items() if v is not None}
    context.log_event(AssetCheckEvaluation(
        asset_key=model_key(spec), check_name=outcome.name, passed=outcome.passed, partition=week,
        blocking=False, severity=AssetCheckSeverity.ERROR, description=outcome.reason,
        metadata={"week": week, "model_version": version or "none (not trained)",
                  "reason": MetadataValue.text(outcome.reason), **facts},
    ))


def _backtest_result(spec: ModelSpec, warehouse: Warehouse) -> MaterializeResult:
    """The primary metric per evaluated week, as a table and a plot."""
    from mlplatform.lib.lifecycle import gate_column
    from mlplatform.lib.plots import backtest_plot

    key = backtest_key(spec)
    if not warehouse.table_exists(spec.name, names.EVALUATIONS_TABLE):
        return MaterializeResult(asset_key=key, metadata={"weeks": 0, "note": "no week evaluated yet"})
    with warehouse.get_connection() as connection:
        table = connection.execute(
            f'select week, model_version, value, ci_low, ci_high, "{gate_column(gate_lib.THRESHOLD)}" as threshold_ok, '
            f'"{gate_column(gate_lib.CHAMPION)}" as champion_ok, "{gate_column(gate_lib.SANITY)}" as sanity_ok, '
            f'aliases_set from "{spec.name}"."{names.EVALUATIONS_TABLE}" order by week'
        ).fetchdf()
    table = validate_table(table, backtest_schema(spec), f"{spec.name}.{names.EVALUATIONS_TABLE} as the backtest reads it",
                           "The backtest was not reported")
    metric = spec.primary_metric
    weeks = [f"{w:%Y-%m-%d}" for w in table["week"]]
    png = backtest_plot(weeks, table["value"], table["ci_low"], table["ci_high"], metric, spec.gates.threshold,
                        spec.name)
    verdict = {True: "PASS", False: "FAIL"}
    markdown = rows_table(["week", "version", metric, "95% CI", "threshold", "champion", "sanity", "aliases set"], [
        (w, f"v{r.model_version}", f"{r.value:.4g}", f"{r.ci_low:.4g} .. {r.ci_high:.4g}", verdict[bool(r.threshold_ok)],
         verdict[bool(r.champion_ok)], verdict[bool(r.sanity_ok)], r.aliases_set or "")
        for w, r in zip(weeks, table.itertuples(), strict=True)])
    return MaterializeResult(asset_key=key, metadata={
        "weeks": len(table),
        f"mean_{metric}": float(table["value"].mean()),
        f"last_{metric}": float(table["value"].iloc[-1]),
        "plot": plot(png, "backtest"),
        "per_week": MetadataValue.md(markdown),
    })
