"""``<model>/staged``: the spec's dbt model as a weekly-partitioned Dagster asset."""


import json
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey, TableColumn, TableSchema
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from mlplatform import names
from mlplatform.defs.keys import raw_key, staged_key
from mlplatform.defs.metadata import COLUMN_SCHEMA, column_schema, owners
from mlplatform.defs.partitions import SINGLE_RUN, run_window, weekly_partitions
from mlplatform.defs.resources import PlatformState, Warehouse
from mlplatform.lib.table_schemas import staged_schema, validate_table
from mlplatform.specs import ModelSpec


class SpecTranslator(DagsterDbtTranslator):
    """Maps the spec's dbt model to ``<model>/staged`` and its source ``<model>.raw`` to ``<model>/raw``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        kind = dbt_resource_props["resource_type"]
        if kind == "source" and dbt_resource_props["source_name"] == self.spec.name and dbt_resource_props["name"] == names.RAW:
            return raw_key(self.spec)
        if kind == "model" and self.spec.staging and dbt_resource_props["name"] == self.spec.staging.dbt_model:
            return staged_key(self.spec)
        return super().get_asset_key(dbt_resource_props)

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        """The staged model's columns: typed from the spec (what the features step needs), then the dbt yml's own."""
        metadata = dict(super().get_metadata(dbt_resource_props))
        if self.get_asset_key(dbt_resource_props) == staged_key(self.spec):
            metadata[COLUMN_SCHEMA] = _with_dbt_columns(column_schema(staged_schema(self.spec)),
                                                        metadata.get(COLUMN_SCHEMA))
        return metadata

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return self.spec.name

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> list[str] | None:
        return owners(self.spec) or None


def _with_dbt_columns(typed: TableSchema, documented: TableSchema | None) -> TableSchema:
    """The spec's typed columns, described by dbt where its yml does; the dbt model's other columns after them."""
    described = {c.name: c for c in documented.columns} if documented is not None else {}
    columns = [TableColumn(c.name, c.type, described[c.name].description or c.description, c.constraints, c.tags)
               if c.name in described else c for c in typed.columns]
    known = {c.name for c in typed.columns}
    return TableSchema(columns=columns + [c for name, c in described.items() if name not in known])


def build_staged_assets(spec: ModelSpec, project: DbtProject):
    """dbt runs for the partition window; the model's incremental delete+insert on week_start replaces those weeks.
    ``project`` is the configured dbt project, its manifest prepared (:mod:`mlplatform.defs.dbt_project`)."""
    assert spec.staging is not None
    schema = staged_schema(spec)

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        select=spec.staging.dbt_model,
        name=names.multi_asset_op(spec.name, names.STAGED),
        pool=names.model_pool(spec.name),
        partitions_def=weekly_partitions(spec),
        backfill_policy=SINGLE_RUN,
        dagster_dbt_translator=SpecTranslator(spec),
    )
    def staged(context: AssetExecutionContext, dbt: DbtCliResource, platform: PlatformState,
               warehouse: Warehouse) -> Iterator[Any]:
        window = run_window(context)
        warehouse.verify()  # dbt opens the file read-write: a damaged one is refused first, as every step does
        dbt_vars = {"min_time": f"{window.start:%Y-%m-%d %H:%M:%S}", "max_time": f"{window.end:%Y-%m-%d %H:%M:%S}"}
        target = platform.dbt_target_dir(context.run.run_id)
        events: list[Any] = []
        try:
            for event in dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context, target_path=target).stream():
                events.append(event)
        except Exception:  # dbt's own failure (a failed dbt test): what it reported is shown, as without a schema
            yield from events
            raise
        # dbt wrote the window's rows: a row that breaks the schema fails the step before its materialization is
        # recorded, so nothing downstream reads it.
        rows = warehouse.read_window(spec.name, names.STAGED, spec.time_column, window)
        validate_table(rows, schema, f"{spec.name}.{names.STAGED}")
        yield from events

    return staged
