"""``<model>/scores``: the champion's batch predictions of week W's rows (``scoring.batch: true``).

One weekly step: read week W's features and the current champion, score the rows
(:func:`mlplatform.lib.batch_scoring.score_week`), replace the week's rows of ``<model>.scores`` and write the same
predictions to the prediction log with role ``batch`` through the log's own writer (local files, or the bucket of
``MLPLATFORM_PREDICTION_LOG_URI``). Live performance, drift on production inputs and the training-data gate read
them from the log like served predictions. Without a champion nothing is scored (the result says so). The step runs after the week's training step when both
are in a run, so a version promoted for week W scores week W; a range of weeks is scored by the champion of the
moment (one run, one result for all its weeks).
"""

from collections.abc import Iterator

import pandas as pd
from dagster import AssetDep, AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, multi_asset

from mlplatform import names
from mlplatform.defs.audit_assets import audit_trail_materialization
from mlplatform.defs.keys import asset_key, backtest_key, features_key
from mlplatform.defs.metadata import column_schema_metadata, owners, rows_table
from mlplatform.defs.partitions import run_window, weekly_multi_asset_options
from mlplatform.defs.resources import ModelRegistry, PlatformState, Warehouse, write_week_rows
from mlplatform.lib.table_schemas import scores_schema
from mlplatform.specs import ModelSpec


def scores_key(spec: ModelSpec):
    return asset_key(spec.name, names.SCORES)


def build_scores_asset(spec: ModelSpec):
    """The weekly batch-scoring step of a spec with ``scoring.batch: true``."""

    @multi_asset(
        name=names.multi_asset_op(spec.name, names.SCORES),
        specs=[AssetSpec(
            scores_key(spec), group_name=spec.name, owners=owners(spec), kinds={"duckdb", "parquet"},
            # After the week's training step when it runs too (the backtest is its last output): so a version
            # trained and promoted for week W in the same run scores week W.
            skippable=True, deps=[*([AssetDep(features_key(spec))] if spec.scoring.table is None else []),
                                  AssetDep(backtest_key(spec))],
            metadata=column_schema_metadata(scores_schema(spec)),
            description="The champion's predictions of week W's rows ("
            + (f"of the table `{spec.scoring.table}`" if spec.scoring.table else "the model's features")
            + "), scored in a batch: table "
            f"`{spec.name}.{names.SCORES_TABLE}` (version and role `batch` on every row), and the prediction log with "
            "role `batch`, so live performance, drift on production inputs and the audit cover them. A range of "
            "weeks is scored by the champion of the moment; while there is none, nothing is scored (the "
            "materialization says so).",
        )],
        **weekly_multi_asset_options(spec),
    )
    def scores(context: AssetExecutionContext) -> Iterator:
        from mlplatform.lib.aliases import CHAMPION
        from mlplatform.lib.audit import AuditEvent, append_events
        from mlplatform.lib.batch_scoring import batch_request_id, score_week
        from mlplatform.lib.object_store import configured_location
        from mlplatform.lib.prediction_log import PredictionLogWriter, log_location_text, utc_now
        from mlplatform.lib.routing import BATCH_ROLE

        warehouse: Warehouse = context.resources.warehouse
        registry: ModelRegistry = context.resources.model_registry
        platform: PlatformState = context.resources.platform
        window = run_window(context)
        tracker = registry.tracker()
        version = tracker.alias_version(spec.name, CHAMPION)
        if version is None:  # still a result: drift and live performance, downstream in the run, must not be skipped
            note = f"not scored: {spec.name} has no champion yet"
            context.log.warning(f"{spec.name}: weeks {window.start:%Y-%m-%d}..{window.end:%Y-%m-%d} {note}")
            yield MaterializeResult(asset_key=scores_key(spec), metadata={"rows": 0, "note": note})
            return
        pipeline = tracker.load_version(spec.name, version)
        location = configured_location()
        writer = PredictionLogWriter(platform.home_path, uri=location.uri if location else None, input_types={
            spec.name: {**{c: "float64" for c in spec.features.numeric},
                        **{c: "string" for c in [*spec.features.categorical, *spec.features.text]}}})
        run_rows = _rows_to_score(spec, warehouse, window)
        scored_at = utc_now()
        done = []
        for week_start in window.week_starts():
            week = week_start.isoformat()
            start = pd.Timestamp(week)
            times = pd.to_datetime(run_rows[spec.time_column]) if len(run_rows) else pd.Series(dtype="datetime64[us]")
            rows = run_rows[(times >= start) & (times < start + pd.Timedelta(weeks=1))] if len(run_rows) else run_rows
            batch = score_week(spec, pipeline, version, rows, week, scored_at)
            write_week_rows(warehouse, spec.name, names.SCORES_TABLE, batch.table, "week", [start],
                            table_schema=scores_schema(spec))
            writer.write(batch.log_rows)
            writer.flush()
            done.append((week, len(batch.table)))
            writer.close()
        if writer.backlog:
            raise RuntimeError(f"{spec.name}: {writer.backlog} batch predictions could not be written to the "
                               f"prediction log {log_location_text(platform.home_path, spec.name)}; the table "
                               f"{spec.name}.{names.SCORES_TABLE} has them: run the step again once the log is writable")
        with warehouse.get_connection() as connection:
            append_events(connection, [AuditEvent(
                spec.name, "batch_scored", f"dagster run {context.run.run_id}",
                f"v{version} scored {rows} rows of week {week} in a batch", version=version, week=week,
                dagster_run_id=context.run.run_id, details={"rows": rows, "role": "batch"}) for week, rows in done])
            context.log_event(audit_trail_materialization(spec, connection))
        context.log.info(f"{spec.name}: v{version} scored " + ", ".join(f"{w} ({n} rows)" for w, n in done))
        # One result for the run's weeks (a range runs as one run), so the steps after it in the run go ahead.
        yield MaterializeResult(asset_key=scores_key(spec), metadata={
            "rows": sum(n for _, n in done), "version": version, "role": BATCH_ROLE,
            "by_week": MetadataValue.md(rows_table(["week", "rows", "version", "log request id"], [
                (w, n, f"v{version}", batch_request_id(spec.name, w, version)) for w, n in done])),
            "table": MetadataValue.text(f"{spec.name}.{names.SCORES_TABLE}"),
            "prediction_log": MetadataValue.text(log_location_text(platform.home_path, spec.name)),
        })

    return scores


