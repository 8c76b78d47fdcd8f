"""Resources: the DuckDB warehouse (reads, week-replacing writes, patient connections), its IO manager,
the MLflow model registry, and the platform's state folders. All built from one
:class:`~mlplatform.lib.settings.Settings` in ``definitions.py``: the one configuration path inside runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pandera.pandas as pa
from dagster import ConfigurableResource, InitResourceContext
from dagster._core.storage.db_io_manager import (  # what DuckDBPandasIOManager itself builds
    DbClient,
    DbIOManager,
    DbTypeHandler,
    TableSlice,
)
from dagster_duckdb import DuckDBResource
from dagster_duckdb.io_manager import DuckDbClient, _get_cleanup_statement
from dagster_duckdb_pandas import DuckDBPandasIOManager, DuckDBPandasTypeHandler
from pydantic import PrivateAttr

from mlplatform.lib.settings import DEFAULT_MLFLOW_UI_URL, DEFAULT_WAREHOUSE_WAIT_SECONDS, Settings
from mlplatform.lib.source import Window
from mlplatform.lib.table_schemas import validate_table
from mlplatform.lib.warehouse import (
    connect_when_free,
    postgres_url,
    quote_identifier,
    remember_whole,
    replace_week_rows,
    table_name,
    verify_warehouse,
)

if TYPE_CHECKING:  # importing mlflow is slow (docs/benchmarks.md): only runs that train pay for it
    from mlplatform.lib.tracking import Tracker


def _run_log(context) -> Callable[[str], None] | None:
    """Where a connection waiting for the warehouse's lock says so: the run's log (None outside a run)."""
    log = getattr(context, "log", None)
    return log.info if log is not None else None


@contextmanager
def _checked_connection(path: Path, wait_seconds: float, on_wait: Callable[[str], None] | None):
    """A read-write connection to a warehouse found whole (:func:`connect_when_free` raises
    :class:`~mlplatform.lib.warehouse.WarehouseDamaged` first); closed cleanly, the file as this process left it
    is remembered as whole, so the next step of the run need not read it all again."""
    connection = connect_when_free(path, wait_seconds, on_wait=on_wait)
    try:
        yield connection
    except BaseException:
        connection.close()
        raise
    connection.close()
    remember_whole(path)


class Warehouse(DuckDBResource):
    """The DuckDB warehouse file. Connections wait (with backoff, naming the holder in the run's log every few
    seconds) while another process holds the file's lock, up to ``wait_seconds``: a reader must delay a run,
    never fail it. A damaged file is refused before it is opened read-write."""

    wait_seconds: float = DEFAULT_WAREHOUSE_WAIT_SECONDS
    _on_wait: Callable[[str], None] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._on_wait = _run_log(context)

    def verify(self) -> None:
        """Raise :class:`~mlplatform.lib.warehouse.WarehouseDamaged` when the file fails an integrity read: for a
        step that lets another program (dbt) open it read-write."""
        verify_warehouse(Path(self.database), self.wait_seconds, self._on_wait)

    @contextmanager
    def get_connection(self):
        with _checked_connection(Path(self.database), self.wait_seconds, self._on_wait) as connection:
            yield connection

    def table_exists(self, schema: str, table: str) -> bool:
        with self.get_connection() as connection:
            found = connection.execute(
                "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
                [schema, table],
            ).fetchone()
        return bool(found and found[0])

    def read_window(self, schema: str, table: str, time_column: str, window: Window) -> pd.DataFrame:
        """Rows of ``schema.table`` whose event time falls in the window, in time order."""
        column = quote_identifier(time_column)
        with self.get_connection() as connection:
            return connection.execute(
                f"select * from {table_name(schema, table)} where {column} >= ? and {column} < ? order by {column}",
                [window.start, window.end],
            ).fetchdf()


def _quoted(table_slice: TableSlice) -> TableSlice:
    """The slice with its schema and table as quoted identifiers: dagster-duckdb pastes both into its SQL as they
    are (``create schema {schema}``, ``select ... from {schema}.{table}``), so a model name that is a keyword would
    break (or change) the statement. Model names are checked at load too; this is the second line of defence."""
    return table_slice._replace(schema=quote_identifier(table_slice.schema), table=quote_identifier(table_slice.table))


class _PatientDuckDbClient(DuckDbClient):
    """dagster-duckdb's client, connecting with :func:`connect_when_free` instead of its fixed ten retries, and
    naming tables quoted."""

    @staticmethod
    def delete_table_slice(context, table_slice: TableSlice, connection) -> None:
        DuckDbClient.delete_table_slice(context, _quoted(table_slice), connection)

    @staticmethod
    def ensure_schema_exists(context, table_slice: TableSlice, connection) -> None:
        DuckDbClient.ensure_schema_exists(context, _quoted(table_slice), connection)

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        return DuckDbClient.get_select_statement(_quoted(table_slice))

    @staticmethod
    @contextmanager
    def connect(context, _):
        config = context.resource_config
        with _checked_connection(Path(config["database"]),
                                 float(config.get("wait_seconds") or DEFAULT_WAREHOUSE_WAIT_SECONDS),
                                 _run_log(context)) as connection:
            yield connection


class _QuotedPandasTypeHandler(DuckDBPandasTypeHandler):
    """dagster-duckdb-pandas' handler, naming the table quoted (see :func:`_quoted`)."""

    def handle_output(self, context, table_slice: TableSlice, obj: pd.DataFrame, connection):
        return super().handle_output(context, _quoted(table_slice), obj, connection)

    def load_input(self, context, table_slice: TableSlice, connection) -> pd.DataFrame:
        return super().load_input(context, _quoted(table_slice), connection)


