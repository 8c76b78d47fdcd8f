"""The DuckDB warehouse file: replacing a week's rows atomically, and opening it from outside a run politely."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pandas as pd


def quote_identifier(name: str) -> str:
    """A DuckDB identifier as SQL text: double-quoted, inner quotes doubled, so no name can end the identifier.

    Spec column names are also restricted at load (``specs.schema.check_column_name``); this is the
    second line of defence for every name that comes from a spec or a data file.
    """
    return '"' + str(name).replace('"', '""') + '"'


def table_name(schema: str, table: str) -> str:
    """``"schema"."table"``, both parts quoted."""
    return f"{quote_identifier(schema)}.{quote_identifier(table)}"


def model_schemas(connection: duckdb.DuckDBPyConnection) -> set[str]:
    """The schemas holding a model's raw or features table: the models that have run, whatever the spec folder."""
    from mlplatform import names

    return {row[0] for row in connection.execute(
        "select distinct table_schema from information_schema.tables where table_name in (?, ?)",
        [names.RAW, names.FEATURES]).fetchall()}


class WarehouseBusy(RuntimeError):
    """Another process kept the warehouse's write lock for longer than we were willing to wait."""


def connect_when_free(path: Path, wait_seconds: float, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse, waiting while another process holds its lock.

    DuckDB lets one process at a time open the file: a Dagster run holds it briefly for each week it
    records, but a data step or dbt may hold it for minutes. Waiting, then failing with a clear
    error, beats a traceback halfway through a change.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise WarehouseBusy(f"the warehouse {path} stayed locked by another process for {wait_seconds:g} s "
                                    f"({error})") from error
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)


def replace_week_rows(connection: duckdb.DuckDBPyConnection, schema: str, table: str, frame: pd.DataFrame,
                      week_column: str, weeks: list, transaction: bool = True) -> None:
    """Replace the given weeks' rows on an open connection, in one transaction: readers never see a week missing.

    ``transaction=False`` when the caller already holds a transaction that must include this write.
    """
    target = table_name(schema, table)
    connection.execute(f"create schema if not exists {quote_identifier(schema)}")
    connection.register("incoming", frame)
    try:
        connection.execute(f"create table if not exists {target} as select * from incoming limit 0")
        # A newer version may write more columns (a new gate): add them, keep the old rows.
        existing = {row[0] for row in connection.execute(
            "select column_name from information_schema.columns where table_schema = ? and table_name = ?",
            [schema, table]).fetchall()}
        for name, kind in connection.execute("select column_name, column_type from (describe incoming)").fetchall():
            if name not in existing:
                connection.execute(f"alter table {target} add column {quote_identifier(name)} {kind}")
        if transaction:
            connection.begin()
        try:
            connection.execute(f"delete from {target} where {quote_identifier(week_column)} in (select unnest(?))",
                               [weeks])
            connection.execute(f"insert into {target} by name select * from incoming")
            if transaction:
                connection.commit()
        except Exception:
            if transaction:
                connection.rollback()
            raise
    finally:
        connection.unregister("incoming")
