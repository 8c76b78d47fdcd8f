"""The audit trail of alias changes (who, what, when, why), kept in the warehouse for later readers."""

from __future__ import annotations

from collections.abc import Iterable

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
