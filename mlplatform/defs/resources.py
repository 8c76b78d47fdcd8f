"""Resources: the DuckDB warehouse (IO manager + SQL reads) and dbt."""

from __future__ import annotations

import pandas as pd
from dagster_duckdb import DuckDBResource

from mlplatform.lib.source import Window


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

