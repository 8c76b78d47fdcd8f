"""Every alias move has one owner: decide which aliases move, move them, and write the audit row, as one unit.

Callers (the weekly runs, ``mlplatform promote``, and later rollback and UI jobs) never set an
alias themselves: they ask this module. The unit is an open warehouse transaction: the audit
rows are inserted, then the aliases move in the registry, then the transaction commits. If an
alias move fails, the aliases already moved are put back and the transaction rolls back; if
the warehouse cannot be opened (another process holds its lock past the wait) nothing moves.
So no alias ever moves without its audit row, and no audit row describes a move that did not
happen.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import duckdb

from mlplatform.lib import audit_integrity
from mlplatform.lib.aliases import CHALLENGER, CHAMPION
from mlplatform.lib.audit import AuditEvent, append_events, champion_history, record_alias_changes
from mlplatform.lib.servability import forced_tags, gates_text, servability
from mlplatform.lib.spec_hash import GATES_HASH_TAG, changed_gate_sections
from mlplatform.lib.warehouse import lock_model

SET, REMOVE = "set", "remove"


class AliasRegistry(Protocol):
    """What promotion needs of a model registry (the MLflow :class:`~mlplatform.lib.tracking.Tracker`)."""

    def alias_version(self, model_name: str, alias: str) -> str | None: ...

    def set_alias(self, model_name: str, alias: str, version: str) -> None: ...

    def delete_alias(self, model_name: str, alias: str) -> None: ...

    def version_tags(self, model_name: str, version: str) -> dict[str, str]: ...

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None: ...

    def delete_version_tag(self, model_name: str, version: str, key: str) -> None: ...

    def model_tags(self, model_name: str) -> dict[str, str] | None: ...

    def set_model_tag(self, model_name: str, key: str, value: str) -> None: ...

    def delete_model_tag(self, model_name: str, key: str) -> None: ...


@dataclass
class AliasChange:
    """One alias move and why: exactly one audit row."""

    model: str
    alias: str
    version: str | None  # None when the alias is removed
    previous_version: str | None
    actor: str
    reason: str
    week: str | None
    action: str = SET
    changed_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))
    kind: str = "alias_change"  # the audit event: alias_change (gates), approval or rollback (a person)
    dagster_run_id: str | None = None
    forced: str | None = None  # what a forced approval overrode (gates that failed, an older spec); None otherwise
    version_tags: dict[str, str] = field(default_factory=dict)  # written on the version before the alias moves

    def as_row(self) -> dict[str, Any]:
        return {"changed_at": self.changed_at, "model": self.model, "alias": self.alias, "version": self.version,
                "previous_version": self.previous_version, "actor": self.actor, "reason": self.reason,
                "week": self.week, "action": self.action}


class PromotionRefused(ValueError):
    """A requested alias move breaks a rule (gates failed, no such version, no actor); nothing changed.

    ``audit``: the event to record for a refusal the audit must keep (live fairness); the workflow that opened the
    warehouse (:func:`mlplatform.lib.approvals.move_champion`) appends it. ``once``: an automatic refusal that
    repeats at every analysis while nothing changes: recorded only when the model's newest event is not already
    this refusal (same event, actor and version), so the trail and the alerts say it once, not every hour."""

    def __init__(self, message: str, audit: AuditEvent | None = None, once: bool = False):
        super().__init__(message)
        self.audit = audit
        self.once = once


def refuse_control_characters(**texts: str | None) -> None:
    """Refuse (:class:`PromotionRefused`) a person's name or reason holding a control or invisible formatting
    character: a newline would split the audit's actor over two lines, a bidi override would show another name.

    Called with the option names, e.g. ``refuse_control_characters(by=actor, reason=reason)``.
    """
    for option, text in texts.items():
        for position, char in enumerate(text or ""):
            if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
                raise PromotionRefused(f"--{option} holds a control character (U+{ord(char):04X} at position "
                                       f"{position + 1}): give it on one line, in printable characters")


def gate_changes(model: str, version: str, passed: bool, week: str, actor: str, approval: str,
                 current: dict[str, str | None], current_weeks: dict[str, str | None],
                 rollout: Any = None) -> tuple[list[AliasChange], str]:
    """The aliases a freshly trained version earns from its gates, and a sentence saying why.

    Only a version that passed every gate moves an alias: ``challenger`` always, ``champion`` too
    when approval is auto. A version for an earlier week than the one an alias already holds (a
    re-run of history) does not take that alias: re-running last spring must not demote today's
    champion. Under ``rollout.auto_promote: canary`` (the spec's ``rollout`` section; the default, also when no
    ``rollout`` is given) an auto-approved version becomes champion only when there is none yet; otherwise it serves
    as canary first and the canary analysis promotes it (:mod:`mlplatform.lib.canary`); ``auto_promote: immediate``
    (the explicit opt-out) makes it champion at once. With a canary stage or a ramp, the challenger is tagged with its
    share and since when it serves it (:func:`canary_share_tags`).
    """
    if not passed:
        return [], "a gate failed: no alias moves"
    if rollout is None:  # the spec's defaults: a canary stage at canary_percent
        from mlplatform.specs.schema import RolloutSpec

        rollout = RolloutSpec()
    wanted = [(CHALLENGER, f"passed every gate on week {week}")]
    canary_first = rollout.auto_promote == "canary" and current.get(CHAMPION) is not None
    if approval == "auto" and not canary_first:
        wanted.append((CHAMPION, f"approval: auto; passed every gate on week {week}"))
    elif approval == "auto":
        wanted[0] = (CHALLENGER, f"passed every gate on week {week}; approval: auto after the canary analysis "
                     f"(serves {rollout.first_share:g}% as canary first)")
    changes, kept = [], []
    for alias, reason in wanted:
        holder_week = current_weeks.get(alias)
        if holder_week is not None and holder_week > week:
            kept.append(f"{alias} stays v{current[alias]} (trained for the later week {holder_week})")
            continue
        change = AliasChange(model, alias, version, current.get(alias), actor, reason, week)
        if alias == CHALLENGER and (rollout.auto_promote == "canary" or rollout.ramp):
            change.version_tags = canary_share_tags(rollout.first_share, change.changed_at)
        changes.append(change)
    moved = ", ".join(c.alias for c in changes)
    return changes, "; ".join(([f"-> {moved}"] if moved else []) + kept) or "no alias moves"


def approval_change(registry: AliasRegistry, model: str, version: str | None, actor: str, reason: str | None,
                    force: bool = False, current_spec: Mapping[str, str] | None = None,
                    live_check: Callable[[str], Any] | None = None) -> AliasChange | None:
    """A person makes ``version`` (default: the challenger) champion; None when it already is.

    Refused (:class:`PromotionRefused`) without a named actor, for an unknown version, and for a
    version whose gates did not pass or ran under an older spec (:func:`spec_refusal`; ``current_spec``
    is :func:`mlplatform.lib.spec_hash.spec_tags` of the spec now) unless ``force``. A forced approval says so in
    its reason and ``forced``, and tags the version (:func:`mlplatform.lib.servability.forced_tags`): that tag is
    what lets the service serve a gate-failed version, so production serves what the audit names.

    ``live_check(version)``: the verdict of live fairness (:func:`mlplatform.lib.live_fairness.promotion_refusal`)
    when it refuses, else None; a refusal is audited (``promotion_refused``) unless ``force`` overrides it. Not asked
    for a model's first champion, which could not have served any traffic before.
    """
    from mlflow.exceptions import MlflowException

    if not actor or not actor.strip():
        raise PromotionRefused("an approval needs the name of the person who approves (--by NAME); got an empty name")
    refuse_control_characters(by=actor, reason=reason)
    version = version or registry.alias_version(model, CHALLENGER)
    if version is None:
        raise PromotionRefused(f"{model} has no challenger to promote; give --version")
    try:
        tags = registry.version_tags(model, str(version))
    except MlflowException:
        raise PromotionRefused(f"{model} v{version}: no such registered model version") from None
    verdict = servability(tags)
    if not verdict.gates_passed and not force:
        raise PromotionRefused(f"{model} v{version} did not pass every gate ({gates_text(tags)}); "
                               "refusing to promote without --force")
    older_spec = spec_refusal(model, str(version), tags, current_spec)
    if older_spec and not force:
        raise PromotionRefused(f"{older_spec}; refusing to promote without --force")
    previous = registry.alias_version(model, CHAMPION)
    if previous == str(version):
        return None
    # The first champion has no live traffic to be judged on (nothing serves before it): its gates vouch for it.
    live = live_check(str(version)) if live_check is not None and previous is not None else None
    if live is not None and not force:
        raise PromotionRefused(f"{live.reason()}; refusing to promote without --force",
                               audit=live.audit_event(actor.strip(), tags.get("week")))
    overridden = [*([gates_text(tags)] if not verdict.gates_passed else []), *([older_spec] if older_spec else []),
                  *([live.reason()] if live is not None else [])]
    text = (reason or "manual approval") + "".join(f" [forced with --force: {o}]" for o in overridden)
    change = AliasChange(model, CHAMPION, str(version), previous, actor.strip(), text, tags.get("week"),
                         kind="approval", forced="; ".join(overridden) or None)
    if change.forced:  # the service serves a gate-failed version only with these tags (lib/servability.py)
        change.version_tags = forced_tags(change.actor, reason or "manual approval", change.forced,
                                          change.changed_at.isoformat(timespec="seconds") + "Z")
    if not servability({**tags, **change.version_tags}).servable:
        raise PromotionRefused(f"{model} v{version}: production would not serve it; nothing changed")
    return change


def rollback_change(connection: duckdb.DuckDBPyConnection, registry: AliasRegistry, model: str,
                    to_version: str | None, actor: str, reason: str | None,
                    only_if_champion: str | None = None,
                    current_spec: Mapping[str, str] | None = None) -> AliasChange | None:
    """``champion`` goes back to ``to_version`` (default: :func:`rollback_target`, what the decay sensor picks too).

    Refused (:class:`PromotionRefused`) without a named actor, without a current champion, without an earlier
    champion to go back to, for a version that was never champion (that is a promotion: ``mlplatform promote``),
    and for a version :func:`restore_refusal` refuses: a rollback never restores a version the gates kept away
    from production. With ``only_if_champion`` (the automatic rollback: the version its check judged), None when
    the champion has moved since: a later decision must not be undone by an older one.
    """
    from mlflow.exceptions import MlflowException

    if not actor or not actor.strip():
        raise PromotionRefused("a rollback needs the name of the person who decides it (--by NAME); got an empty name")
    refuse_control_characters(by=actor, reason=reason)
    current = registry.alias_version(model, CHAMPION)
    if current is None:
        raise PromotionRefused(f"{model} has no champion to roll back")
    if only_if_champion is not None and current != str(only_if_champion):
        return None
    if to_version is None:
        target = rollback_target(connection, registry, model, current, current_spec)
        if target.version is None:
            why = f": {'; '.join(target.passed_over)}" if target.passed_over else ""
            raise PromotionRefused(f"{model}: no champion before v{current} may be restored{why}; "
                                   "nothing to roll back to")
        to_version = target.version
    to_version = str(to_version)
    if to_version == current:
        raise PromotionRefused(f"{model}: v{current} is already the champion")
    try:
        tags = registry.version_tags(model, to_version)
    except MlflowException:
        raise PromotionRefused(f"{model} v{to_version}: no such registered model version") from None
    if to_version not in champion_history(connection, model):
        raise PromotionRefused(f"{model}: v{to_version} was never champion; a rollback returns to an earlier champion; "
                               f"to make v{to_version} champion use `mlplatform promote {model} --version {to_version}`")
    refusal = restore_refusal(model, to_version, tags, current_spec)
    if refusal:
        raise PromotionRefused(f"{refusal}; a rollback never puts such a version in production")
    return AliasChange(model, CHAMPION, to_version, current, actor.strip(),
                       f"rollback from v{current}: {reason or 'no reason given'}", tags.get("week"), kind="rollback")


def restore_refusal(model: str, version: str, tags: Mapping[str, str],
                    current_spec: Mapping[str, str] | None) -> str | None:
    """Why a rollback may not put ``version`` back in production, or None when it may.

    A rollback restores only a version its gates vouch for: every gate passed (the ``gates`` tag) and, when
    ``current_spec`` is given, they ran under the current spec's gate sections (:func:`spec_refusal`). A version
    a person forced in with ``promote --force`` is served while that approval stands, but it is that person's
    audited exception, not a version a rollback (automatic or by hand) returns to: forcing it again is a new
    ``promote --force``.
    """
    if not servability(tags).gates_passed:
        return f"{model} v{version} did not pass every gate ({gates_text(tags)})"
    return spec_refusal(model, version, tags, current_spec)


@dataclass(frozen=True)
class RollbackTarget:
    """The version a rollback returns to (None: there is none), and the earlier champions passed over, with why."""

    version: str | None
    passed_over: tuple[str, ...] = ()


def rollback_target(connection: duckdb.DuckDBPyConnection, registry: AliasRegistry, model: str, current: str | None,
                    current_spec: Mapping[str, str] | None = None) -> RollbackTarget:
    """The version to roll back to: the newest earlier champion (per the audit) that :func:`restore_refusal` lets
    through under the current spec. The one owner of this choice: the live_degradation check (whose verdict the decay sensor
    carries out), ``mlplatform rollback`` and the UI's rollback job all ask here."""
    from mlflow.exceptions import MlflowException

    passed_over = []
    for version in champion_history(connection, model):
        if version == current:
            continue
        try:
            tags = registry.version_tags(model, version)
        except MlflowException:
            passed_over.append(f"{model} v{version}: no such registered model version")
            continue
        refusal = restore_refusal(model, version, tags, current_spec)
        if refusal is None:
            return RollbackTarget(version, tuple(passed_over))
        passed_over.append(refusal)
    if not passed_over:
        passed_over.append(f"the audit names no champion before v{current}")
    return RollbackTarget(None, tuple(passed_over))


