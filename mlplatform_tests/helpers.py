"""Helpers to run pipelines and read what they left in the instance and the warehouse."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

if TYPE_CHECKING:
    from mlplatform.lib.tracking import Tracker

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def load_definitions() -> Definitions:
    """Build the code location from the current environment, as `dagster dev` would."""
    from mlplatform.definitions import build_definitions

    return build_definitions()


def run_weeks(defs: Definitions, model: str, instance: DagsterInstance, first: str, last: str | None = None,
              assets: list[str] | None = None) -> ExecuteInProcessResult:
    """Materialize a model's assets (or only ``assets``, e.g. ["raw", "features"]) for one week or a range, in one run."""
    job = defs.resolve_job_def(f"{model}_pipeline")
    selection = [AssetKey([model, name]) for name in assets] if assets else None
    if last is None or last == first:
        return job.execute_in_process(instance=instance, partition_key=first, raise_on_error=False, run_config=QUIET,
                                      asset_selection=selection)
    tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
    return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False, run_config=QUIET,
                                  asset_selection=selection)


def open_warehouse(path: Path, read_only: bool = False):
    """The warehouse the test runs on (``warehouse_backend``): the DuckDB file at ``path``, or the PostgreSQL database
    ``MLPLATFORM_WAREHOUSE_URL`` names. Same API either way (``execute(...).fetchall()/fetchdf()``)."""
    from mlplatform.lib.warehouse import postgres_url

    if postgres_url() is None:
        return duckdb.connect(str(path), read_only=read_only)
    from mlplatform.lib.warehouse import connect_when_free

    return connect_when_free(path, 60.0, read_only=read_only)


def warehouse_query(home: Path, sql: str) -> pd.DataFrame:
    with open_warehouse(home / "warehouse.duckdb", read_only=True) as connection:
        return connection.execute(sql).fetchdf()


def check_record(instance: DagsterInstance, asset: list[str], check: str):
    return instance.get_latest_asset_check_evaluation_record(AssetCheckKey(AssetKey(asset), check))


def materialized_partitions(instance: DagsterInstance, asset: list[str]) -> set[str]:
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset)), limit=10_000).records
    return {r.partition_key for r in records}


def toy_pipeline() -> tuple[Any, pd.DataFrame]:
    """A small pipeline fitted on the toy rows, and the five input rows a registered version logs as its example."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    from mlplatform_tests.conftest import toy_rows

    rows = toy_rows()
    x = rows[["x1", "x2"]]
    return Pipeline([("estimator", LinearRegression())]).fit(x, rows["y"]), x.head(5)


def register_toy_versions(tracker: Tracker, weeks: list[str]) -> None:
    """One real MLflow version of ``toy`` per week, its gates passed (what promotion and rollback tests start from)."""
    for week in weeks:
        tracker.log_trained_model("toy", f"toy-{week}", *toy_pipeline(), {"seed": 0}, {"rmse": 0.1}, {}, {},
                                  {"gates": "passed", "week": week})


def register_failed_toy_version(tracker: Tracker, week: str) -> None:
    """A version of ``toy`` whose gates failed (it may become champion only by force)."""
    tracker.log_trained_model("toy", "toy-bad", *toy_pipeline(), {"seed": 0}, {"rmse": 9.9}, {}, {},
                              {"gates": "failed", "week": week})


def skip_on_postgres(why: str) -> None:
    """Skip a test of DuckDB's own behaviour (its file lock, its file) when it runs on the PostgreSQL warehouse."""
    import pytest

    from mlplatform.lib.warehouse import postgres_url

    if postgres_url() is not None:
        pytest.skip(f"DuckDB only: {why}")
