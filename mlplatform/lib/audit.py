"""The audit trail of alias changes (who, what, when, why), kept in the warehouse for later readers.

Rows are only ever inserted: no platform code path updates or deletes them. Writers go through
:mod:`mlplatform.lib.promotion`, which inserts the row and moves the alias as one unit.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import pandas as pd

from mlplatform import names

AUDIT_TABLE = f"{names.AUDIT_SCHEMA}.{names.ALIAS_CHANGES_TABLE}"
AUDIT_DDL = f"""
create schema if not exists {names.AUDIT_SCHEMA};
create table if not exists {AUDIT_TABLE} (
    changed_at timestamp, model varchar, alias varchar, version varchar, previous_version varchar,
    actor varchar, reason varchar, week varchar, action varchar
);
alter table {AUDIT_TABLE} add column if not exists action varchar;
"""
COLUMNS = ["changed_at", "model", "alias", "version", "previous_version", "actor", "reason", "week", "action"]


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


def champion_history(connection: duckdb.DuckDBPyConnection, model: str) -> list[str]:
    """Versions that became champion, newest first (each once, at its latest promotion)."""
    connection.execute(AUDIT_DDL)
    rows = connection.execute(
        f"select version, max(changed_at) as latest from {AUDIT_TABLE} where model = ? and alias = 'champion' "
        "and version is not null group by version order by latest desc", [model]).fetchall()
    return [str(version) for version, _ in rows]
