"""The three stores (DuckDB warehouse, MLflow store, Dagster instance): are they whole, and a consistent copy of them.

Losing one store silently is worse than losing it loudly: a recreated ``mlflow.db`` has no champion while
the audit still names one, and serving or promotion would act on a registry that forgot everything.
:func:`check_stores` names such damage; :func:`backup_stores` makes the copy that repairs it
(restore: ``docs/operations.md``).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb

from mlplatform.lib.warehouse import (
    connect_when_free,
    damage_message,
    integrity_problem,
    postgres_url,
    warehouse_exists,
)

CHAMPION = "champion"
WAIT_SECONDS = 60.0


class StoresDamaged(RuntimeError):
    """A store is damaged, replaced or lost (:func:`check_registry`): the problems, one sentence each."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class Registry(Protocol):
    """What the check needs from :class:`mlplatform.lib.tracking.Tracker`."""

    tracking_uri: str

    def alias_version(self, model_name: str, alias: str) -> str | None: ...

    def version_tags(self, model_name: str, version: str) -> dict[str, str]: ...


def _sqlite_file(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def _sqlite_problem(path: Path, what: str, timeout: float = 5.0) -> str | None:
    """``PRAGMA quick_check`` on a SQLite file, read-only; None when it is whole, or when a writer holds it past
    ``timeout`` (busy is not damaged: the check is left to the next reader rather than failing a healthy run)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)) as connection:
            verdict = connection.execute("pragma quick_check").fetchone()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return None
        return f"{what} {path} cannot be read ({error}); restore it from a backup (docs/operations.md)"
    except sqlite3.DatabaseError as error:
        return f"{what} {path} cannot be read ({error}); restore it from a backup (docs/operations.md)"
    if verdict and verdict[0] != "ok":
        return f"{what} {path} fails its integrity check ({verdict[0]}); restore it from a backup (docs/operations.md)"
    return None


def refuse_damaged_sqlite(tracking_uri: str) -> None:
    """Raise :class:`StoresDamaged` (one line) when ``tracking_uri`` is a SQLite file that fails ``quick_check``:
    opening an MLflow client on it would fail halfway with a raw SQLAlchemy error. An absent file is left to MLflow
    (it creates one)."""
    path = _sqlite_file(tracking_uri)
    if path is not None and path.exists():
        problem = _sqlite_problem(path, "MLflow store")
        if problem:
            raise StoresDamaged([problem])


def _audit_champions(connection: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """The audit's latest champion per model: (model, version, when)."""
    exists = connection.execute("select count(*) from information_schema.tables where table_schema = 'audit' "
                                "and table_name = 'alias_changes'").fetchone()
    if not exists or not exists[0]:
        return []
    return [tuple(str(v) for v in row) for row in connection.execute(
        "select model, version, changed_at from (select *, row_number() over (partition by model "
        "order by changed_at desc) as n from audit.alias_changes where alias = ?) as latest where n = 1 "
        "order by model", [CHAMPION]).fetchall()]


def check_warehouse(warehouse_path: Path, wait_seconds: float = WAIT_SECONDS,
                    on_wait: Callable[[str], None] | None = None) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Problems reading every table of the warehouse (:func:`~mlplatform.lib.warehouse.integrity_problem`), and
    the audit's latest champion per model (model, version, when)."""
    if not warehouse_exists(warehouse_path):
        return [], []
    problem = integrity_problem(warehouse_path, wait_seconds, on_wait)
    if problem:
        return [problem], []
    try:
        connection = connect_when_free(warehouse_path, wait_seconds, read_only=True, on_wait=on_wait, verify=False)
    except duckdb.ConnectionException as error:
        if "different configuration" not in str(error):
            return [damage_message(warehouse_path, error)], []
        # this process holds it read-write (it was read whole then): read through the same database
        connection = connect_when_free(warehouse_path, wait_seconds, on_wait=on_wait, verify=False)
    except duckdb.Error as error:
        return [damage_message(warehouse_path, error)], []
    try:
        with connection:
            return [], _audit_champions(connection)
    except duckdb.Error as error:
        return [damage_message(warehouse_path, error)], []


def registry_problems(tracker: Registry, champions: list[tuple[str, str, str]]) -> list[str]:
    """Each model whose champion in the audit trail is not the champion in the registry, one sentence each."""
    problems = []
    for model, version, changed_at in champions:
        where = f"the registry at {tracker.tracking_uri}"
        try:
            tracker.version_tags(model, version)
        except Exception:  # noqa: BLE001 - MLflow raises its own error for a missing model or version
            problems.append(f"{model}: the audit says v{version} became champion at {changed_at}, but {where} has no "
                            f"such version: the MLflow store was replaced or lost; restore it from a backup "
                            "(docs/operations.md) before promoting or serving")
            continue
        current = tracker.alias_version(model, CHAMPION)
        if current != version:
            problems.append(f"{model}: the audit says v{version} became champion at {changed_at}, but {where} names "
                            f"{'v' + current if current else 'no champion'}: the alias was moved outside the platform "
                            "or the store was restored from an older copy")
    return problems


def check_registry(warehouse_path: Path, tracker: Registry, wait_seconds: float = WAIT_SECONDS,
                   on_wait: Callable[[str], None] | None = None) -> list[str]:
    """What a run checks before it uses the registry: the warehouse reads whole, the MLflow SQLite file passes
    ``quick_check``, and every champion the audit names is still the registry's champion (a deleted or
    replaced ``mlflow.db`` is named here, not by an MLflow error halfway through a step)."""
    problems, champions = check_warehouse(warehouse_path, wait_seconds, on_wait)
    mlflow_db = _sqlite_file(tracker.tracking_uri)
    if mlflow_db is not None and mlflow_db.exists():
        problem = _sqlite_problem(mlflow_db, "MLflow store")
        if problem:
            return [*problems, problem]
    return problems + settled_registry_problems(warehouse_path, tracker, champions, wait_seconds)


def settled_registry_problems(warehouse_path: Path, tracker: Registry, champions: list[tuple[str, str, str]],
                              wait_seconds: float) -> list[str]:
    """:func:`registry_problems`, each disagreement checked again under the model's lock on PostgreSQL: there another
    process may be between its alias move and the commit of its audit row (its unit not yet visible), which is not
    damage. DuckDB's file lock already kept that moment from every reader."""
    problems = registry_problems(tracker, champions)
    if not problems or postgres_url() is None:
        return problems
    from mlplatform.lib.warehouse import lock_model

    settled = []
    with connect_when_free(warehouse_path, wait_seconds) as connection:
        for model in sorted({model for model, _, _ in champions}):
            connection.begin()
            try:
                connection.execute(f"set local lock_timeout = '{int(wait_seconds * 1000)}ms'")
                lock_model(connection, model)
                settled += registry_problems(tracker, [c for c in _audit_champions(connection) if c[0] == model])
            finally:
                connection.rollback()
    return settled


def check_stores(home: Path, tracker: Registry, wait_seconds: float = WAIT_SECONDS) -> list[str]:
    """Every sign that a store was damaged, replaced or lost, one sentence each; empty when all agree.

    Checks: each warehouse table reads whole; the MLflow SQLite file and the Dagster instance's SQLite
    files pass ``quick_check``; each model's champion in the audit trail is still the champion in the registry.
    Call it before promoting and at the start of a run (it reads, never writes).
    """
    problems, champions = check_warehouse(home / "warehouse.duckdb", wait_seconds)
    mlflow_db = _sqlite_file(tracker.tracking_uri)
    if mlflow_db is not None and mlflow_db.exists():
        problem = _sqlite_problem(mlflow_db, "MLflow store")
        if problem:
            return [*problems, problem]
    for db in sorted((home / "dagster").rglob("*.db")):
        problem = _sqlite_problem(db, "Dagster instance file")
        if problem:
            problems.append(problem)
    return problems + settled_registry_problems(home / "warehouse.duckdb", tracker, champions, wait_seconds)


@dataclass
class BackupReport:
    folder: Path
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite file (the backup API copies a snapshot while others write). A file SQLite
    cannot read raises :class:`StoresDamaged` naming it (a backup of it would copy the damage)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            with closing(sqlite3.connect(target)) as dst:
                src.backup(dst)
        finally:
            src.close()
    except sqlite3.DatabaseError as error:
        raise StoresDamaged([f"SQLite file {source} cannot be read ({error}); restore it from a backup "
                             "(docs/operations.md)"]) from None


def _copy_tree_with_sqlite(source: Path, target: Path) -> int:
    """A folder copied file by file; SQLite files through the backup API, their -wal/-shm/-journal left out."""
    count = 0
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        if path.suffix == ".db":
            _sqlite_copy(path, target / relative)
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)
        count += 1
    return count


