"""``<model>/drift``: each week's features against the champion's training reference, and the check retraining reacts to.

The week loop, the statistics and the choice of weeks with an HTML report are
:func:`mlplatform.lib.drift.weekly_drift` / :func:`~mlplatform.lib.drift.weeks_with_html` (pure);
this module reads, calls them, writes the ``<model>.drift`` table and logs the events. The
HTML report is Evidently's own, rendered from a bounded sample.
"""

import base64
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetMaterialization,
    AssetSpec,
    MetadataValue,
    multi_asset,
)

from mlplatform import names
from mlplatform.defs.audit_assets import audit_trail_materialization
from mlplatform.defs.keys import asset_key, drift_key, features_key
from mlplatform.defs.metadata import column_schema_metadata, owners
from mlplatform.defs.partitions import run_window, weekly_multi_asset_options
from mlplatform.defs.resources import ModelRegistry, PlatformState, Warehouse, write_week_rows
from mlplatform.defs.serving_assets import prediction_log_key, prediction_log_materialization
from mlplatform.lib.aliases import CHAMPION
from mlplatform.lib.audit import AuditEvent, append_events
from mlplatform.lib.source import Window
from mlplatform.lib.table_schemas import drift_schema, prediction_log_schema, validate_table
from mlplatform.specs import ModelSpec

if TYPE_CHECKING:
    from mlplatform.lib.drift import Champion, DriftReport

DRIFT_CHECK = names.DRIFT_CHECK


def champion_for_drift(spec: ModelSpec, registry: ModelRegistry) -> "Champion | None":
    """The current champion: its version, its training window (from its MLflow params) and its pipeline, once per run."""
    from mlplatform.lib.drift import Champion

    tracker = registry.tracker()
    version = tracker.alias_version(spec.name, CHAMPION)
    if version is None:
        return None
    params = tracker.run(tracker.client.get_model_version(spec.name, version).run_id).data.params
    window = (datetime.fromisoformat(params["train_start"]), datetime.fromisoformat(params["train_end"]))
    return Champion(version, window, tracker.load_version(spec.name, version))


def _table(report: "DriftReport", shown: list) -> str:
    """The week's drift rows ``shown`` (all of them up to ``drift.report_features``) as a Markdown table."""
    if report.method == "evidently":
        header = "| feature | role | method | score | threshold | drifted |\n| --- | --- | --- | --- | --- | --- |\n"
        return header + "\n".join(
            f"| {c.column} | {c.role} | {c.method} | {c.score:.4g} | {c.threshold:g} | {'yes' if c.drifted else 'no'} |"
            for c in shown)
    header = ("| feature | role | test | statistic | p-value | adjusted p | effect | drifted | counts |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    return header + "\n".join(
        f"| {c.column} | {c.role} | {c.method} | {c.statistic:.4g} | {c.p_value:.3g} | {c.p_adjusted:.3g} | "
        f"{c.effect:.3f} | {'yes' if c.drifted else 'no'} | {'yes' if c.counts else 'no'} |" for c in shown)


def _batch_deps(spec: ModelSpec) -> list[AssetDep]:
    """The batch scores (``scoring.batch``), which the step reads from the log: scored first in a run."""
    return [AssetDep(asset_key(spec.name, names.SCORES))] if spec.scoring.batch else []