def spec_refusal(model: str, version: str, tags: Mapping[str, str],
                 current_spec: Mapping[str, str] | None) -> str | None:
    """Why ``version``'s gate verdicts do not vouch for it under the current spec, or None when they do.

    Compares the gate-section hashes the version recorded at training (``spec.gates_hash*`` tags) with the
    current spec's (:func:`mlplatform.lib.spec_hash.spec_tags`). A version that recorded none (trained before
    hashes were recorded) and a caller that passes no current spec are not refused here.
    """
    if current_spec is None:
        return None
    changed = changed_gate_sections(tags, current_spec)
    if not changed:
        return None
    return (f"{model} v{version}: its gates ran under an older spec ({', '.join(changed)} changed since; gate spec "
            f"hash {tags[GATES_HASH_TAG][:12]} when trained, {current_spec.get(GATES_HASH_TAG, '-')[:12]} now): "
            "retrain it under the current spec")


CANARY_SHARE_TAG = "mlplatform.canary_share"
"""Percent of traffic the challenger serves as canary (the service follows it; absent: ``rollout.canary_percent``)."""
CANARY_SINCE_TAG = "mlplatform.canary_since"
"""When the challenger began serving its current share (naive UTC, ISO): the canary analysis judges from then on."""


def canary_share_tags(share: float, since: datetime) -> dict[str, str]:
    """The version tags of a canary at ``share`` percent since ``since``."""
    return {CANARY_SHARE_TAG: f"{share:g}", CANARY_SINCE_TAG: since.isoformat(timespec="seconds")}