def backup_stores(home: Path, target: Path | None = None, tracking_uri: str | None = None,
                  wait_seconds: float = WAIT_SECONDS, artifact_root: Path | str | None = None) -> BackupReport:
    """Copy the warehouse, the MLflow store (SQLite + artifacts) and the Dagster instance into ``target``.

    The warehouse is copied while this process holds a read-only connection, so no run can write to it
    meanwhile (a run waits, see ``connect_when_free``); the SQLite files go through SQLite's backup API.
    The artifacts are copied from ``artifact_root`` when it is a folder (default: ``artifacts`` next to the
    SQLite file, where the platform puts them). A remote MLflow tracking server, or artifacts in object
    storage, are not copied: back up the server's database and its artifact store.
    """
    folder = target or home / "backups" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; give a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    report = BackupReport(folder=folder)
    warehouse = home / "warehouse.duckdb"
    url = postgres_url()
    if url is not None:  # a server's database: its own tools make a consistent copy while runs go on
        from mlplatform.lib.warehouse_postgres import redacted

        report.skipped.append(f"warehouse {redacted(url)} on PostgreSQL: back it up with its own tools, e.g. "
                              f"`pg_dump --format=custom --file warehouse.dump '{redacted(url)}'` (restore: "
                              "`pg_restore --clean --dbname URL warehouse.dump`; docs/operations.md)")
    elif warehouse.exists():
        with connect_when_free(warehouse, wait_seconds, read_only=True):
            shutil.copy2(warehouse, folder / warehouse.name)
            wal = warehouse.with_name(warehouse.name + ".wal")
            if wal.exists():
                shutil.copy2(wal, folder / wal.name)
        report.copied.append(f"warehouse {warehouse}")
    else:
        report.skipped.append(f"warehouse {warehouse} (does not exist yet)")
    mlflow_dir = home / "mlflow"
    mlflow_db = _sqlite_file(tracking_uri) if tracking_uri else mlflow_dir / "mlflow.db"
    if mlflow_db is None:
        report.skipped.append(f"MLflow tracking server {tracking_uri} (back up its database and artifact store)")
    elif mlflow_db.exists():
        _sqlite_copy(mlflow_db, folder / "mlflow" / "mlflow.db")
        report.copied.append(f"MLflow store {mlflow_db}")
        artifacts = artifact_root if artifact_root is not None else mlflow_db.parent / "artifacts"
        if not isinstance(artifacts, Path):
            report.skipped.append(f"MLflow artifacts {artifacts} (back up that store itself)")
        elif artifacts.exists():
            shutil.copytree(artifacts, folder / "mlflow" / "artifacts")
            report.copied.append(f"MLflow artifacts {artifacts}")
    else:
        report.skipped.append(f"MLflow store {mlflow_db} (does not exist yet)")
    dagster_home = home / "dagster"
    if dagster_home.exists():
        files = _copy_tree_with_sqlite(dagster_home, folder / "dagster")
        report.copied.append(f"Dagster instance {dagster_home} ({files} files)")
    checkpoints = home / "audit_checkpoints"  # the audit heads (lib/audit_integrity.py): restored with the warehouse
    if checkpoints.exists():
        shutil.copytree(checkpoints, folder / checkpoints.name)
        report.copied.append(f"audit checkpoints {checkpoints}")
    return report


def describe(report: BackupReport) -> list[str]:
    lines: list[Any] = [f"backup in {report.folder}"]
    lines += [f"  copied  {item}" for item in report.copied]
    lines += [f"  skipped {item}" for item in report.skipped]
    return lines
