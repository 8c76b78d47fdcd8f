"""Data assets of one model: ``raw`` (source rows per week), optional dbt ``staged``, ``features`` (Pandera-gated).

Each gate is a blocking check yielded by the asset it gates. When a gate fails,
the asset yields the failed check and no output: the week's stored rows stay
as they were and nothing downstream runs.
"""


from collections.abc import Iterator
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
    Output,
    asset,
)
from dagster_pandera import pandera_schema_to_dagster_type

from mlplatform import names
from mlplatform.defs.keys import features_key, raw_key, staged_key
from mlplatform.defs.metadata import column_schema_metadata, markdown_table, owners
from mlplatform.defs.partitions import SINGLE_RUN, run_window, weekly_partitions
from mlplatform.defs.resources import Warehouse
from mlplatform.lib.audit import AuditEvent, append_events
from mlplatform.lib.source import checked_data_path, read_source, rows_in_window, source_columns
from mlplatform.lib.table_schemas import raw_schema, validate_table
from mlplatform.lib.validation import (
    GateReport,
    check_source_week,
    coerce_numeric_columns,
    features_schema,
    parse_source_times,
    to_features_frame,
    validate_features,
)
from mlplatform.lib.warehouse import quote_identifier
from mlplatform.specs import ModelSpec

RAW_CHECK = names.RAW_CHECK
FEATURES_CHECK = names.FEATURES_CHECK


def partition_expr(spec: ModelSpec) -> str:
    """The time column as the DuckDB IO manager pastes it into ``DELETE/SELECT ... WHERE {expr} >= ...``: quoted."""
    return quote_identifier(spec.time_column)


def gate_metadata(report: GateReport) -> dict[str, Any]:
    """What a person needs to see in the check's panel to know why a gate failed."""
    metadata: dict[str, Any] = {"summary": MetadataValue.text(report.summary)}
    if report.problems:
        metadata["failures"] = MetadataValue.md(markdown_table(pd.DataFrame(report.problems)))
        metadata["failing_columns"] = MetadataValue.json(sorted({p["column"] for p in report.problems}))
        metadata["failure_count"] = MetadataValue.int(sum(int(p["failures"]) for p in report.problems))
    if report.sample_rows is not None and len(report.sample_rows):
        metadata["sample_failing_rows"] = MetadataValue.md(markdown_table(report.sample_rows))
    for name, value in report.facts.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metadata[name] = value
        elif value is not None:
            metadata[name] = MetadataValue.json(value)
    return metadata


def _rows_per_week_table(counts: dict[str, int]) -> MetadataValue:
    return MetadataValue.md(markdown_table(pd.DataFrame({"week": list(counts), "rows": list(counts.values())})))


def build_raw_asset(spec: ModelSpec):
    """``<model>/raw``: the source rows whose event time falls in the week, stored in DuckDB."""
    key = raw_key(spec)
    path = checked_data_path(spec.source_path, spec.spec_file.parent)  # inside the allowed roots, symlinks resolved
    header = set(source_columns(path))
    required_columns = [c for c in dict.fromkeys([spec.time_column, *spec.modelling_columns]) if c in header]
    schema = raw_schema(spec)

    @asset(
        key=key,
        group_name=spec.name,
        pool=names.model_pool(spec.name),
        partitions_def=weekly_partitions(spec),
        backfill_policy=SINGLE_RUN,
        output_required=False,
        owners=owners(spec),
        kinds={"duckdb", "pandas"},
        description=f"Rows of `{path.name}` whose event time (`{spec.time_column}`, UTC) falls in the week. "
        "Re-materializing a week replaces its rows.",
        metadata={"partition_expr": partition_expr(spec), "source": MetadataValue.path(str(path)),
                  **column_schema_metadata(schema)},
        check_specs=[
            AssetCheckSpec(
                RAW_CHECK,
                asset=key,
                blocking=True,
                description="Every column the spec needs is present, numeric columns hold numbers, event times parse one "
                "way; a week without rows fails alone (a warning on that week) unless no week of the run has rows.",
            )
        ],
    )
    def raw(context: AssetExecutionContext, warehouse: Warehouse) -> Iterator[Output | AssetCheckResult]:
        window = run_window(context)
        frame = read_source(path, spec.source.null_values)
        times = None
        if spec.source.timestamp:
            times = parse_source_times(frame, spec)
        else:
            frame[spec.time_column] = pd.Timestamp(spec.partitions.start)
        unplaced = int(frame[spec.time_column].isna().sum())
        rows = rows_in_window(frame, spec.time_column, window)
        report = check_source_week(rows, spec, window, required_columns, times)
        if unplaced:
            context.log.warning(f"{unplaced} source rows have no valid event time and belong to no week")
        if not report.passed:
            context.log.error(f"source contract failed for {window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}: {report.summary}")
            _audit_gate(context, warehouse, spec, RAW_CHECK, report)
            yield AssetCheckResult(
                check_name=RAW_CHECK, passed=False, severity=AssetCheckSeverity.ERROR, metadata=gate_metadata(report)
            )
            return
        rows = validate_table(coerce_numeric_columns(rows, spec), schema, f"{spec.name}.{names.RAW}")
        empty_weeks = report.facts["empty_weeks"]
        yield Output(
            rows,
            metadata={
                "rows": len(rows),
                "empty_weeks": MetadataValue.json(empty_weeks),
                "window": f"{window.start:%Y-%m-%d} .. {window.end:%Y-%m-%d} (end excluded, UTC)",
                "rows_per_week": _rows_per_week_table(report.facts["rows_per_week"]),
                "source_rows_without_event_time": unplaced,
                "preview": MetadataValue.md(markdown_table(rows.head(5))),
            },
        )
        _report_empty_weeks(context, key, report, RAW_CHECK)
        _audit_gate(context, warehouse, spec, RAW_CHECK, report)
        yield AssetCheckResult(check_name=RAW_CHECK, passed=True, metadata=gate_metadata(report))

    return raw