def canary_share_change(registry: AliasRegistry, model: str, version: str, share: float, actor: str,
                        reason: str) -> AliasChange | None:
    """Raise the canary ``version`` to ``share`` percent (a ramp step): audited like an alias move, the share in a
    version tag the service follows. None when ``version`` is no longer the challenger."""
    if registry.alias_version(model, CHALLENGER) != str(version):
        return None
    week = registry.version_tags(model, str(version)).get("week")
    change = AliasChange(model, CHALLENGER, str(version), str(version), actor,
                         f"canary share -> {share:g}%: {reason}", week, kind="canary_step")
    change.version_tags = canary_share_tags(share, change.changed_at)
    return change


def canary_promotion_change(registry: AliasRegistry, model: str, version: str, actor: str,
                            reason: str, live_check: Callable[[str], Any] | None = None) -> AliasChange | None:
    """The canary analysis makes ``version`` champion (approval: auto); None when it is no longer the challenger or
    already champion. The version passed its gates (it became challenger only so) and served as canary.

    ``live_check(version)``: live fairness, as :func:`approval_change` asks it; a failing verdict refuses
    (:class:`PromotionRefused` carrying the ``promotion_refused`` audit event): the canary stays at its share."""
    if registry.alias_version(model, CHALLENGER) != str(version):
        return None
    previous = registry.alias_version(model, CHAMPION)
    if previous == str(version):
        return None
    week = registry.version_tags(model, str(version)).get("week")
    live = live_check(str(version)) if live_check is not None and previous is not None else None
    if live is not None:
        raise PromotionRefused(f"{live.reason()}; the canary stays at its share", audit=live.audit_event(actor, week),
                               once=True)
    return AliasChange(model, CHAMPION, str(version), previous, actor, f"canary promoted: {reason}", week,
                       kind="canary_promoted")


