"""The audit trail of alias changes (who, what, when, why), kept in the warehouse for later readers."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pandas as pd

AUDIT_TABLE = "audit.alias_changes"
AUDIT_DDL = """
create schema if not exists audit;
create table if not exists audit.alias_changes (
    changed_at timestamp, model varchar, alias varchar, version varchar, previous_version varchar,
    actor varchar, reason varchar, week varchar
)
"""
COLUMNS = ["changed_at", "model", "alias", "version", "previous_version", "actor", "reason", "week"]


def record_alias_changes(connection: duckdb.DuckDBPyConnection, rows: Iterable[dict]) -> int:
    frame = pd.DataFrame(list(rows), columns=COLUMNS)
    if frame.empty:
        return 0
    connection.execute(AUDIT_DDL)
    connection.register("alias_rows", frame.astype({c: "string" for c in COLUMNS if c != "changed_at"}))
    connection.execute(f"insert into {AUDIT_TABLE} by name select * from alias_rows")
    connection.unregister("alias_rows")
    return len(frame)


def alias_history(connection: duckdb.DuckDBPyConnection, model: str) -> pd.DataFrame:
    connection.execute(AUDIT_DDL)
    return connection.execute(f"select * from {AUDIT_TABLE} where model = ? order by changed_at", [model]).fetchdf()


class WarehouseBusy(RuntimeError):
    """Another process kept the warehouse's write lock for longer than we were willing to wait."""


def connect_when_free(path: Path, wait_seconds: float) -> duckdb.DuckDBPyConnection:
    """A write connection to the warehouse, waiting while another process holds its lock.

    DuckDB lets one process at a time open the file: a Dagster run holds it ~0.1 s per week it
    records, but a data step or dbt may hold it for minutes. Waiting, then failing with a clear
    error, beats a traceback halfway through a change.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise WarehouseBusy(f"the warehouse {path} stayed locked by another process for {wait_seconds:g} s "
                                    f"({error})") from error
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