class _PostgresClient(DbClient):
    """Dagster's database IO manager on PostgreSQL (Dagster ships none): one transaction per output, so the
    delete of the partition's rows and the insert of the new ones commit together: readers never see a week
    missing, and a failed write leaves the old rows."""

    @staticmethod
    def delete_table_slice(context, table_slice: TableSlice, connection) -> None:
        quoted = _quoted(table_slice)
        exists = connection.execute("select to_regclass(?)", [f"{quoted.schema}.{quoted.table}"]).fetchone()
        if exists and exists[0] is not None:  # a missing table would abort the transaction: looked up first
            connection.execute(_get_cleanup_statement(quoted))

    @staticmethod
    def ensure_schema_exists(context, table_slice: TableSlice, connection) -> None:
        connection.execute(f"create schema if not exists {quote_identifier(table_slice.schema)}")

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        return DuckDbClient.get_select_statement(_quoted(table_slice))

    @staticmethod
    @contextmanager
    def connect(context, _):
        config = context.resource_config
        connection = connect_when_free(Path(config["database"]),
                                       float(config.get("wait_seconds") or DEFAULT_WAREHOUSE_WAIT_SECONDS),
                                       on_wait=_run_log(context))
        try:
            connection.begin()
            yield connection
            if connection.in_transaction:
                connection.commit()
        finally:
            connection.close()  # rolls back what was not committed


class _PostgresPandasTypeHandler(DbTypeHandler[pd.DataFrame]):
    """DataFrames into PostgreSQL tables: created from the frame's columns on first use, new columns added."""

    def handle_output(self, context, table_slice: TableSlice, obj: pd.DataFrame, connection):
        if not obj.empty:
            from mlplatform.lib.warehouse_postgres import frame_column_types

            target = table_name(table_slice.schema, table_slice.table)
            connection.create_table_for(target, obj)
            existing = connection.table_columns(table_slice.schema, table_slice.table)
            for name, kind in frame_column_types(obj):
                if name not in existing:
                    connection.execute(f"alter table {target} add column if not exists {quote_identifier(name)} {kind}")
            connection.insert_frame(target, obj)
        return {"row_count" if not context.has_partition_key else "partition_row_count": obj.shape[0]}

    def load_input(self, context, table_slice: TableSlice, connection) -> pd.DataFrame:
        return connection.execute(_PostgresClient.get_select_statement(table_slice)).fetchdf()

    @property
    def supported_types(self):
        return [pd.DataFrame]