def canary_stop_change(registry: AliasRegistry, model: str, version: str, actor: str, reason: str) -> AliasChange | None:
    """Remove ``challenger`` from ``version`` (serving then sends it no traffic); None when it has moved already."""
    if registry.alias_version(model, CHALLENGER) != str(version):
        return None
    week = registry.version_tags(model, str(version)).get("week")
    return AliasChange(model, CHALLENGER, None, str(version), actor, f"canary stopped: {reason}", week,
                       action=REMOVE, kind="canary_stopped")


def apply_changes(connection: duckdb.DuckDBPyConnection, registry: AliasRegistry,
                  changes: Sequence[AliasChange]) -> list[tuple[str, str | None]]:
    """Audit rows, then the registry moves, then the audit head tag, inside the caller's open transaction.

    The caller commits (after its own writes of the same unit) or rolls back; on any failure
    here the aliases already moved are restored before the error propagates, so the caller's
    rollback leaves registry and audit as they were. Returns the head tags written, as (model, previous value),
    for a caller whose commit fails to put back (:func:`mlplatform.lib.audit_integrity.restore_anchors`).
    """
    if not changes:
        return []
    for model in sorted({change.model for change in changes}):  # one writer per model: audit order = move order
        lock_model(connection, model)
    record_alias_changes(connection, [change.as_row() for change in changes])
    append_events(connection, [AuditEvent(
        change.model, change.kind, change.actor,
        f"{change.alias}: v{change.previous_version or '-'} -> v{change.version or '-'}; {change.reason}",
        version=change.version, week=change.week, dagster_run_id=change.dagster_run_id,
        details={"alias": change.alias, "previous_version": change.previous_version, "action": change.action,
                 "reason": change.reason, **({"forced": change.forced} if change.forced else {})},
        at=change.changed_at) for change in changes])
    moved: list[AliasChange] = []
    tagged: list[tuple[AliasChange, dict[str, str]]] = []
    anchored: list[tuple[str, str | None]] = []
    try:
        for change in changes:
            if change.version_tags and change.version is not None:
                tagged.append((change, registry.version_tags(change.model, change.version)))
                for key, value in change.version_tags.items():
                    registry.set_version_tag(change.model, change.version, key, value)
            _move(registry, change.model, change.alias, change.version)
            moved.append(change)
        audit_integrity.anchor_heads(connection, registry, [c.model for c in changes], anchored)
    except Exception:
        restore(registry, moved)
        _restore_tags(registry, tagged)
        audit_integrity.restore_anchors(registry, anchored)
        raise
    return anchored


