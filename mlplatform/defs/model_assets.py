"""``<model>/model``, ``<model>/evaluation`` (a version per week) and ``<model>/backtest``, in one step.

Model and evaluation are fused in one multi-asset because a range of weeks runs as
one run (single-run backfills) but every week needs its own version, metrics and
gate verdicts: the step loops over the weeks and records a materialization and the
gate checks per week, each tagged with its partition. The weekly logic itself is
:func:`mlplatform.lib.lifecycle.train_week` (which may run in worker processes)
then :func:`~mlplatform.lib.lifecycle.decide_week`, in week order.
"""

import base64
import json
from collections.abc import Iterator
from datetime import datetime

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    multi_asset,
)

from mlplatform.defs.data_assets import features_key, owners
from mlplatform.defs.partitions import run_window, weekly_multi_asset_options
from mlplatform.defs.resources import ModelRegistry, Warehouse
from mlplatform.lib import gates as gate_lib
from mlplatform.lib.audit import record_alias_changes
from mlplatform.lib.source import Window
from mlplatform.lib.warehouse import replace_week_rows
from mlplatform.specs import ModelSpec


def model_key(spec: ModelSpec) -> AssetKey:
    return AssetKey([spec.name, "model"])


def evaluation_key(spec: ModelSpec) -> AssetKey:
    return AssetKey([spec.name, "evaluation"])


def backtest_key(spec: ModelSpec) -> AssetKey:
    return AssetKey([spec.name, "backtest"])


GATE_DESCRIPTIONS = {
    gate_lib.THRESHOLD: "Primary metric on week W meets the spec's absolute threshold (gates.threshold).",
    gate_lib.CHAMPION: "Challenger not significantly worse than the champion on the same rows of week W "
    "(paired bootstrap of the metric difference, one-sided, at gates.beat_champion.alpha).",
    gate_lib.SANITY: "Predictions are finite, inside the target's range or classes, and not constant.",
    gate_lib.TRAINING_DATA: "Before training: the training window is not drifted from recent production inputs "
    "(more than gates.training_data.max_drifted_share of the features drifted halts training for the week).",
}


def _image(png: bytes, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def build_model_assets(spec: ModelSpec):
    """The fused weekly model + evaluation step, with the gates as checks on the model."""
    window_weeks = spec.partitions.training_window_weeks
    training_window = TimeWindowPartitionMapping(start_offset=-window_weeks, end_offset=0,
                                                 allow_nonexistent_upstream_partitions=True)

    @multi_asset(
        name=f"{spec.name}_model_and_evaluation",
        specs=[
            AssetSpec(
                model_key(spec), group_name=spec.name, owners=owners(spec), kinds={"mlflow", "scikit-learn"},
                deps=[AssetDep(features_key(spec), partition_mapping=training_window)], skippable=True,
                description=f"A {spec.estimator.class_name} for week W, trained on the {window_weeks} weeks of "
                "features before W, logged to MLflow and registered as a version of "
                f"`{spec.name}`. Becomes `challenger` only when every gate passes"
                + (" and `champion` too (approval: auto)." if spec.rollout.approval == "auto" else "."),
            ),
            AssetSpec(
                evaluation_key(spec), group_name=spec.name, owners=owners(spec), kinds={"mlflow", "scikit-learn"},
                deps=[model_key(spec)], skippable=True,
                description=f"Out-of-time evaluation of week W's model on week W only: {spec.task} metrics with "
                "bootstrap intervals, plots, per-row predictions (table `predictions`).",
            ),
            AssetSpec(
                backtest_key(spec), group_name=spec.name, owners=owners(spec), kinds={"duckdb"},
                deps=[evaluation_key(spec)], skippable=True,
                description="Walk-forward backtest: each week's model scored on the week after its training window, "
                "over every evaluated week (recomputed whenever weeks are evaluated).",
            ),
        ],
        check_specs=[AssetCheckSpec(name, asset=model_key(spec), blocking=True, description=text)
                     for name, text in GATE_DESCRIPTIONS.items()],
        **weekly_multi_asset_options(spec),
    )
    def model_and_evaluation(context: AssetExecutionContext) -> Iterator:
        from mlplatform.lib.lifecycle import (
            TrainingHalted,
            decide_week,
            deciding_threads,
            rows_needed,
            train_weeks,
            workers_for_run,
        )

        warehouse: Warehouse = context.resources.warehouse
        registry: ModelRegistry = context.resources.model_registry
        window = run_window(context)
        if model_key(spec) not in context.selected_asset_keys:
            yield _backtest_result(spec, warehouse)
            return
        week_starts = [datetime.combine(week_start, datetime.min.time()) for week_start in window.week_starts()]
        needed = Window(rows_needed(spec, week_starts[0]).start, window.end)
        features = warehouse.read_window(spec.name, "features", spec.time_column, needed)
        tracker = registry.tracker()
        actor = f"dagster run {context.run.run_id}"
        workers = workers_for_run(spec, features, week_starts)
        if workers > 1:
            context.log.info(f"training {len(week_starts)} weeks in {workers} worker processes")
        results = []
        with deciding_threads(workers):
            for week_start, trained in zip(week_starts, train_weeks(spec, features, week_starts, workers), strict=True):
                week = week_start.date().isoformat()
                if isinstance(trained, str):
                    context.log.warning(f"skipped {trained}")
                    continue
                if isinstance(trained, TrainingHalted):
                    context.log.warning(f"{spec.name} week {week}: {trained.gate.reason}")
                    _log_gate(context, spec, week, None, trained.gate)
                    continue
                result = decide_week(spec, trained, tracker, actor, context.run.run_id)
                results.append(result)
                _record_week(context, spec, registry, warehouse, result)
        if not results:
            context.log.warning(f"no week in {window.start:%Y-%m-%d}..{window.end:%Y-%m-%d} could be trained")
        if backtest_key(spec) in context.selected_asset_keys:
            yield _backtest_result(spec, warehouse)

    return model_and_evaluation


def _record_week(context: AssetExecutionContext, spec: ModelSpec, registry: ModelRegistry, warehouse: Warehouse,
                 result) -> None:
    """Week W's rows in the warehouse, the materializations of model and evaluation, the gates as checks."""
    week = result.week
    with warehouse.get_connection() as connection:  # one connection a week: opening one costs ~30 ms
        replace_week_rows(connection, spec.name, "predictions", result.predictions, "week", [pd.Timestamp(week)])
        replace_week_rows(connection, spec.name, "evaluations", _evaluation_row(spec, result), "week",
                          [pd.Timestamp(week)])
        record_alias_changes(connection, [change.as_row() for change in result.alias_changes])
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
            "train_rows": result.train_rows,
            "data_fingerprint": MetadataValue.text(result.fingerprint),
            "estimator": MetadataValue.text(spec.estimator.class_name or ""),
            "gates_passed": all(g.passed for g in result.gates),
            "aliases_set": MetadataValue.text(", ".join(c.alias for c in result.alias_changes) or "none"),
        },
    ))
    metric_table = "| metric | value | 95% CI |\n| --- | --- | --- |\n" + "\n".join(
        f"| {name} | {e.value:.4g} | {e.low:.4g} .. {e.high:.4g} |" for name, e in result.metrics.items()
    )
    gate_table = "| gate | outcome | reason |\n| --- | --- | --- |\n" + "\n".join(
        f"| {g.name} | {'PASS' if g.passed else 'FAIL'} | {g.reason} |" for g in result.gates
    )
    plots = "\n\n".join(_image(png, name) for name, png in result.plots.items())
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
            "plots": MetadataValue.md(plots),
            "mlflow_run": MetadataValue.url(run_url),
        },
    ))
    for outcome in result.gates:
        _log_gate(context, spec, result.week, result.version, outcome)
    context.log.info(
        f"{spec.name} week {week}: v{result.version} {metric}={primary.value:.4g} gates "
        + ", ".join(f"{g.name}={'pass' if g.passed else 'FAIL'}" for g in result.gates)
        + (f"; aliases -> {', '.join(c.alias for c in result.alias_changes)}" if result.alias_changes else "")
    )


