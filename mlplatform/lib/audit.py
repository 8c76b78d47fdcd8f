"""The audit trail of alias changes (who, what, when, why), kept in the warehouse for later readers.

Rows are only ever inserted: no platform code path updates or deletes them. Writers go through
:mod:`mlplatform.lib.promotion`, which inserts the row and moves the alias as one unit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pandas as pd

from mlplatform import names
from mlplatform.lib.audit_key import KEYED_SCHEME_PREFIX, UNKEYED_SCHEME, AuditKey, configured_key
from mlplatform.lib.warehouse import is_postgres, lock_model

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


# --- The event trail: every lifecycle event, hash-chained per model ---------------------------------------------

EVENTS_TABLE = f"{names.AUDIT_SCHEMA}.{names.AUDIT_EVENTS_TABLE}"
EVENTS_DDL = f"""
create schema if not exists {names.AUDIT_SCHEMA};
create table if not exists {EVENTS_TABLE} (
    model varchar, seq bigint, occurred_at timestamp, event varchar, actor varchar, version varchar, week varchar,
    passed boolean, summary varchar, dagster_run_id varchar, mlflow_run_id varchar, data_fingerprint varchar,
    code_version varchar, details varchar, prev_hash varchar, hash varchar, hash_scheme varchar
)
"""
EVENTS_UNIQUE_DDL = f"create unique index if not exists events_model_seq on {EVENTS_TABLE} (model, seq)"
"""One row per (model, seq): two writers that read the same head cannot both commit, so a fork is impossible."""
EVENT_COLUMNS = ["model", "seq", "occurred_at", "event", "actor", "version", "week", "passed", "summary", "dagster_run_id",
                 "mlflow_run_id", "data_fingerprint", "code_version", "details", "prev_hash", "hash"]
EVENTS_KEYING_DDL = f"alter table {EVENTS_TABLE} add column if not exists hash_scheme varchar"
"""Which scheme hashed each row (lib/audit_key.py): NULL before keying existed, ``sha256``, or ``hmac-sha256:<key id>``."""
EVENT_COLUMNS.append("hash_scheme")
GENESIS = "0" * 64
"""The ``prev_hash`` of a model's first event."""

EVENT_TYPES = ("data_gate", "model_trained", "gate", "training_halted", "alias_change", "approval", "rollback",
               "drift_alert", "retrain_requested", "performance_alert", "canary_stopped", "model_imported",
               "batch_scored", "recovery_started", "recovery_retrain", "recovery_ended", "canary_step",
               "canary_promoted", "approval_refused", "approval_pending", "promotion_refused", "retrain_failed")


@dataclass
class AuditEvent:
    """One lifecycle event as a person or regulator reads it: what happened, to which version, decided by whom."""

    model: str
    event: str  # one of EVENT_TYPES
    actor: str  # a person's name, or the run / sensor / schedule that acted
    summary: str
    version: str | None = None
    week: str | None = None
    passed: bool | None = None
    dagster_run_id: str | None = None
    mlflow_run_id: str | None = None
    data_fingerprint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))


def _row_hash(row: dict[str, Any], key: AuditKey | None = None) -> str:
    """SHA-256 (HMAC-SHA256 with ``key``) over the previous row's hash and every field of this row (a canonical
    JSON text). A NULL ``hash_scheme`` (rows written before it existed) is left out: their hashes still verify."""
    content = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()
               if k != "hash" and not (k == "hash_scheme" and v is None)}
    text = json.dumps(content, sort_keys=True, default=str)
    return key.mac(text) if key is not None else hashlib.sha256(text.encode()).hexdigest()