def _audit_gate(context: AssetExecutionContext, warehouse: Warehouse, spec: ModelSpec, check: str,
                report: GateReport) -> None:
    """The data gate's verdict in the audit trail (one event per run, naming its weeks)."""
    window = run_window(context)
    weeks = f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}"
    with warehouse.get_connection() as connection:
        append_events(connection, [AuditEvent(
            spec.name, "data_gate", f"dagster run {context.run.run_id}", f"{check} on {weeks}: {report.summary}",
            week=f"{window.start:%Y-%m-%d}", passed=report.passed, dagster_run_id=context.run.run_id,
            details={"check": check, "weeks": weeks, "failing_columns": sorted({p["column"] for p in report.problems})})])
        if not report.passed:  # the run stops at this gate: the trail is reported here, not by a later step
            from mlplatform.defs.audit_assets import audit_trail_materialization

            context.log_event(audit_trail_materialization(spec, connection))


def _report_empty_weeks(context: AssetExecutionContext, key: AssetKey, report: GateReport, check: str) -> None:
    """Weeks without rows in a range that has data: a warning and a failed check evaluation on that week alone.

    One run over a range yields one output for every week (Dagster marks them all materialized, with
    ``rows_per_week`` and ``empty_weeks`` saying which hold nothing); the failed evaluation on each empty
    week's own partition keeps the UI from showing it as a good week. The weeks with rows proceed.
    """
    notes = report.facts.get("empty_week_notes", [])
    for week, note in zip(report.facts["empty_weeks"], notes or report.facts["empty_weeks"], strict=False):
        context.log.warning(f"{'/'.join(key.path)}: {note}")
        context.log_event(AssetCheckEvaluation(
            asset_key=key, check_name=check, passed=False, partition=week, blocking=False,
            severity=AssetCheckSeverity.WARN, description=note,
            metadata={"week": week, "summary": MetadataValue.text(note), "rows": 0},
        ))


def build_features_asset(spec: ModelSpec):
    """``<model>/features``: the modelling table for the week, validated by the Pandera schema built from the spec."""
    key = features_key(spec)
    upstream = staged_key(spec) if spec.staging else raw_key(spec)
    schema = features_schema(spec)

    @asset(
        key=key,
        group_name=spec.name,
        pool=names.model_pool(spec.name),
        deps=[upstream],
        partitions_def=weekly_partitions(spec),
        backfill_policy=SINGLE_RUN,
        output_required=False,
        owners=owners(spec),
        kinds={"pandera", "duckdb", "pandas"},
        dagster_type=pandera_schema_to_dagster_type(schema),
        description=f"Modelling table of {spec.name}: event time, key, features and target `{spec.target}`, "
        "validated against the Pandera schema generated from the spec.",
        metadata={"partition_expr": partition_expr(spec), **column_schema_metadata(schema)},
        check_specs=[
            AssetCheckSpec(
                FEATURES_CHECK,
                asset=key,
                blocking=True,
                description="Pandera schema from the spec: dtypes, nullability, allowed categories, ranges, unique key, "
                "rows in every week.",
            )
        ],
    )
    def features(context: AssetExecutionContext, warehouse: Warehouse) -> Iterator[Output | AssetCheckResult]:
        window = run_window(context)
        if not warehouse.table_exists(upstream.path[0], upstream.path[1]):
            raise RuntimeError(f"{'/'.join(upstream.path)} has never been materialized; materialize it first")
        frame = warehouse.read_window(upstream.path[0], upstream.path[1], spec.time_column, window)
        table = to_features_frame(frame, spec)
        validated, report = validate_features(table, spec, window)
        if validated is None:
            context.log.error(f"features schema failed for {window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}: {report.summary}")
            _audit_gate(context, warehouse, spec, FEATURES_CHECK, report)
            yield AssetCheckResult(
                check_name=FEATURES_CHECK, passed=False, severity=AssetCheckSeverity.ERROR, metadata=gate_metadata(report)
            )
            return
        yield Output(
            validated,
            metadata={
                "rows": len(validated),
                "empty_weeks": MetadataValue.json(report.facts["empty_weeks"]),
                "window": f"{window.start:%Y-%m-%d} .. {window.end:%Y-%m-%d} (end excluded, UTC)",
                "target_null_share": report.facts["target_null_share"] or 0.0,
                "rows_per_week": _rows_per_week_table(report.facts["rows_per_week"]),
                "preview": MetadataValue.md(markdown_table(validated.head(5))),
            },
        )
        _report_empty_weeks(context, key, report, FEATURES_CHECK)
        _audit_gate(context, warehouse, spec, FEATURES_CHECK, report)
        yield AssetCheckResult(check_name=FEATURES_CHECK, passed=True, metadata=gate_metadata(report))

    return features
