"""A person moves the champion: the one workflow behind ``mlplatform promote``/``rollback`` and the UI's approve and
rollback jobs.

The rules themselves (who may become champion, which version a rollback restores) are
:mod:`mlplatform.lib.promotion`'s; this module is the order they are applied in, so the CLI and the UI cannot drift
apart: the stores are checked first (a damaged or replaced store changes nothing), the warehouse is opened (waiting
while a run holds its lock), the rule decides, and the audit row and the alias move are committed as one unit.

Who may decide is the policy's (:class:`ApprovalRule`): a person it does not list is refused and the refusal is
audited (``approval_refused``); under a policy that requires several approvals (``regulated``: two), each approval
but the last is audited (``approval_pending``) and listed on the version's ``approvals`` tag, and only the last
distinct person's approval moves the alias.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from mlplatform.lib import promotion
from mlplatform.lib.aliases import CHAMPION
from mlplatform.lib.audit import AuditEvent, append_events, read_events, repeats_newest_event
from mlplatform.lib.promotion import AliasChange, PromotionRefused
from mlplatform.lib.stores import StoresDamaged, check_stores
from mlplatform.lib.tracking import Tracker
from mlplatform.lib.warehouse import connect_when_free, is_postgres, lock_model

APPROVALS_TAG = "approvals"
"""On a registered version: who approved it so far, with when (informational; the audit trail is the record)."""
REFUSED_EVENT, PENDING_EVENT = "approval_refused", "approval_pending"


@dataclass(frozen=True)
class ApprovalRule:
    """Who may move a model's champion, and how many distinct people approve a promotion (from its policy)."""

    policy: str | None = None
    allowed: Mapping[str, str] | None = None  # case-folded name -> why allowed ("named", "group G"); None: anyone
    required_approvals: int = 1
    groups: frozenset[str] = frozenset()  # the policy's approver groups (an authenticated person's groups count)

    @classmethod
    def of(cls, policy: Any) -> ApprovalRule:
        """The rule of a :class:`~mlplatform.specs.policies.Policy` (None: no policy, anyone, one approval)."""
        if policy is None:
            return cls()
        return cls(policy.name or None, policy.allowed_approvers(), policy.required_approvals,
                   frozenset(policy.approver_groups))

    def refusal(self, model: str, actor: str, verb: str, groups: Collection[str] = ()) -> str | None:
        """Why ``actor`` may not ``verb`` (promote, roll back) ``model``, or None when they may (``groups``: the
        approver groups the approvers' credentials file puts an authenticated person in)."""
        if self.allowed is None or actor.strip().casefold() in self.allowed:
            return None
        if {g.casefold() for g in groups} & {g.casefold() for g in self.groups}:
            return None
        return (f"{actor.strip()!r} may not {verb} {model}: policy {self.policy!r} lets only its approvers do that "
                f"({', '.join(sorted(self.allowed)) or 'nobody: its approver groups are empty'}); ask one of them")


@dataclass
class PendingApproval:
    """An approval that was recorded and waits for more distinct approvers; nothing moved."""

    model: str
    version: str
    actor: str
    approvals: list[str]  # everyone who approved this version so far, this one included, oldest first
    required: int
    event: AuditEvent
    tags: dict[str, str] = field(default_factory=dict)


class ApprovalDenied(PromotionRefused):
    """The person may not do this (not an approver, or approving the same version twice); the refusal is audited."""

    def __init__(self, message: str, event: AuditEvent):
        super().__init__(message)
        self.event = event


def refused_event(model: str, actor: str, verb: str, version: str | None, reason: str | None,
                  why: str) -> AuditEvent:
    target = f"v{version}" if version else "the challenger" if verb == "promote" else "the previous champion"
    return AuditEvent(model, REFUSED_EVENT, actor.strip(), f"{verb} of {target} refused: {why}",
                      version=version, details={"action": verb, "refused": why, "reason": reason or ""})


def checked_actor(rule: ApprovalRule | None, model: str, actor: str, verb: str, version: str | None,
                  reason: str | None, groups: Collection[str] = ()) -> None:
    """Raise :class:`ApprovalDenied` when ``rule`` does not let ``actor`` ``verb`` the model (empty names and control
    characters are left to :mod:`mlplatform.lib.promotion`'s own refusals, which name the option)."""
    if rule is None or not actor or not actor.strip():
        return
    promotion.refuse_control_characters(by=actor, reason=reason)
    why = rule.refusal(model, actor, verb, groups)
    if why is not None:
        raise ApprovalDenied(why, refused_event(model, actor, verb, version, reason, why))


def approvals_so_far(connection: duckdb.DuckDBPyConnection, model: str, version: str) -> list[tuple[str, str]]:
    """(approver, when) of ``version``'s pending approvals since the champion last moved (a move starts over)."""
    events = read_events(connection, model)
    approvals: list[tuple[str, str]] = []
    for record in events.to_dict("records"):
        try:
            details = json.loads(record["details"] or "{}")
        except (TypeError, ValueError):
            details = {}
        if details.get("alias") == CHAMPION:
            approvals = []
        elif record["event"] == PENDING_EVENT and str(record["version"]) == str(version):
            approvals.append((str(record["actor"]), str(record["occurred_at"])))
    return approvals