def _log_gate(context: AssetExecutionContext, spec: ModelSpec, week: str, version: str | None, outcome) -> None:
    """One gate verdict as the week's check evaluation on the model, with its reason and facts."""
    facts = {k: v for k, v in outcome.facts.items() if v is not None}
    context.log_event(AssetCheckEvaluation(
        asset_key=model_key(spec), check_name=outcome.name, passed=outcome.passed, partition=week,
        blocking=True, severity=AssetCheckSeverity.ERROR, description=outcome.reason,
        metadata={"week": week, "model_version": version or "none (not trained)",
                  "reason": MetadataValue.text(outcome.reason),
                  **{k: (v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else MetadataValue.json(v))
                     for k, v in facts.items()}},
    ))


def _evaluation_row(spec: ModelSpec, result) -> pd.DataFrame:
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
        **{f"gate_{g.name}": g.passed for g in result.gates},
        "gate_reasons_json": json.dumps({g.name: g.reason for g in result.gates}),
        "aliases_set": ",".join(c.alias for c in result.alias_changes),
        "evaluated_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
    }])


def _backtest_result(spec: ModelSpec, warehouse: Warehouse) -> MaterializeResult:
    """The primary metric per evaluated week, as a table and a plot."""
    from mlplatform.lib.plots import backtest_plot

    key = backtest_key(spec)
    if not warehouse.table_exists(spec.name, "evaluations"):
        return MaterializeResult(asset_key=key, metadata={"weeks": 0, "note": "no week evaluated yet"})
    with warehouse.get_connection() as connection:
        table = connection.execute(
            f'select week, model_version, value, ci_low, ci_high, "gate_{gate_lib.THRESHOLD}" as threshold_ok, '
            f'"gate_{gate_lib.CHAMPION}" as champion_ok, "gate_{gate_lib.SANITY}" as sanity_ok, aliases_set '
            f'from "{spec.name}".evaluations order by week'
        ).fetchdf()
    metric = spec.primary_metric
    weeks = [f"{w:%Y-%m-%d}" for w in table["week"]]
    png = backtest_plot(weeks, table["value"], table["ci_low"], table["ci_high"], metric, spec.gates.threshold,
                        spec.name)
    rows = "\n".join(
        f"| {w} | v{r.model_version} | {r.value:.4g} | {r.ci_low:.4g} .. {r.ci_high:.4g} | "
        f"{'PASS' if r.threshold_ok else 'FAIL'} | {'PASS' if r.champion_ok else 'FAIL'} | "
        f"{'PASS' if r.sanity_ok else 'FAIL'} | {r.aliases_set or ''} |"
        for w, r in zip(weeks, table.itertuples(), strict=True)
    )
    markdown = (f"| week | version | {metric} | 95% CI | threshold | champion | sanity | aliases set |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- |\n" + rows)
    return MaterializeResult(asset_key=key, metadata={
        "weeks": len(table),
        f"mean_{metric}": float(table["value"].mean()),
        f"last_{metric}": float(table["value"].iloc[-1]),
        "plot": MetadataValue.md(_image(png, "backtest")),
        "per_week": MetadataValue.md(markdown),
    })
