"""The DuckDB warehouse file: replacing a week's rows atomically, and opening it from outside a run politely."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
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


WAREHOUSE_URL_ENV = "MLPLATFORM_WAREHOUSE_URL"
"""A ``postgresql://`` URL selects the PostgreSQL warehouse (:mod:`mlplatform.lib.warehouse_postgres`); unset, the
DuckDB file under ``MLPLATFORM_HOME`` (the default). ``configure_process`` exports the resolved setting."""


def postgres_url() -> str | None:
    """The PostgreSQL warehouse's URL when one is configured, else None (the DuckDB file)."""
    from mlplatform.lib.warehouse_postgres import is_postgres_url

    url = os.environ.get(WAREHOUSE_URL_ENV, "").strip()
    return url if is_postgres_url(url) else None


def warehouse_exists(path: Path) -> bool:
    """Whether there is a warehouse to read: a configured PostgreSQL server always counts; else the file."""
    return postgres_url() is not None or Path(path).exists()


def warehouse_label(path: Path) -> str:
    """The warehouse as messages name it: the file, or the PostgreSQL URL without its password."""
    url = postgres_url()
    if url is None:
        return str(path)
    from mlplatform.lib.warehouse_postgres import redacted

    return redacted(url)


def is_postgres(connection: object) -> bool:
    return getattr(connection, "backend", None) == "postgres"


def lock_model(connection: object, model: str) -> None:
    """Hold ``model``'s lock until the caller's transaction ends: whoever appends its audit events or moves its aliases
    takes it first, so two writers never interleave. PostgreSQL: an advisory transaction lock (the caller must have
    begun a transaction). DuckDB: nothing to do, its file lock already lets one process write."""
    if is_postgres(connection):
        from mlplatform.lib.warehouse_postgres import lock_model as postgres_lock

        postgres_lock(connection, model)  # type: ignore[arg-type]


class WarehouseBusy(RuntimeError):
    """Another process kept the warehouse's write lock for longer than we were willing to wait."""


class WarehouseDamaged(RuntimeError):
    """The warehouse file fails an integrity read: opening it read-write would damage it further."""


WAIT_REPORT_SECONDS = 5.0
"""How often a connection that waits for the warehouse's lock says so (``on_wait``)."""

_HOLDER_PID = re.compile(r"\(PID (\d+)\)")
_WHOLE: dict[Path, tuple[int, int, int, int]] = {}  # file -> identity (dev, inode, size, mtime) last found whole
_WHOLE_LOCK = threading.Lock()


def lock_holder_pid(error: BaseException) -> int | None:
    """The process id DuckDB names in a lock conflict ("Conflicting lock is held in ... (PID 1234)"), if any."""
    found = _HOLDER_PID.search(str(error))
    return int(found.group(1)) if found else None


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def remember_whole(path: Path) -> None:
    """After this process closed its own read-write connection cleanly: the file as it now is needs no new read."""
    identity = _identity(path)
    if identity is not None:
        with _WHOLE_LOCK:
            _WHOLE[path.resolve()] = identity


def integrity_problem(path: Path, wait_seconds: float, on_wait: Callable[[str], None] | None = None) -> str | None:
    """One line naming the damage when the warehouse file does not read whole; None when it does (or is absent).

    Reads the catalog, then every column of every table: each block is read (a file cut short fails here)
    and its checksum verified (~0.3-0.8 s for 170 MB; free blocks, which hold nothing, are not read). The
    result is remembered per process and file identity (device, inode, size, mtime): a run pays once per step
    process, and again only after another process changed the file.
    """
    if postgres_url() is not None:
        return None  # PostgreSQL keeps its own integrity (WAL, checksums); nothing to read here
    identity = _identity(path)
    if identity is None or identity[2] == 0:
        return None  # DuckDB creates it
    key = path.resolve()
    with _WHOLE_LOCK:
        if _WHOLE.get(key) == identity:
            return None
    try:
        connection = _connect_waiting(path, time.monotonic() + wait_seconds, wait_seconds, True, on_wait)
    except duckdb.ConnectionException as error:
        if "different configuration" in str(error):
            return None  # this process already has it open (read-write): it was read whole when it was opened
        return damage_message(path, error)
    except duckdb.Error as error:
        return damage_message(path, error)
    try:
        with connection:
            tables = connection.execute("select table_schema, table_name from information_schema.tables "
                                        "where table_type = 'BASE TABLE'").fetchall()
            for schema, table in tables:  # reads every column: a damaged block fails here, not in a run
                connection.execute(f"select count(*), max(hash(t)) from {table_name(schema, table)} as t").fetchall()
    except duckdb.Error as error:
        return damage_message(path, error)
    with _WHOLE_LOCK:
        _WHOLE[key] = identity
    return None