def approval_decision(connection: duckdb.DuckDBPyConnection, registry: Tracker, model: str, version: str | None,
                      actor: str, reason: str | None, force: bool, current_spec: Mapping[str, str] | None,
                      rule: ApprovalRule | None,
                      live_check: Callable[[str], Any] | None = None,
                      actor_groups: Collection[str] = ()) -> AliasChange | PendingApproval | None:
    """``promote``'s decision under ``rule``: refused (audited) for a non-approver or a second approval by the same
    person; a :class:`PendingApproval` until ``rule.required_approvals`` distinct people approved; then the
    change :func:`mlplatform.lib.promotion.approval_change` makes (``live_check``: live fairness, asked there at every
    approval), its reason naming every approver (``actor_groups``: an authenticated actor's approver groups)."""
    checked_actor(rule, model, actor, "promote", version, reason, actor_groups)
    change = promotion.approval_change(registry, model, version, actor, reason, force, current_spec=current_spec,
                                       live_check=live_check)
    required = rule.required_approvals if rule is not None else 1
    if change is None or required <= 1:
        return change
    earlier = approvals_so_far(connection, model, str(change.version))
    names = [name for name, _ in earlier]
    if change.actor.casefold() in {n.casefold() for n in names}:
        why = (f"{change.actor} already approved {model} v{change.version}; policy {rule.policy!r} needs "
               f"{required} distinct approvers, so another person must approve")
        raise ApprovalDenied(why, refused_event(model, change.actor, "promote", change.version, reason, why))
    now = datetime.now(UTC).replace(tzinfo=None)
    listed = [*earlier, (change.actor, now.isoformat(timespec="seconds"))]
    tag = "; ".join(f"{name} at {when}" for name, when in listed)
    if len(listed) < required:
        event = AuditEvent(model, PENDING_EVENT, change.actor,
                           f"approval {len(listed)} of {required} for v{change.version} (policy {rule.policy!r}): "
                           f"{reason or 'manual approval'}; waiting for another approver",
                           version=change.version, week=change.week, at=now,
                           details={"approvals": [n for n, _ in listed], "required": required,
                                    "reason": reason or ""})
        return PendingApproval(model, str(change.version), change.actor, [n for n, _ in listed], required, event,
                               {APPROVALS_TAG: tag})
    change.reason += f" [approvals {required} of {required}: {', '.join(n for n, _ in listed)}]"
    change.version_tags = {**change.version_tags, APPROVALS_TAG: tag}
    return change


Decide = Callable[[duckdb.DuckDBPyConnection, Tracker], AliasChange | PendingApproval | None]
"""The rule: the change to make, None when nothing needs to change, a :class:`PendingApproval` to record; raises
``PromotionRefused`` to refuse (:class:`ApprovalDenied`: the refusal is audited)."""

Follow = Callable[[Tracker, AliasChange], Sequence[AliasChange]]
"""Alias moves that belong to the same decision (the automatic rollback also stops the degraded version's canary)."""


def move_champion(home: Path, warehouse_path: Path, tracker: Tracker, wait_seconds: float, decide: Decide,
                  follow: Follow | None = None,
                  committed: Callable[[duckdb.DuckDBPyConnection], None] | None = None
                  ) -> AliasChange | PendingApproval | None:
    """Check the stores, open the warehouse, ``decide``, then commit the audit rows and alias moves as one unit.

    Returns the change made (None: nothing to change; a :class:`PendingApproval`: recorded, nothing moved).
    ``committed(connection)`` runs after the commit on the same connection (the UI jobs report the fresh audit trail
    there). Raises :class:`StoresDamaged`, ``promotion.PromotionRefused`` (:class:`ApprovalDenied` after auditing
    it), ``warehouse.WarehouseBusy`` or the registry's error; no alias moved then.
    """
    damage = check_stores(home, tracker, wait_seconds)
    if damage:
        raise StoresDamaged(damage)  # the same error a run's registry check raises (lib/stores.py)
    with connect_when_free(warehouse_path, wait_seconds) as connection:
        try:
            change = decide(connection, tracker)
        except ApprovalDenied as denied:
            _record(connection, denied.event)
            if committed is not None:
                committed(connection)
            raise
        except PromotionRefused as refused:
            if refused.audit is not None and not (refused.once and repeats_newest_event(connection, refused.audit)):
                _record(connection, refused.audit)  # a refusal the audit keeps (live fairness): nothing moved
                if committed is not None:
                    committed(connection)
            raise
        if isinstance(change, PendingApproval):
            _record(connection, change.event)
            for key, value in change.tags.items():
                tracker.set_version_tag(change.model, change.version, key, value)
            if committed is not None:
                committed(connection)
            return change
        if change is None:
            return None
        if is_postgres(connection):  # several writers: decide again under the model's lock, then commit in its unit
            connection.begin()
            lock_model(connection, change.model)
            change = decide(connection, tracker)
            if change is None:
                connection.rollback()
                return None
        promotion.commit_changes(connection, tracker, [change, *(follow(tracker, change) if follow else [])])
        if committed is not None:
            committed(connection)
    return change


def _record(connection: duckdb.DuckDBPyConnection, event: AuditEvent) -> None:
    """One audit event on its own (a refusal, a waiting approval): nothing else changes with it."""
    connection.begin()
    try:
        append_events(connection, [event])
        connection.commit()
    except Exception:
        connection.rollback()
        raise
