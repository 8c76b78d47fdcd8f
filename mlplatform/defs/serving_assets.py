"""``<model>/prediction_log``: what the REST service answered each week, read from its Parquet log.

The service (``mlplatform serve``) writes the log, outside Dagster: it must never hold the warehouse
lock. So the asset is external (not executed by a job); the drift step, which reads the log anyway,
reports each week of it as a materialization: rows, versions, roles and latency. The lineage then
reads model -> served predictions -> drift, and no run step waits on the service.
"""

from typing import Any

import pandas as pd
from dagster import AssetDep, AssetMaterialization, AssetSpec, MetadataValue

from mlplatform import names
from mlplatform.defs.keys import asset_key, model_key
from mlplatform.defs.metadata import column_schema_metadata, owners, rows_table
from mlplatform.defs.partitions import weekly_partitions
from mlplatform.lib.table_schemas import prediction_log_schema
from mlplatform.specs import ModelSpec


def prediction_log_key(spec: ModelSpec):
    return asset_key(spec.name, names.PREDICTION_LOG)


def build_prediction_log_spec(spec: ModelSpec) -> AssetSpec:
    return AssetSpec(
        prediction_log_key(spec), group_name=spec.name, owners=owners(spec), kinds={"fastapi", "parquet"},
        deps=[AssetDep(model_key(spec))], partitions_def=weekly_partitions(spec),
        description="Predictions the REST service (`mlplatform serve`) answered in week W, from its append-only "
        "Parquet log: rows, versions, roles (champion, canary, shadow) and latency. Written by the service; reported "
        "here by the drift step for every week it checks (validated against its schema as it reads it). The log's "
        "format is a contract: docs/serving.md.",
        metadata=column_schema_metadata(prediction_log_schema(spec)),
    )


def prediction_log_materialization(spec: ModelSpec, week: str, logged_week: pd.DataFrame) -> AssetMaterialization:
    """Week W of the log as the UI shows it."""
    from mlplatform.lib.prediction_log import weekly_summary

    summary: dict[str, Any] = weekly_summary(logged_week)
    table = rows_table(["version", "role", "rows", "p50 ms", "p99 ms"], [
        (f"v{r['version']}", r["role"], r["rows"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}")
        for r in summary["by_version_role"]])
    return AssetMaterialization(asset_key=prediction_log_key(spec), partition=week, metadata={
        "rows": summary["rows"],
        "requests": summary["requests"],
        "versions": MetadataValue.json(summary["versions"]),
        "roles": MetadataValue.json(summary["roles"]),
        "latency_p50_ms": summary["p50_ms"],
        "latency_p99_ms": summary["p99_ms"],
        "by_version_and_role": MetadataValue.md(table if summary["rows"] else "nothing logged this week"),
    })
