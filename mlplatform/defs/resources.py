"""Resources: the DuckDB warehouse (SQL reads and week-replacing writes) and the MLflow model registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from dagster import ConfigurableResource
from dagster_duckdb import DuckDBResource

from mlplatform.lib.source import Window
from mlplatform.lib.warehouse import replace_week_rows

if TYPE_CHECKING:  # mlflow costs ~1.5 s to import: only runs that train pay for it
    from mlplatform.lib.tracking import Tracker


class Warehouse(DuckDBResource):
    """The DuckDB warehouse file, for reads an IO manager cannot express (a dbt table's window)."""

    def table_exists(self, schema: str, table: str) -> bool:
        with self.get_connection() as connection:
            found = connection.execute(
                "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
                [schema, table],
            ).fetchone()
        return bool(found and found[0])

    def read_window(self, schema: str, table: str, time_column: str, window: Window) -> pd.DataFrame:
        """Rows of ``schema.table`` whose event time falls in the window, in time order."""
        with self.get_connection() as connection:
            return connection.execute(
                f'select * from "{schema}"."{table}" where "{time_column}" >= ? and "{time_column}" < ? '
                f'order by "{time_column}"',
                [window.start, window.end],
            ).fetchdf()


class ModelRegistry(ConfigurableResource):
    """MLflow tracking + registry (SQLite store and artifacts under MLPLATFORM_HOME by default)."""

    mlflow_dir: str
    ui_url: str = "http://127.0.0.1:5000"
    tracking_uri: str = ""  # a shared store (e.g. http://mlflow:5000) instead of SQLite under mlflow_dir
    artifact_root: str = ""  # with tracking_uri: where artifacts go (default: the server's artifact store)

    def tracker(self) -> Tracker:
        if self.tracking_uri:
            return _tracker_for(self.tracking_uri, self.artifact_root or None)
        return _tracker_for(self.mlflow_dir)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, model: str, version: str) -> str:
        return f"{self.ui_url}/#/models/{model}/versions/{version}"


_TRACKERS: dict[str, Tracker] = {}


def _tracker_for(location: str, artifact_root: str | None = None) -> Tracker:
    """One client per store and process: it caches loaded champion models across weeks of a backfill."""
    from mlplatform.lib.tracking import Tracker

    if location not in _TRACKERS:
        is_uri = "://" in location or location.startswith("databricks")
        _TRACKERS[location] = Tracker(location, artifact_root) if is_uri else Tracker.under(Path(location))
    return _TRACKERS[location]


def write_week_rows(warehouse: Warehouse, schema: str, table: str, frame: pd.DataFrame, week_column: str,
                    weeks: list) -> None:
    """Replace the given weeks' rows of ``schema.table`` (created from the frame on first use)."""
    with warehouse.get_connection() as connection:
        replace_week_rows(connection, schema, table, frame, week_column, weeks)