def damage_message(path: Path, error: BaseException | str) -> str:
    """The one line every command and run gives for a damaged warehouse."""
    what = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    return f"warehouse {path} fails an integrity read ({' '.join(what.split())}); restore it from a backup " \
        "(docs/operations.md)"


def verify_warehouse(path: Path, wait_seconds: float, on_wait: Callable[[str], None] | None = None) -> None:
    """Raise :class:`WarehouseDamaged` (one line) when the file does not read whole; see :func:`integrity_problem`."""
    problem = integrity_problem(path, wait_seconds, on_wait)
    if problem:
        raise WarehouseDamaged(problem)


def connect_when_free(path: Path, wait_seconds: float, read_only: bool = False,
                      on_wait: Callable[[str], None] | None = None, verify: bool = True,
                      report_every: float = WAIT_REPORT_SECONDS) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse, checked whole first, waiting while another process holds its lock.

    DuckDB lets one process at a time open the file: a Dagster run holds it briefly for each week it
    records, but a data step or dbt may hold it for minutes. Waiting, then failing with a clear
    error, beats a traceback halfway through a change. ``on_wait`` hears which process holds the lock every
    ``report_every`` seconds (a run passes its log). A damaged file raises :class:`WarehouseDamaged` before it is
    opened read-write (DuckDB would fail halfway and grow it); ``verify=False`` only for the check itself.
    """
    url = postgres_url()
    if url is not None:
        from mlplatform.lib.warehouse_postgres import WarehouseUnreachable, connect

        try:
            return connect(url, wait_seconds, on_wait, read_only)  # type: ignore[return-value]
        except WarehouseUnreachable as error:
            raise WarehouseBusy(str(error)) from error
    deadline = time.monotonic() + wait_seconds
    if verify:
        verify_warehouse(path, wait_seconds, on_wait)
    return _connect_waiting(path, deadline, wait_seconds, read_only, on_wait, report_every)


def _connect_waiting(path: Path, deadline: float, wait_seconds: float, read_only: bool,
                     on_wait: Callable[[str], None] | None,
                     report_every: float = WAIT_REPORT_SECONDS) -> duckdb.DuckDBPyConnection:
    started = time.monotonic()
    next_report = started + report_every
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                raise WarehouseBusy(f"the warehouse {path} stayed locked by another process for {wait_seconds:g} s "
                                    f"({error})") from error
            if on_wait is not None and now >= next_report:
                pid = lock_holder_pid(error)
                on_wait(f"waiting for the warehouse {path}: {f'process {pid}' if pid else 'another process'} holds "
                        f"its lock ({now - started:.0f} s so far; giving up after {wait_seconds:g} s)")
                next_report = now + report_every
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)


def replace_week_rows(connection: duckdb.DuckDBPyConnection, schema: str, table: str, frame: pd.DataFrame,
                      week_column: str, weeks: list, transaction: bool = True) -> None:
    """Replace the given weeks' rows on an open connection, in one transaction: readers never see a week missing.

    ``transaction=False`` when the caller already holds a transaction that must include this write.
    """
    if is_postgres(connection):
        from mlplatform.lib import warehouse_postgres

        warehouse_postgres.replace_week_rows(connection, schema, table, frame, week_column, weeks,  # type: ignore[arg-type]
                                             transaction)
        return
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