def append_events(connection: duckdb.DuckDBPyConnection, events: Iterable[AuditEvent]) -> int:
    """Append events to their models' chains (inside the caller's transaction, if any). Rows are never updated."""
    from mlplatform.lib.settings import code_version
    from mlplatform.lib.table_schemas import audit_events_schema, validate_table

    events = list(events)
    if not events:
        return 0
    if is_postgres(connection) and not connection.in_transaction:  # the lock lives as long as a transaction
        connection.begin()
        try:
            count = append_events(connection, events)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        return count
    key = configured_key()  # unusable key settings refuse here, before anything is written
    connection.execute(EVENTS_DDL)
    connection.execute(EVENTS_KEYING_DDL)
    connection.execute(EVENTS_UNIQUE_DDL)
    for model in sorted({event.model for event in events}):  # the head is read under the model's lock
        lock_model(connection, model)
    heads: dict[str, tuple[int, str]] = {}
    rows = []
    for event in events:
        if event.event not in EVENT_TYPES:
            raise ValueError(f"unknown audit event {event.event!r}; allowed: {', '.join(EVENT_TYPES)}")
        if event.model not in heads:
            found = connection.execute(f"select seq, hash from {EVENTS_TABLE} where model = ? order by seq desc limit 1",
                                       [event.model]).fetchall()  # fetchall: DuckDB 2 refuses work after a half-read
            last = found[0] if found else None
            heads[event.model] = (int(last[0]), str(last[1])) if last else (0, GENESIS)
        seq, prev = heads[event.model]
        row = {"model": event.model, "seq": seq + 1, "occurred_at": event.at, "event": event.event, "actor": event.actor,
               "version": event.version, "week": event.week, "passed": event.passed, "summary": event.summary,
               "dagster_run_id": event.dagster_run_id, "mlflow_run_id": event.mlflow_run_id,
               "data_fingerprint": event.data_fingerprint, "code_version": code_version(),
               "details": json.dumps(event.details, sort_keys=True, default=str), "prev_hash": prev,
               "hash_scheme": key.scheme if key is not None else UNKEYED_SCHEME}
        row["hash"] = _row_hash(row, key)
        heads[event.model] = (seq + 1, row["hash"])
        rows.append(row)
    frame = validate_table(pd.DataFrame(rows, columns=EVENT_COLUMNS).astype({"passed": "boolean"}),
                           audit_events_schema(), EVENTS_TABLE)
    connection.register("event_rows", frame)
    try:
        connection.execute(f"insert into {EVENTS_TABLE} by name select * from event_rows")
    finally:
        connection.unregister("event_rows")
    return len(rows)


def _events_table_exists(connection: duckdb.DuckDBPyConnection) -> bool:
    return bool(connection.execute("select count(*) from information_schema.tables where table_schema = ? and "
                                   "table_name = ?", [names.AUDIT_SCHEMA, names.AUDIT_EVENTS_TABLE]).fetchall()[0][0])


def read_events(connection: duckdb.DuckDBPyConnection, model: str, since: str | None = None) -> pd.DataFrame:
    if not _events_table_exists(connection):
        return pd.DataFrame(columns=EVENT_COLUMNS)
    return connection.execute(f"select * from {EVENTS_TABLE} where model = ? and occurred_at >= ? order by seq",
                              [model, since or "1900-01-01"]).fetchdf()


def repeats_newest_event(connection: duckdb.DuckDBPyConnection, event: AuditEvent) -> bool:
    """Whether the model's newest audit event is already ``event`` (same event, actor and version): an automatic
    decision that stands unchanged is recorded once, not at every analysis."""
    if not _events_table_exists(connection):
        return False
    newest = connection.execute(f"select event, actor, version from {EVENTS_TABLE} where model = ? order by seq desc "
                                "limit 1", [event.model]).fetchall()
    return bool(newest) and tuple(newest[0]) == (event.event, event.actor, event.version)


def models_with_trails(connection: duckdb.DuckDBPyConnection) -> list[str]:
    """Every model that has audit events here: named when a verify finds no trail, so a typo is told from a deletion."""
    if not _events_table_exists(connection):
        return []
    return [row[0] for row in connection.execute(f"select distinct model from {EVENTS_TABLE} order by 1").fetchall()]


CONFIGURED = "configured"
"""``verify_chain``'s default ``key``: the key this process is configured with (lib/audit_key.py)."""


