"""The warehouse on PostgreSQL: a psycopg2 connection that speaks the subset of DuckDB's connection API the
platform uses, so every reader and writer works on both backends unchanged.

DuckDB lets one process write its file, so its lock serialized every run, promotion and audit append for free.
PostgreSQL takes many writers at once: the guarantees that lock gave are made explicit here and in
:mod:`mlplatform.lib.warehouse` (:func:`~mlplatform.lib.warehouse.lock_model`): a per-model advisory transaction
lock held by whoever appends audit events or moves aliases, and a unique (model, seq) index on the audit trail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.errors
import psycopg2.extras

URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str | None) -> bool:
    return bool(location) and str(location).lower().startswith(URL_SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password: what messages and logs may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _python_value(value: Any) -> Any:
    """A value psycopg2 can adapt: numpy scalars as Python ones, NaN/NaT/NA as NULL, timestamps as datetimes."""
    if value is None:
        return None
    if isinstance(value, float | np.floating) and np.isnan(value):
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime(warn=False)
    if isinstance(value, np.generic):
        return value.item()
    return value


def frame_rows(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(_python_value(v) for v in row) for row in frame.itertuples(index=False, name=None)]


def postgres_type(dtype: Any) -> str:
    """The PostgreSQL column type for a pandas dtype (DuckDB infers the same from a registered frame)."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "double precision"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    return "text"


def frame_column_types(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, PostgreSQL type) per column; an object column holding dates or datetimes is typed as such."""
    found = []
    for name, dtype in frame.dtypes.items():
        kind = postgres_type(dtype)
        if kind == "text" and pd.api.types.is_object_dtype(dtype):
            sample = frame[name].dropna()
            if len(sample):
                first = sample.iloc[0]
                if isinstance(first, bool | np.bool_):
                    kind = "boolean"
                elif isinstance(first, datetime):
                    kind = "timestamp"
                elif isinstance(first, date):
                    kind = "date"
                elif isinstance(first, int | np.integer):
                    kind = "bigint"
                elif isinstance(first, float | np.floating):
                    kind = "double precision"
        found.append((str(name), kind))
    return found


def _placeholders(sql: str) -> str:
    """DuckDB's ``?`` parameters as psycopg2's ``%s`` (outside quoted text), literal ``%`` doubled."""
    out, quote = [], None
    for char in sql:
        if quote:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


class PostgresConnection:
    """A psycopg2 connection with DuckDB's connection API (``execute(...).fetchall()/fetchone()/fetchdf()``,
    ``register``, ``begin``/``commit``/``rollback``): autocommit unless a transaction was begun."""

    backend = "postgres"

    def __init__(self, raw: Any, url: str) -> None:
        self.raw = raw
        self.url = url
        raw.autocommit = True
        self.in_transaction = False
        self._cursor: Any = None
        self._frames: dict[str, pd.DataFrame] = {}

    # --- DuckDB's API -------------------------------------------------------------------------------------------
    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> PostgresConnection:
        by_name = _insert_by_name(sql)
        if by_name is not None and by_name[1] in self._frames:
            self.insert_frame(by_name[0], self._frames[by_name[1]])
            return self
        if not parameters and _is_ddl(sql):
            self._run_ddl(sql)
            self._cursor = None
            return self
        cursor = self.raw.cursor()
        if parameters:
            cursor.execute(_placeholders(sql), [_python_value(p) for p in parameters])
        else:
            cursor.execute(sql)
        self._cursor = cursor
        return self

    def fetchall(self) -> list[tuple]:
        if self._cursor is None or self._cursor.description is None:
            return []
        return self._cursor.fetchall()

    def fetchone(self) -> tuple | None:
        if self._cursor is None or self._cursor.description is None:
            return None
        return self._cursor.fetchone()

    def fetchdf(self) -> pd.DataFrame:
        if self._cursor is None or self._cursor.description is None:
            return pd.DataFrame()
        columns = [d.name for d in self._cursor.description]
        frame = pd.DataFrame(self._cursor.fetchall(), columns=columns)
        for d in self._cursor.description:  # timestamps and dates as DuckDB's fetchdf gives them
            if d.type_code in (1114, 1082) and len(frame):
                frame[d.name] = pd.to_datetime(frame[d.name])
            elif d.type_code == 701 and len(frame):
                frame[d.name] = frame[d.name].astype("float64")
        return frame

    def register(self, name: str, frame: pd.DataFrame) -> None:
        self._frames[name] = frame

    def unregister(self, name: str) -> None:
        self._frames.pop(name, None)

    def begin(self) -> None:
        self.raw.cursor().execute("begin")
        self.in_transaction = True

    def commit(self) -> None:
        self.raw.cursor().execute("commit")
        self.in_transaction = False

    def rollback(self) -> None:
        self.raw.cursor().execute("rollback")
        self.in_transaction = False

    def close(self) -> None:
        if self.in_transaction:
            self.rollback()
        self.raw.close()

    def __enter__(self) -> PostgresConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_ddl(self, sql: str) -> None:
        """Idempotent DDL (``create ... if not exists``, ``alter ... add column if not exists``) on a side connection
        in autocommit, once per process and database: inside a writer's transaction it would hold the table's
        exclusive lock to the commit and serialize every model's writers; run by two processes at once, PostgreSQL
        may refuse one (a duplicate catalog row): retried."""
        key = (self.url, sql)
        if key in _DDL_DONE:
            return
        for attempt in range(5):
            try:
                with psycopg2.connect(self.url) as side:
                    side.autocommit = True
                    side.cursor().execute(sql)
                side.close()
                break
            except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateObject, psycopg2.errors.DuplicateTable,
                    psycopg2.errors.DuplicateSchema, psycopg2.errors.DuplicateColumn):
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        _DDL_DONE.add(key)

    # --- What DuckDB does from a registered frame -----------------------------------------------------------------
    def insert_frame(self, target: str, frame: pd.DataFrame) -> None:
        """``insert into target by name select * from frame``: the frame's columns, by name."""
        if frame.empty:
            return
        columns = ", ".join(quote(c) for c in frame.columns)
        psycopg2.extras.execute_values(self.raw.cursor(), f"insert into {target} ({columns}) values %s",
                                       frame_rows(frame), page_size=1000)

    def table_columns(self, schema: str, table: str) -> set[str]:
        return {row[0] for row in self.execute(
            "select column_name from information_schema.columns where table_schema = ? and table_name = ?",
            [schema, table]).fetchall()}

    def create_table_for(self, target: str, frame: pd.DataFrame) -> None:
        columns = ", ".join(f"{quote(name)} {kind}" for name, kind in frame_column_types(frame))
        self.execute(f"create table if not exists {target} ({columns})")