def restore(registry: AliasRegistry, moved: Iterable[AliasChange]) -> None:
    """Undo alias moves (newest first): each alias goes back to its previous version, or away."""
    for change in reversed(list(moved)):
        _move(registry, change.model, change.alias, change.previous_version)


def _restore_tags(registry: AliasRegistry, tagged: Sequence[tuple[AliasChange, dict[str, str]]]) -> None:
    """Put back the version tags a failed unit wrote (a forced approval that did not happen leaves no tag)."""
    for change, before in reversed(tagged):
        for key in change.version_tags:
            if key in before:
                registry.set_version_tag(change.model, str(change.version), key, before[key])
            else:
                registry.delete_version_tag(change.model, str(change.version), key)


def commit_changes(connection: duckdb.DuckDBPyConnection, registry: AliasRegistry,
                   changes: Sequence[AliasChange]) -> None:
    """One self-contained unit: begin, audit + move, commit; on failure nothing changed (``promote`` uses this).
    On PostgreSQL the caller may have begun it already, under the model's lock (:func:`approvals.move_champion`)."""
    if not getattr(connection, "in_transaction", False):
        connection.begin()
    try:
        apply_changes(connection, registry, changes)
        connection.commit()
    except Exception:
        connection.rollback()
        raise
    for model in dict.fromkeys(change.model for change in changes):
        audit_integrity.write_checkpoint(connection, model)


def champion_as_of(connection: duckdb.DuckDBPyConnection, registry: AliasRegistry, model: str,
                   week: str) -> str | None:
    """The champion a week W should be compared with: the newest champion whose training window ended by W.

    For the newest week that is the current champion. A re-run of an earlier week must not be
    judged against a champion trained on the very rows being scored, so it gets the champion
    of its time: the last version that held ``champion`` (per the audit) trained for W or an earlier week.
    """
    current = registry.alias_version(model, CHAMPION)
    candidates = ([current] if current else []) + [v for v in champion_history(connection, model) if v != current]
    for version in candidates:
        own_week = registry.version_tags(model, version).get("week")
        if own_week is not None and own_week <= week:
            return version
    return None


def _move(registry: AliasRegistry, model: str, alias: str, version: str | None) -> None:
    if version is None:
        registry.delete_alias(model, alias)
    else:
        registry.set_alias(model, alias, version)