def verify_chain(rows: pd.DataFrame, key: AuditKey | None | str = CONFIGURED) -> list[str]:
    """Every break in a model's chain, one sentence each: a row changed (its hash), deleted (a gap), or reordered.

    Keyed rows are checked with ``key`` (default: the configured one); an unkeyed row after a keyed one is a row
    written by someone without the key. Rows hashed before keying verify as plain SHA-256. The chain alone cannot
    see its newest rows deleted: lib/audit_integrity.py checks its head against anchors outside the warehouse.
    """
    if key == CONFIGURED:
        key = configured_key()
    problems = []
    previous_hash, expected_seq = GENESIS, 1
    keyed_from: int | None = None
    unverifiable: dict[str, list[int]] = {}
    for record in rows.sort_values("seq").to_dict("records"):
        seq = int(record["seq"])
        if seq != expected_seq:
            problems.append(f"event {expected_seq}" + (f"..{seq - 1}" if seq - 1 > expected_seq else "")
                            + " is missing: deleted behind the platform's back")
        if record["prev_hash"] != previous_hash:
            problems.append(f"event {seq} does not follow the event before it (prev_hash differs): a row before it "
                            "was changed or deleted")
        row = {k: (None if _missing(v) else v) for k, v in record.items()}
        row["seq"] = seq
        row["occurred_at"] = pd.Timestamp(row["occurred_at"]).to_pydatetime()
        if row.get("passed") is not None:
            row["passed"] = bool(row["passed"])
        row.setdefault("hash_scheme", None)
        scheme = row["hash_scheme"]
        row_key: AuditKey | None = None
        if scheme is None or scheme == UNKEYED_SCHEME:
            if keyed_from is not None:
                problems.append(f"event {seq} ({record['event']}) is hashed without the audit key although the chain "
                                f"is keyed from event {keyed_from} on: written by someone who does not hold the key")
        elif str(scheme).startswith(KEYED_SCHEME_PREFIX):
            keyed_from = keyed_from or seq
            if key is None or scheme != key.scheme:
                unverifiable.setdefault(str(scheme), []).append(seq)
                previous_hash, expected_seq = record["hash"], seq + 1
                continue
            row_key = key
        else:
            problems.append(f"event {seq} names an unknown hash scheme {scheme!r}")
        if _row_hash(row, row_key) != record["hash"]:
            problems.append(f"event {seq} ({record['event']}, {record['occurred_at']}) was changed after it was written "
                            "(its hash no longer matches its content" + (", or it was forged without the audit key)"
                                                                         if row_key is not None else ")"))
        previous_hash, expected_seq = record["hash"], seq + 1
    for scheme, seqs in unverifiable.items():
        key_id = scheme.removeprefix(KEYED_SCHEME_PREFIX)
        span = f"events {seqs[0]}..{seqs[-1]}" if len(seqs) > 1 else f"event {seqs[0]}"
        problems.append(f"{span} ({len(seqs)}) are keyed with audit key {key_id}, but "
                        + ("no audit key is configured here" if key is None else
                           f"the configured key is {key.key_id}")
                        + ": they cannot be verified; set MLPLATFORM_AUDIT_KEY (or MLPLATFORM_AUDIT_KEY_FILE) to the "
                          "key the trail was written with")
    return problems


def _missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


@dataclass
class TrailSummary:
    """A model's audit trail at a glance: how many events of each type, the newest ones, and whether the chain holds."""

    events: int
    counts: dict[str, int]
    latest: pd.DataFrame  # newest first
    problems: list[str]  # from verify_chain; empty when intact
    head_hash: str | None
    last_event_at: datetime | None

    @property
    def intact(self) -> bool:
        return not self.problems


def summarize_trail(rows: pd.DataFrame, latest: int = 20) -> TrailSummary:
    """What the UI shows of a trail (:func:`read_events` rows): counts per event type, the ``latest`` newest
    events, and the hash chain's verification over every row."""
    if rows.empty:
        return TrailSummary(0, {}, rows, [], None, None)
    ordered = rows.sort_values("seq")
    counts = {event: int((ordered["event"] == event).sum()) for event in EVENT_TYPES if (ordered["event"] == event).any()}
    last = ordered.iloc[-1]
    return TrailSummary(len(ordered), counts, ordered.tail(latest).iloc[::-1].reset_index(drop=True),
                        verify_chain(ordered), str(last["hash"]), pd.Timestamp(last["occurred_at"]).to_pydatetime())
