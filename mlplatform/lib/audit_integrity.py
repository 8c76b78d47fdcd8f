"""What makes the audit trail hard to rewrite quietly: its head anchored outside the warehouse, and every decision
table checked against the chain.

The chain itself (lib/audit.py, keyed by lib/audit_key.py) catches an edited row and a deleted middle row. It
cannot see its newest rows deleted, or the whole trail: a shorter chain is still a valid chain. So at every alias
move (lib/promotion.py) the head, the newest event's sequence and hash, is written as the tag
:data:`HEAD_TAG` on the registered model in MLflow (HMAC'd with the audit key when one is configured), and after
every committed unit a checkpoint file ``<home>/audit_checkpoints/<model>.json`` holds the same (signed the same
way). ``mlplatform audit MODEL --verify`` (:func:`verify_trail`) then compares: an anchor naming an event the trail
no longer has, or a different hash for it, is a deletion or a rewrite. Events after the newest anchor are covered
by the chain's key alone.

``audit.alias_changes`` drives rollback and the champion comparison; every row of it is written with a chained
event carrying the same content, and :func:`alias_change_problems` compares the two tables.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd

from mlplatform.lib.audit import EVENTS_TABLE, _missing
from mlplatform.lib.audit_key import KEYED_SCHEME_PREFIX, UNKEYED_SCHEME, AuditKey, configured_key

log = logging.getLogger(__name__)

HEAD_TAG = "mlplatform.audit_head"
"""The registered model's tag holding the audit trail's head (JSON: seq, hash, scheme, mac)."""
CHECKPOINT_DIR_NAME = "audit_checkpoints"
REGISTRY_ANCHOR = f"the registry tag {HEAD_TAG}"
CHECKPOINT_ANCHOR = "the checkpoint file"
ALIAS_EVENT_KEYS = ("alias", "previous_version", "action")
"""The ``details`` keys promotion writes on the event of every alias move (and only there)."""


class ModelTagRegistry(Protocol):
    """What anchoring needs of the registry (the MLflow :class:`~mlplatform.lib.tracking.Tracker`)."""

    def model_tags(self, model_name: str) -> dict[str, str] | None: ...

    def set_model_tag(self, model_name: str, key: str, value: str) -> None: ...

    def delete_model_tag(self, model_name: str, key: str) -> None: ...


def trail_head(connection: duckdb.DuckDBPyConnection, model: str) -> tuple[int, str] | None:
    """(seq, hash) of the model's newest event as ``connection`` sees it (inside its transaction), or None."""
    found = connection.execute(f"select seq, hash from {EVENTS_TABLE} where model = ? order by seq desc limit 1",
                               [model]).fetchall()
    return (int(found[0][0]), str(found[0][1])) if found else None


def _anchor_text(model: str, seq: int, head_hash: str) -> str:
    return f"mlplatform audit head\n{model}\n{seq}\n{head_hash}"


def anchor_value(model: str, seq: int, head_hash: str, key: AuditKey | None) -> str:
    """The anchor's JSON: the head, and with a key its scheme and HMAC (an unkeyed anchor still catches a deletion
    by someone who can write the warehouse but not the registry)."""
    value: dict[str, Any] = {"seq": seq, "hash": head_hash, "scheme": key.scheme if key else UNKEYED_SCHEME}
    if key is not None:
        value["mac"] = key.mac(_anchor_text(model, seq, head_hash))
    return json.dumps(value, sort_keys=True)


def anchor_heads(connection: duckdb.DuckDBPyConnection, registry: ModelTagRegistry, models: Iterable[str],
                 anchored: list[tuple[str, str | None]]) -> None:
    """Write each model's head (as ``connection`` sees it) as :data:`HEAD_TAG`; ``anchored`` collects (model,
    previous value) before each write, so a failed unit can put the previous values back (:func:`restore_anchors`)."""
    key = configured_key()
    for model in dict.fromkeys(models):
        head = trail_head(connection, model)
        if head is None:
            continue
        previous = (registry.model_tags(model) or {}).get(HEAD_TAG)
        anchored.append((model, previous))
        registry.set_model_tag(model, HEAD_TAG, anchor_value(model, *head, key))


def restore_anchors(registry: ModelTagRegistry, anchored: list[tuple[str, str | None]]) -> None:
    """Put back the head tags a failed unit wrote (newest first)."""
    for model, previous in reversed(anchored):
        if previous is None:
            registry.delete_model_tag(model, HEAD_TAG)
        else:
            registry.set_model_tag(model, HEAD_TAG, previous)


