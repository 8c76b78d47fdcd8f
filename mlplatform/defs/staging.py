"""``<model>/staged``: the spec's dbt model as a weekly-partitioned Dagster asset."""


import json
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from mlplatform import names
from mlplatform.defs.data_assets import owners
from mlplatform.defs.dbt_project import dbt_project
from mlplatform.defs.keys import raw_key, staged_key
from mlplatform.defs.partitions import SINGLE_RUN, run_window, weekly_partitions
from mlplatform.defs.resources import PlatformState, Warehouse
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

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return self.spec.name

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> list[str] | None:
        return owners(self.spec) or None


def build_staged_assets(spec: ModelSpec):
    """dbt runs for the partition window; the model's incremental delete+insert on week_start replaces those weeks."""
    assert spec.staging is not None

    @dbt_assets(
        manifest=dbt_project.manifest_path,
        project=dbt_project,
        select=spec.staging.dbt_model,
        name=names.multi_asset_op(spec.name, names.STAGED),
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
        yield from dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context, target_path=target).stream()

    return staged