_DDL_DONE: set[tuple[str, str]] = set()


def _is_ddl(sql: str) -> bool:
    """Only idempotent schema statements (every part ``create``/``alter`` ... ``if not exists``)."""
    parts = [p.strip().lower() for p in sql.split(";") if p.strip()]
    return bool(parts) and all(p.startswith(("create ", "alter ")) and "if not exists" in p for p in parts)


def quote(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _insert_by_name(sql: str) -> tuple[str, str] | None:
    """(target, source) of ``insert into <target> by name select * from <source>``, else None."""
    words = sql.split()
    lowered = [w.lower() for w in words]
    if (len(words) == 9 and lowered[:2] == ["insert", "into"] and lowered[3:8] == ["by", "name", "select", "*", "from"]):
        return words[2], words[8]
    return None


class WarehouseUnreachable(RuntimeError):
    """The server did not accept a connection in time (``warehouse.connect_when_free`` turns it into its
    ``WarehouseBusy``, which every caller already handles: this module imports nothing of ``warehouse``)."""


def connect(url: str, wait_seconds: float, on_wait: Callable[[str], None] | None = None,
            read_only: bool = False) -> PostgresConnection:
    """A connection, retrying while the server refuses (starting, or out of connections) up to ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            raw = psycopg2.connect(url, connect_timeout=max(1, int(min(wait_seconds, 10))))
            break
        except psycopg2.OperationalError as error:
            if time.monotonic() >= deadline:
                raise WarehouseUnreachable(f"the warehouse {redacted(url)} did not accept a connection within "
                                    f"{wait_seconds:g} s ({' '.join(str(error).split())})") from error
            if on_wait is not None:
                on_wait(f"waiting for the warehouse {redacted(url)}: {' '.join(str(error).split())}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    connection = PostgresConnection(raw, url)
    if read_only:
        raw.cursor().execute("set session characteristics as transaction read only")
    return connection


def lock_model(connection: PostgresConnection, model: str) -> None:
    """Take the model's advisory transaction lock (released at commit or rollback); waits while another holds it."""
    connection.raw.cursor().execute("select pg_advisory_xact_lock(hashtext(%s))", [f"mlplatform:{model}"])


def replace_week_rows(connection: PostgresConnection, schema: str, table: str, frame: pd.DataFrame,
                      week_column: str, weeks: list, transaction: bool = True) -> None:
    """PostgreSQL's :func:`mlplatform.lib.warehouse.replace_week_rows`: the weeks' rows replaced in one transaction."""
    target = f"{quote(schema)}.{quote(table)}"
    own = transaction and not connection.in_transaction
    if own:
        connection.begin()
    try:
        connection.execute(f"create schema if not exists {quote(schema)}")
        connection.create_table_for(target, frame)
        existing = connection.table_columns(schema, table)
        for name, kind in frame_column_types(frame):
            if name not in existing:
                connection.execute(f"alter table {target} add column if not exists {quote(name)} {kind}")
        connection.execute(f"delete from {target} where {quote(week_column)} = any(?)",
                           [[_python_value(w) for w in weeks]])
        connection.insert_frame(target, frame)
        if own:
            connection.commit()
    except Exception:
        if own:
            connection.rollback()
        raise
