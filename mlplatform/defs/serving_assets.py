"""``<model>/prediction_log``: what the REST service answered each week, read from its Parquet log.

The service owns the log (it must never hold the warehouse lock); this asset makes each week of it
visible in the lineage model -> served predictions -> drift, with rows, versions, roles and latency.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta

from dagster import AssetDep, AssetExecutionContext, AssetMaterialization, AssetSpec, MetadataValue, multi_asset

from mlplatform import names
from mlplatform.defs.data_assets import owners
from mlplatform.defs.keys import asset_key, model_key
from mlplatform.defs.metadata import rows_table
from mlplatform.defs.partitions import run_window, weekly_multi_asset_options
from mlplatform.defs.resources import PlatformState
from mlplatform.specs import ModelSpec


def build_prediction_log_asset(spec: ModelSpec):
    key = asset_key(spec.name, names.PREDICTION_LOG)

    @multi_asset(
        name=names.multi_asset_op(spec.name, names.PREDICTION_LOG),
        specs=[AssetSpec(
            key, group_name=spec.name, owners=owners(spec), kinds={"fastapi", "parquet"}, skippable=True,
            deps=[AssetDep(model_key(spec))],
            description="Predictions the REST service (`mlplatform serve`) answered in week W, read from its "
            "append-only Parquet log: rows, versions, roles (champion, canary, shadow) and latency. The log's "
            "format is a contract: docs/serving.md.",
        )],
        **{**weekly_multi_asset_options(spec), "required_resource_keys": {"platform"}},
    )
    def prediction_log(context: AssetExecutionContext) -> Iterator:
        from mlplatform.lib.prediction_log import read_prediction_log, weekly_summary

        platform: PlatformState = context.resources.platform
        window = run_window(context)
        logged = read_prediction_log(platform.home_path, spec.name, window.start, window.end, expand_inputs=False)
        for week_start in window.week_starts():
            start = datetime.combine(week_start, datetime.min.time())
            week = logged[(logged["time"] >= start) & (logged["time"] < start + timedelta(weeks=1))]
            summary = weekly_summary(week)
            table = rows_table(["version", "role", "rows", "p50 ms", "p99 ms"], [
                (f"v{r['version']}", r["role"], r["rows"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}")
                for r in summary["by_version_role"]])
            context.log_event(AssetMaterialization(asset_key=key, partition=week_start.isoformat(), metadata={
                "rows": summary["rows"],
                "requests": summary["requests"],
                "versions": MetadataValue.json(summary["versions"]),
                "roles": MetadataValue.json(summary["roles"]),
                "latency_p50_ms": summary["p50_ms"],
                "latency_p99_ms": summary["p99_ms"],
                "by_version_and_role": MetadataValue.md(table if summary["rows"] else "nothing logged this week"),
            }))
        yield from ()

    return prediction_log
