"""``<model>/drift``: each week's features against the champion's training reference, and the check retraining reacts to.

The statistics are :mod:`mlplatform.lib.drift` (Evidently's tests, computed fast) for every
week; the HTML report is Evidently's own, rendered from a bounded sample for the newest
drifted weeks and the last week of each run.
"""

import base64
from collections.abc import Iterator
from datetime import datetime, timedelta

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
from mlplatform.defs.data_assets import owners
from mlplatform.defs.keys import drift_key, features_key
from mlplatform.defs.partitions import run_window, weekly_multi_asset_options
from mlplatform.defs.resources import ModelRegistry, Warehouse, write_week_rows
from mlplatform.lib.aliases import CHAMPION
from mlplatform.lib.settings import load_settings
from mlplatform.lib.source import Window, rows_in_window
from mlplatform.specs import ModelSpec

DRIFT_CHECK = names.DRIFT_CHECK


def champion_training_window(spec: ModelSpec, registry: ModelRegistry) -> tuple[tuple[datetime, datetime] | None, str | None]:
    """The current champion's training window (from its MLflow params), read once per run."""
    tracker = registry.tracker()
    version = tracker.alias_version(spec.name, CHAMPION)
    if version is None:
        return None, None
    params = tracker.run(tracker.client.get_model_version(spec.name, version).run_id).data.params
    return (datetime.fromisoformat(params["train_start"]), datetime.fromisoformat(params["train_end"])), version


def build_drift_assets(spec: ModelSpec):
    numerical, categorical = spec.features.numeric, spec.features.categorical
    key = drift_key(spec)

    @multi_asset(
        name=names.multi_asset_op(spec.name, names.DRIFT),
        specs=[AssetSpec(
            key, group_name=spec.name, owners=owners(spec), kinds={"evidently", "duckdb"}, skippable=True,
            deps=[AssetDep(features_key(spec))],
            description="Feature drift of week W against the champion's training reference (or the N weeks before W "
            "when there is none): per-feature test, score and verdict as Evidently's DataDriftPreset decides them, "
            "the drifted share, and Evidently's HTML report (newest drifted weeks and the last week of a run).",
        )],
        check_specs=[AssetCheckSpec(
            DRIFT_CHECK, asset=key,
            description=f"Fails when more than drift.max_drifted_share ({spec.drift.max_drifted_share:g}) of the "
            "features drifted. A failure makes the retrain sensor request a retrain.",
        )],
        **weekly_multi_asset_options(spec),
    )
    def drift(context: AssetExecutionContext) -> Iterator:
        from mlplatform.lib.drift import dataset_drift, profile_reference, reference_span, render_evidently_report
        from mlplatform.lib.plots import drift_plot

        warehouse: Warehouse = context.resources.warehouse
        registry: ModelRegistry = context.resources.model_registry
        window = run_window(context)
        weeks = window.week_starts()
        profiles: dict[tuple, object] = {}
        reports_dir = load_settings().home / "reports" / spec.name
        reports_dir.mkdir(parents=True, exist_ok=True)
        champion_window, champion_version = champion_training_window(spec, registry)
        reports = []
        run_rows = warehouse.read_window(spec.name, "features", spec.time_column, window)  # one read, sliced per week
        for week_start in weeks:
            start = datetime.combine(week_start, datetime.min.time())
            week = week_start.isoformat()
            current = rows_in_window(run_rows, spec.time_column, Window(start, start + timedelta(weeks=1)))
            reference_start, reference_end, reference_kind = reference_span(
                start, spec.partitions.training_window_weeks, champion_window, champion_version)
            cache_key = (reference_start, reference_end)
            if cache_key not in profiles:
                reference_rows = warehouse.read_window(spec.name, "features", spec.time_column,
                                                       Window(reference_start, reference_end))
                profiles[cache_key] = (profile_reference(reference_rows, numerical, categorical), reference_rows)
            profile, reference_rows = profiles[cache_key]
            if current.empty or profile.rows == 0:
                context.log.warning(f"drift week {week}: no current rows or no reference rows ({reference_kind}); skipped")
                continue
            report = dataset_drift(profile, current, spec.drift.max_drifted_share)
            reports.append((week, report, current, reference_rows,
                            f"{reference_kind}: {reference_start:%Y-%m-%d} .. {reference_end:%Y-%m-%d}"))
        # Evidently's HTML costs ~1-2 s a week: the newest failing weeks and the run's last week get one.
        newest_failing = spec.drift.html_reports_per_run
        failing = [week for week, report, *_ in reports if not report.passed]
        failing = failing[-newest_failing:] if newest_failing else []  # ([-0:] would be every week)
        with_html = set(failing) | ({reports[-1][0]} if reports else set())
        if reports:  # every week's rows in one transaction
            rows = pd.DataFrame([{**c.as_dict(), "week": pd.Timestamp(week), "drifted_share": report.share,
                                  "check_passed": report.passed} for week, report, *_ in reports for c in report.columns])
            write_week_rows(warehouse, spec.name, "drift", rows, "week", [pd.Timestamp(week) for week, *_ in reports])
        for week, report, current, reference_rows, reference_text in reports:
            table = "| feature | method | score | threshold | drifted |\n| --- | --- | --- | --- | --- |\n" + "\n".join(
                f"| {c.column} | {c.method} | {c.score:.4g} | {c.threshold:g} | {'yes' if c.drifted else 'no'} |"
                for c in report.columns
            )
            metadata = {
                "drifted_share": report.share,
                "drifted_features": len(report.drifted),
                "features": len(report.columns),
                "current_rows": report.current_rows,
                "reference_rows": report.reference_rows,
                "reference": MetadataValue.text(reference_text),
                "per_feature": MetadataValue.md(table),
                "methods": MetadataValue.json(sorted({c.method for c in report.columns})),
            }
            if week in with_html:
                png = drift_plot([c.column for c in report.columns], [c.score for c in report.columns],
                                 [c.method for c in report.columns], [c.drifted for c in report.columns],
                                 f"{spec.name} drift, week {week}")
                metadata["plot"] = MetadataValue.md(f"![drift](data:image/png;base64,{base64.b64encode(png).decode()})")
                path = render_evidently_report(reference_rows, current, numerical, categorical,
                                               str(reports_dir / f"drift_{week}.html"), spec.drift.report_rows)
                metadata["evidently_report"] = MetadataValue.path(path)
                metadata["evidently_report_url"] = MetadataValue.url(f"file://{path}")
            context.log_event(AssetMaterialization(asset_key=key, partition=week, metadata=metadata))
            context.log_event(AssetCheckEvaluation(
                asset_key=key, check_name=DRIFT_CHECK, passed=report.passed, partition=week,
                severity=AssetCheckSeverity.WARN, description=report.summary(),
                metadata={
                    "week": week, "summary": MetadataValue.text(report.summary()),
                    "drifted_share": report.share, "max_drifted_share": spec.drift.max_drifted_share,
                    "drifted": MetadataValue.json({c.column: {"method": c.method, "score": c.score}
                                                   for c in report.drifted}),
                },
            ))
            context.log.info(f"{spec.name} drift week {week}: {report.summary()}")
        yield from ()

    return drift