class WarehouseIOManager(DuckDBPandasIOManager):
    """Stores partitioned DataFrames in the warehouse (the week's rows replaced), waiting for the lock like
    :class:`Warehouse` does; schema and table names quoted in every statement. With a PostgreSQL warehouse
    (``MLPLATFORM_WAREHOUSE_URL``) the same base on :class:`_PostgresClient`."""

    wait_seconds: float = DEFAULT_WAREHOUSE_WAIT_SECONDS
    backend: str = "duckdb"  # "postgres": the warehouse at MLPLATFORM_WAREHOUSE_URL (not in config: it holds a password)

    @staticmethod
    def type_handlers() -> list:
        return [_QuotedPandasTypeHandler()]

    def create_io_manager(self, context) -> DbIOManager:
        if self.backend == "postgres" or postgres_url():
            return DbIOManager(db_client=_PostgresClient(), database=self.database, schema=self.schema_,
                               type_handlers=[_PostgresPandasTypeHandler()], default_load_type=pd.DataFrame,
                               io_manager_name="PostgresIOManager")
        return DbIOManager(db_client=_PatientDuckDbClient(), database=self.database, schema=self.schema_,
                           type_handlers=self.type_handlers(), default_load_type=self.default_load_type(),
                           io_manager_name="DuckDBIOManager")


class ModelRegistry(ConfigurableResource):
    """MLflow tracking + registry, as resolved by the platform's settings."""

    tracking_uri: str
    artifact_root: str = ""  # empty: the store's own artifact location
    ui_url: str = DEFAULT_MLFLOW_UI_URL
    warehouse: str = ""  # the warehouse whose audit trail names the champions this registry must still hold
    wait_seconds: float = DEFAULT_WAREHOUSE_WAIT_SECONDS
    _on_wait: Callable[[str], None] | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        root = settings.artifact_root
        return cls(tracking_uri=settings.tracking_uri, artifact_root=str(root) if root else "",
                   ui_url=settings.mlflow_ui_url, warehouse=str(settings.warehouse_path),
                   wait_seconds=settings.warehouse_wait_seconds)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._on_wait = _run_log(context)

    def tracker(self) -> Tracker:
        """The registry's client, once the stores are checked (:func:`mlplatform.lib.stores.check_registry`):
        a damaged warehouse or MLflow file, or a registry that lost a champion the audit names, fails the step
        with that sentence before anything is trained, logged or moved."""
        tracker = _tracker_for(self.tracking_uri, self.artifact_root)
        if self.warehouse:
            from mlplatform.lib.stores import StoresDamaged, check_registry

            problems = check_registry(Path(self.warehouse), tracker, self.wait_seconds, self._on_wait)
            if problems:
                raise StoresDamaged(problems)
        return tracker

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, model: str, version: str) -> str:
        return f"{self.ui_url}/#/models/{model}/versions/{version}"


class PlatformState(ConfigurableResource):
    """The platform's state folder (MLPLATFORM_HOME): where runs put reports and dbt targets."""

    home: str

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    def reports_dir(self, model: str) -> Path:
        folder = Path(self.home) / "reports" / model
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def dbt_target_dir(self, run_id: str) -> Path:
        return Path(self.home) / "dbt" / run_id


_TRACKERS: dict[tuple[str, str], Tracker] = {}


def _tracker_for(tracking_uri: str, artifact_root: str) -> Tracker:
    """One client per store and process: it caches loaded champion models across weeks of a backfill."""
    from mlplatform.lib.tracking import Tracker

    key = (tracking_uri, artifact_root)
    if key not in _TRACKERS:
        root: Path | str | None = artifact_root or None
        if artifact_root and "://" not in artifact_root:
            root = Path(artifact_root)
        _TRACKERS[key] = Tracker(tracking_uri, root)
    return _TRACKERS[key]


def write_week_rows(warehouse: Warehouse, schema: str, table: str, frame: pd.DataFrame, week_column: str,
                    weeks: list, *, table_schema: pa.DataFrameSchema) -> None:
    """Replace the given weeks' rows of ``schema.table`` (created from the frame on first use), once every row
    meets ``table_schema`` (else :class:`~mlplatform.lib.table_schemas.TableRefused` and nothing is written)."""
    validate_table(frame, table_schema, f"{schema}.{table}")
    with warehouse.get_connection() as connection:
        replace_week_rows(connection, schema, table, frame, week_column, weeks)