def build_drift_assets(spec: ModelSpec):
    numerical, categorical = spec.features.numeric, spec.features.categorical
    key = drift_key(spec)
    decides = ("a calibrated two-sample test per feature (p-values for both sample sizes, Benjamini-Hochberg, an "
               "effect-size floor)" if spec.drift.method == "calibrated" else
               "the test, score and verdict Evidently's DataDriftPreset gives")

    @multi_asset(
        name=names.multi_asset_op(spec.name, names.DRIFT),
        specs=[AssetSpec(
            key, group_name=spec.name, owners=owners(spec), kinds={"evidently", "duckdb"}, skippable=True,
            deps=[AssetDep(features_key(spec)), AssetDep(prediction_log_key(spec)), *_batch_deps(spec)],
            metadata=column_schema_metadata(drift_schema(spec)),
            description="Feature drift of week W against the champion's training reference (or the N weeks before W "
            f"when there is none), decided by {decides} (drift.method: {spec.drift.method}); the champion's prediction "
            "drift and the label drift as their own rows; the drifted share, and Evidently's HTML report (newest "
            "drifted weeks and the last week of a run). Week W's inputs are what production sent (the prediction "
            "log) when the service logged any that week, else the week's features; the metadata says which.",
        )],
        check_specs=[AssetCheckSpec(
            DRIFT_CHECK, asset=key,
            description=f"Fails when more than drift.max_drifted_share ({spec.drift.max_drifted_share:g}) of the "
            "features drifted. A failure makes the retrain sensor request a retrain.",
        )],
        **weekly_multi_asset_options(spec),
    )
    def drift(context: AssetExecutionContext) -> Iterator:
        from mlplatform.lib.drift import (
            FEATURE,
            render_evidently_report,
            shown_columns,
            shown_note,
            weekly_drift,
            weeks_with_html,
        )
        from mlplatform.lib.plots import drift_plot
        from mlplatform.lib.prediction_log import log_location_text, read_prediction_log
        from mlplatform.lib.routing import ANSWERED_ROLES

        warehouse: Warehouse = context.resources.warehouse
        registry: ModelRegistry = context.resources.model_registry
        window = run_window(context)
        platform: PlatformState = context.resources.platform
        reports_dir = platform.reports_dir(spec.name)
        run_rows = warehouse.read_window(spec.name, names.FEATURES, spec.time_column, window)  # one read, sliced per week
        logged = validate_table(read_prediction_log(platform.home_path, spec.name, window.start, window.end),
                                prediction_log_schema(spec), f"prediction log {log_location_text(platform.home_path, spec.name)}",
                                "The drift step stopped before using it: fix or remove the segments holding those rows")
        answered = logged[logged["role"].isin(ANSWERED_ROLES)]  # what clients got (or a batch), not shadow scores
        results, notes = weekly_drift(
            spec, window.week_starts(), run_rows,
            lambda start, end: warehouse.read_window(spec.name, names.FEATURES, spec.time_column, Window(start, end)),
            champion_for_drift(spec, registry), production_inputs=answered if len(answered) else None)
        for note in notes:
            context.log.warning(note) if "skipped" in note else context.log.info(note)
        with_html = weeks_with_html(results, spec.drift.html_reports_per_run)
        if results:  # every week's rows in one transaction
            rows = pd.DataFrame([{**c.as_dict(), "week": pd.Timestamp(r.week), "drifted_share": r.report.share,
                                  "check_passed": r.report.passed, "decided_by": r.report.method}
                                 for r in results for c in r.report.columns])
            rows = rows.astype({"statistic": "float64", "p_value": "float64", "p_adjusted": "float64",
                                "effect": "float64"})  # typed even when evidently leaves them empty
            write_week_rows(warehouse, spec.name, names.DRIFT_TABLE, rows, "week", [pd.Timestamp(r.week) for r in results],
                            table_schema=drift_schema(spec))
            with warehouse.get_connection() as connection:  # a failed check is an alert in the audit trail
                append_events(connection, [AuditEvent(
                    spec.name, "drift_alert", f"dagster run {context.run.run_id}", r.report.summary(), week=r.week,
                    passed=False, dagster_run_id=context.run.run_id,
                    details={"method": r.report.method, "drifted": [c.column for c in r.report.drifted],
                             "drifted_share": r.report.share, "max_drifted_share": spec.drift.max_drifted_share})
                    for r in results if not r.report.passed])
        for week_start in window.week_starts():  # what the service answered, week by week (an external asset)
            start = datetime.combine(week_start, datetime.min.time())
            served = logged[(logged["time"] >= start) & (logged["time"] < start + timedelta(weeks=1))]
            if len(served):
                context.log_event(prediction_log_materialization(spec, week_start.isoformat(), served))
        for result in results:
            week, report = result.week, result.report
            shown = shown_columns(report, spec.drift.report_features, spec.drift.seed)  # all, up to the limit
            shown_text = shown_note(report, shown)
            metadata = {
                "drifted_share": report.share,
                "drifted_features": len(report.drifted),
                "features": len(report.counted),
                "current_rows": report.current_rows,
                "reference_rows": report.reference_rows,
                "reference": MetadataValue.text(result.reference_text),
                "current": MetadataValue.text(result.inputs_from),
                "method": report.method,
                "per_feature": MetadataValue.md(_table(report, shown) + (f"\n\n{shown_text}" if shown_text else "")),
                "methods": MetadataValue.json(sorted({c.method for c in report.columns})),
                "not_compared": MetadataValue.json(report.skipped),
            }
            if shown_text:
                metadata["shown"] = MetadataValue.text(shown_text)
            if week in with_html:
                png = drift_plot([c.column for c in shown], [c.score for c in shown], [c.method for c in shown],
                                 [c.drifted for c in shown], f"{spec.name} drift, week {week}"
                                 + (f" ({len(shown)} of {len(report.columns)})" if shown_text else ""))
                metadata["plot"] = MetadataValue.md(f"![drift](data:image/png;base64,{base64.b64encode(png).decode()})")
                in_report = {c.column for c in shown if c.role == FEATURE}
                path = render_evidently_report(result.reference_rows, result.current,
                                               [c for c in numerical if c in in_report],
                                               [c for c in categorical if c in in_report],
                                               str(reports_dir / f"drift_{week}.html"), spec.drift.report_rows)
                metadata["evidently_report"] = MetadataValue.path(path)
                metadata["evidently_report_url"] = MetadataValue.url(f"file://{path}")
            context.log_event(AssetMaterialization(asset_key=key, partition=week, metadata=metadata))
            context.log_event(AssetCheckEvaluation(
                asset_key=key, check_name=DRIFT_CHECK, passed=report.passed, partition=week,
                severity=AssetCheckSeverity.WARN, description=report.summary(),
                metadata={
                    "week": week, "summary": MetadataValue.text(report.summary()), "method": report.method,
                    "drifted_share": report.share, "max_drifted_share": spec.drift.max_drifted_share,
                    "drifted": MetadataValue.json({c.column: c.brief() for c in shown if c.drifted and c.counts}),
                    "per_feature": MetadataValue.json({c.column: {**c.brief(), "role": c.role, "drifted": c.drifted,
                                                                  "counts": c.counts} for c in shown}),
                    "not_compared": MetadataValue.json(report.skipped),
                },
            ))
            context.log.info(f"{spec.name} drift week {week}: {report.summary()}")
        with warehouse.get_connection() as connection:  # the trail after the run's data gates and drift alerts
            context.log_event(audit_trail_materialization(spec, connection))
        yield from ()

    return drift