def _rows_to_score(spec: ModelSpec, warehouse: Warehouse, window) -> pd.DataFrame:
    """The run's rows to score: the model's features, or ``scoring.table``'s rows in the window (checked for the
    columns scoring needs); none when the table does not exist yet."""
    from mlplatform.lib.warehouse import quote_identifier, table_name

    if spec.scoring.table is None:
        if not warehouse.table_exists(spec.name, names.FEATURES):
            return pd.DataFrame(columns=spec.modelling_columns)
        return warehouse.read_window(spec.name, names.FEATURES, spec.time_column, window)
    schema, _, table = spec.scoring.table.partition(".")
    if not warehouse.table_exists(schema, table):
        raise ValueError(f"{spec.name}: scoring.table {spec.scoring.table} does not exist in the warehouse; build it "
                         "(e.g. with dbt) before scoring, or remove scoring.table to score the model's features")
    column = quote_identifier(spec.time_column)
    with warehouse.get_connection() as connection:
        rows = connection.execute(f"select * from {table_name(schema, table)} where {column} >= ? and {column} < ? "
                                  f"order by {column}", [window.start, window.end]).fetchdf()
    needed = [spec.time_column, *spec.source.key, *spec.feature_columns]
    missing = [c for c in dict.fromkeys(needed) if c not in rows.columns]
    if missing:
        raise ValueError(f"{spec.name}: scoring.table {spec.scoring.table} lacks column(s) {', '.join(missing)}; it "
                         f"needs the time column, the key and every feature: {', '.join(dict.fromkeys(needed))}")
    return rows