def warehouse_home(connection: duckdb.DuckDBPyConnection) -> Path | None:
    """The folder of the warehouse file ``connection`` is open on (MLPLATFORM_HOME); None for an in-memory one. On
    the PostgreSQL warehouse there is no file: the checkpoints go under this process's ``MLPLATFORM_HOME``."""
    from mlplatform.lib.warehouse import is_postgres

    if is_postgres(connection):
        from mlplatform.lib.settings import load_settings

        return load_settings().home
    found = connection.execute("select path from duckdb_databases() where database_name = current_database()"
                               ).fetchall()
    return Path(found[0][0]).parent if found and found[0][0] else None


def checkpoint_path(home: Path, model: str) -> Path:
    return Path(home) / CHECKPOINT_DIR_NAME / f"{model}.json"


def write_checkpoint(connection: duckdb.DuckDBPyConnection, model: str, home: Path | None = None) -> Path | None:
    """Write the model's committed head to its checkpoint file (atomically); call it after a commit only. Never
    raises: a checkpoint that cannot be written is logged, and the registry anchor and the key still hold."""
    try:
        home = home or warehouse_home(connection)
        head = trail_head(connection, model) if home is not None else None
        if head is None:
            return None
        path = checkpoint_path(home, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        value = json.loads(anchor_value(model, *head, configured_key()))
        value["written_at"] = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
        partial.write_text(json.dumps(value, sort_keys=True) + "\n")
        os.replace(partial, path)
        return path
    except Exception as error:  # noqa: BLE001 - a checkpoint is a second anchor, never a reason to fail a run
        log.warning("audit checkpoint of %s not written: %s", model, error)
        return None


Anchors = tuple[str | None, str | None, bool]
"""(the registry tag, the checkpoint file's text, whether the model is registered): what :func:`verify_trail`
compares the trail's head with."""


def anchor_reader(home: Path, registry: Callable[[], ModelTagRegistry | None]) -> Callable[[str], Anchors]:
    """Reads a model's anchors as ``audit --verify`` does. ``registry`` opens the registry once, on first use (None:
    there is none yet, an embedded store never created). A registry that cannot be read leaves only the checkpoint
    (logged): an unreachable registry is not a tampered trail."""
    opened: list[ModelTagRegistry | None] = []

    def read(model: str) -> Anchors:
        checkpoint = read_checkpoint(home, model)
        try:
            if not opened:
                opened.append(registry())
            tags = opened[0].model_tags(model) if opened[0] is not None else None
        except Exception as error:  # noqa: BLE001 - the registry down: verify against the checkpoint alone
            log.warning("audit head of %s not read from the registry: %s", model, error)
            return None, checkpoint, False
        return (tags or {}).get(HEAD_TAG), checkpoint, tags is not None

    return read


def settings_anchor_reader(settings: Any) -> Callable[[str], Anchors]:
    """:func:`anchor_reader` for a process's settings (:class:`~mlplatform.lib.settings.Settings`): its home's
    checkpoints and its registry (none while an embedded store was never created: reading would create it)."""

    def registry() -> ModelTagRegistry | None:
        if settings.embedded_mlflow and not (settings.mlflow_dir / "mlflow.db").exists():
            return None
        from mlplatform.lib.tracking import Tracker

        return Tracker.for_settings(settings)

    return anchor_reader(settings.home, registry)


def read_checkpoint(home: Path, model: str) -> str | None:
    path = checkpoint_path(home, model)
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


# --- verification ------------------------------------------------------------------------------------------------

@dataclass
class TrailVerdict:
    """What ``audit --verify`` says: every problem (exit 1 when any), and notes on what the check could rely on."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    no_trail: bool = False  # nothing to verify: an unknown model, or a deleted trail (problems say which)

    @property
    def intact(self) -> bool:
        return not self.problems


def keying_note(events: pd.DataFrame, key: AuditKey | None) -> str:
    """How the chain is hashed, in a sentence (printed by ``audit --verify``)."""
    schemes = [None if _missing(s) else str(s) for s in events.sort_values("seq").get("hash_scheme", pd.Series([]))]
    seqs = list(events.sort_values("seq")["seq"].astype(int))
    keyed = [seq for seq, scheme in zip(seqs, schemes, strict=False) if scheme and scheme.startswith(KEYED_SCHEME_PREFIX)]
    if not keyed:
        return ("the chain is unkeyed (plain SHA-256): anyone who can write the warehouse can recompute it; set "
                "MLPLATFORM_AUDIT_KEY to key new events" + (" (a key is configured: the next event is keyed)"
                                                             if key is not None else ""))
    before = f"; events 1..{keyed[0] - 1} were written before keying and are covered by the keyed events after them" \
        if keyed[0] > 1 else ""
    return f"the chain is keyed (HMAC-SHA256, key id {key.key_id if key else '?'}) from event {keyed[0]}{before}"


def _check_anchor(model: str, source: str, text: str | None, heads: dict[int, str], has_keyed_rows: bool,
                  key: AuditKey | None, verdict: TrailVerdict) -> int | None:
    """Compare one anchor with the trail (``heads``: seq -> hash); returns the anchored seq when it is usable."""
    if text is None:
        return None
    try:
        value = json.loads(text)
        seq, head_hash, scheme = int(value["seq"]), str(value["hash"]), str(value.get("scheme", UNKEYED_SCHEME))
    except (ValueError, TypeError, KeyError):
        verdict.problems.append(f"{source} is unreadable ({text[:80]!r}): it was edited by hand")
        return None
    if scheme.startswith(KEYED_SCHEME_PREFIX):
        if key is None or scheme != key.scheme:
            verdict.problems.append(f"{source} is signed with audit key {scheme.removeprefix(KEYED_SCHEME_PREFIX)}, "
                                    "which is not configured here: it cannot be checked; configure the key the trail "
                                    "was written with")
            return None
        if not key.check(_anchor_text(model, seq, head_hash), value.get("mac", "")):
            verdict.problems.append(f"{source} (event {seq}) does not carry a valid signature of the audit key: it "
                                    "was forged or edited")
            return None
    elif has_keyed_rows and key is not None:
        verdict.problems.append(f"{source} (event {seq}) is not signed although the chain is keyed: it was replaced "
                                "by someone without the key")
        return None
    newest = max(heads) if heads else 0
    if seq > newest:
        lost = f"event {seq}" if seq == newest + 1 else f"events {newest + 1}..{seq}"
        verdict.problems.append(f"{lost} deleted: {source} says the trail reached event {seq} (hash {head_hash[:12]}), "
                                f"the warehouse holds {newest} event(s)")
    elif heads.get(seq) != head_hash:
        verdict.problems.append(f"event {seq} is not the event {source} anchored (hash {head_hash[:12]}, the "
                                f"warehouse has {str(heads.get(seq))[:12]}): the trail was rewritten up to there")
    return seq


def verify_trail(model: str, events: pd.DataFrame, alias_rows: pd.DataFrame | None,
                 registry_anchor: str | None, checkpoint_anchor: str | None, registered: bool,
                 known_models: list[str], key: AuditKey | None) -> TrailVerdict:
    """Everything ``mlplatform audit MODEL --verify`` checks, with the inputs it read: the chain (keyed), the head
    against the registry tag and the checkpoint, and ``audit.alias_changes`` against the chained events."""
    from mlplatform.lib.audit import verify_chain

    verdict = TrailVerdict()
    anchors = {REGISTRY_ANCHOR: registry_anchor, CHECKPOINT_ANCHOR: checkpoint_anchor}
    if events.empty:
        verdict.no_trail = True
        found = [source for source, text in anchors.items() if text is not None]
        if found:
            verdict.problems.append(f"no audit trail to verify, but {' and '.join(found)} anchored one: the whole trail "
                                    "was deleted")
            for source in found:
                _check_anchor(model, source, anchors[source], {}, False, key, verdict)
        else:
            known = ", ".join(known_models) or "none"
            what = ("the registry has a model of that name, but" if registered
                    else "no model of that name is registered and")
            verdict.problems.append(f"no audit trail to verify. Either no model of that name ever ran against this "
                                    f"warehouse (models with a trail: {known}) or its whole trail was deleted; {what} "
                                    "nothing vouches for it")
        if alias_rows is not None and not alias_rows.empty:
            verdict.problems.append(f"audit.alias_changes holds {len(alias_rows)} row(s) for {model} that no chained "
                                    "event backs")
        return verdict
    verdict.problems += verify_chain(events, key)
    verdict.notes.append(keying_note(events, key))
    heads = {int(s): str(h) for s, h in zip(events["seq"], events["hash"], strict=True)}
    schemes = events["hash_scheme"] if "hash_scheme" in events else pd.Series([], dtype=object)
    has_keyed = any(isinstance(s, str) and s.startswith(KEYED_SCHEME_PREFIX) for s in schemes)
    anchored = {source: _check_anchor(model, source, text, heads, has_keyed, key, verdict)
                for source, text in anchors.items()}
    missing = [source for source, text in anchors.items() if text is None]
    if registered and registry_anchor is None:
        verdict.notes.append(f"{REGISTRY_ANCHOR} is missing (no alias moved since anchoring began, or it was deleted)")
    elif not registered:
        verdict.notes.append("no registered model of that name in the registry: nothing anchors the head there")
    if checkpoint_anchor is None:
        verdict.notes.append(f"no {CHECKPOINT_ANCHOR} for {model}")
    newest_anchor = max((seq for seq in anchored.values() if seq is not None), default=None)
    if newest_anchor is not None:
        after = max(heads) - newest_anchor
        verdict.notes.append(f"head anchored at event {newest_anchor}" + (
            f"; the {after} newer event(s) are covered by the chain{' and its key' if has_keyed else ''} only"
            if after > 0 else ""))
    elif len(missing) == len(anchors):
        verdict.notes.append("nothing outside the warehouse anchors this trail: deleting its newest events would "
                             "not be seen")
    verdict.problems += alias_change_problems(events, alias_rows)
    return verdict


def _alias_event_rows(events: pd.DataFrame) -> list[tuple]:
    """The alias_changes rows the chained events describe (same fields, as text)."""
    rows = []
    for record in events.to_dict("records"):
        try:
            details = json.loads(record["details"]) if isinstance(record["details"], str) else {}
        except ValueError:
            continue
        if not isinstance(details, dict) or not all(k in details for k in ALIAS_EVENT_KEYS):
            continue
        reason = details.get("reason")
        if reason is None:  # events written before the reason was in details: the summary ends with it
            reason = str(record["summary"]).split("; ", 1)[1] if "; " in str(record["summary"]) else ""
        rows.append(_alias_key(record["occurred_at"], details["alias"], record["version"],
                               details["previous_version"], record["actor"], reason, record["week"],
                               details["action"]))
    return rows


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value)


def _alias_key(changed_at: Any, alias: Any, version: Any, previous: Any, actor: Any, reason: Any, week: Any,
               action: Any) -> tuple:
    when = None if _missing(changed_at) else pd.Timestamp(changed_at).isoformat()
    return (when, _text(alias), _text(version), _text(previous), _text(actor), _text(reason), _text(week),
            _text(action))


def _describe(row: tuple) -> str:
    when, alias, version, previous, actor, _, _, action = row
    move = (f"{alias} removed from v{previous}" if action == "remove"
            else f"{alias}: {'v' + previous if previous else 'none'} -> v{version}")
    return f"{move} by {actor} at {when}"


def alias_change_problems(events: pd.DataFrame, alias_rows: pd.DataFrame | None) -> list[str]:
    """``audit.alias_changes`` against the chained events: a row no event backs was added or edited; an event
    without its row means the row was deleted. Both tables are written in one unit by lib/promotion.py."""
    chained = Counter(_alias_event_rows(events))
    table = Counter(_alias_key(r["changed_at"], r["alias"], r["version"], r["previous_version"], r["actor"],
                               r["reason"], r["week"], r.get("action"))
                    for r in (alias_rows.to_dict("records") if alias_rows is not None else []))
    problems = [f"audit.alias_changes row '{_describe(row)}' is not backed by a chained event: added or edited behind "
                "the platform's back (rollback and the champion comparison read this table)"
                for row in sorted((table - chained).elements(), key=str)]
    problems += [f"audit.alias_changes lacks the row of the chained event '{_describe(row)}': deleted or edited"
                 for row in sorted((chained - table).elements(), key=str)]
    return problems


def read_alias_rows(connection: duckdb.DuckDBPyConnection, model: str) -> pd.DataFrame | None:
    """The model's ``audit.alias_changes`` rows (every one: the check compares whole tables); None without the table."""
    from mlplatform.lib.audit import AUDIT_TABLE

    exists = connection.execute("select count(*) from information_schema.tables where table_schema = 'audit' "
                                "and table_name = 'alias_changes'").fetchall()[0][0]
    if not exists:
        return None
    return connection.execute(f"select * from {AUDIT_TABLE} where model = ? order by changed_at", [model]).fetchdf()
