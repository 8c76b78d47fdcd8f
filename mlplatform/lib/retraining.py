"""What the sensors ask for: plain functions over check records.

The sensors (``defs/automation.py``: drift -> retrain, live_degradation -> rollback and retrain) only read the
instance and turn decisions into run requests. The rule they share, "one request per failed check, never past a
pending check", is :func:`new_failures`; what each then asks for is :func:`retrain_requests` and
:func:`decay_requests`. All of it is tested without Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any


@dataclass(frozen=True)
class CheckRecord:
    """One check execution: ``passed`` is None while its run has not evaluated it yet."""

    record_id: int
    passed: bool | None
    week: str | None
    timestamp: float
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the evaluation's metadata, plain values


@dataclass(frozen=True)
class RetrainDecision:
    requests: list[tuple[CheckRecord, str]]  # (failed check, model partition to retrain)
    skipped: list[str] = field(default_factory=list)
    cursor: int = 0


def retrain_partition(week: str, partition_keys: list[str]) -> str:
    """A drift at week W is answered by the model for W+1, whose training window ends with W; W when W is the newest."""
    following = (date.fromisoformat(week) + timedelta(days=7)).isoformat()
    return following if following in partition_keys else week


@dataclass(frozen=True)
class CheckScan:
    """The failed checks newer than a sensor's cursor, what was passed over (with why), and the next cursor."""

    failed: list[CheckRecord]
    skipped: list[str]
    cursor: int


def new_failures(records: Sequence[CheckRecord], cursor: int, check: str) -> CheckScan:
    """Each failed check newer than ``cursor``, once; the new cursor never passes a check not evaluated yet.

    Dagster writes a check's row when the run is planned and fills in the result later, so a record id can be
    seen before its result: the cursor stops just before the first pending record and the next tick looks again
    (failures after it are returned now too; the sensors' run keys make a second request of them a no-op). A
    failure that names no week cannot be answered and is skipped with a reason. ``check`` names the check in
    the reasons.
    """
    failed, skipped = [], []
    new_cursor, blocked = cursor, False
    for record in sorted(records, key=lambda r: r.record_id):
        if record.record_id <= cursor:
            continue
        if record.passed is None:
            blocked = True
            skipped.append(f"{check} check {record.record_id} (week {record.week}) not evaluated yet")
            continue
        if not blocked:
            new_cursor = record.record_id
        if record.passed:
            skipped.append(f"{check} check {record.record_id} (week {record.week}) passed")
        elif record.week is None:
            skipped.append(f"{check} check {record.record_id} failed but names no week")
        else:
            failed.append(record)
    return CheckScan(failed, skipped, new_cursor)


def retrain_requests(records: list[CheckRecord], cursor: int, last_retrain_at: float | None,
                     cooldown_minutes: float, partition_keys: list[str]) -> RetrainDecision:
    """One retrain per failed drift check (:func:`new_failures`), for the week after it.

    Failures inside the cool-down after the previous retrain (by check time) are skipped with a reason.
    """
    scan = new_failures(records, cursor, "drift")
    requests, skipped = [], list(scan.skipped)
    for record in scan.failed:
        if last_retrain_at is not None and record.timestamp - last_retrain_at < cooldown_minutes * 60:
            skipped.append(f"drift check {record.record_id} (week {record.week}) failed inside the "
                           f"{cooldown_minutes:g}-minute cool-down after the last retrain")
            continue
        requests.append((record, retrain_partition(record.week, partition_keys)))
        last_retrain_at = record.timestamp
    return RetrainDecision(requests, skipped, scan.cursor)


@dataclass(frozen=True)
class DecayRequest:
    """One failed live_degradation check: a retrain of ``retrain_partition``, and a rollback when one is warranted."""

    record: CheckRecord
    retrain_partition: str
    rollback_to: str | None
    degraded_version: str | None
    reason: str


@dataclass
class DecayDecision:
    requests: list[DecayRequest] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cursor: int = 0


def decay_requests(records: Sequence[CheckRecord], cursor: int, partition_keys: list[str]) -> DecayDecision:
    """One request per failed live_degradation check (:func:`new_failures`): a retrain for the week after it, and
    the rollback the check decided; and a retrain for every passed check that asks for one while a recovery from
    a concept change goes on (``recovery_retrain`` in its metadata: live still short of the pre-change level,
    :mod:`mlplatform.lib.recovery`).

    The check's metadata carries the decision (:meth:`mlplatform.lib.live.RollbackDecision.metadata`): the degraded
    version and, when the step found one, the earlier champion that scored significantly better on the same
    labelled rows (``rollback_to``); the sensor never picks a version itself.
    """
    scan = new_failures(records, cursor, "live_degradation")
    answered = {record.record_id for record in scan.failed}
    recovering = [record for record in records
                  if cursor < record.record_id <= scan.cursor and record.passed and record.week is not None
                  and record.details.get("recovery_retrain") and record.record_id not in answered]
    requests = []
    for record in sorted([*scan.failed, *recovering], key=lambda r: r.record_id):
        details: Mapping[str, Any] = record.details
        if record.passed:
            requests.append(DecayRequest(record, retrain_partition(record.week, partition_keys), None, None,
                                         str(details.get("recovery") or "recovery from a concept change goes on")))
            continue
        requests.append(DecayRequest(
            record, retrain_partition(record.week, partition_keys), str(details.get("rollback_to") or "") or None,
            str(details.get("version") or "") or None, str(details.get("summary") or "live performance degraded")))
    skipped = [reason for reason in scan.skipped
               if not any(f"check {r.record_id} " in reason for r in recovering)]
    return DecayDecision(requests, skipped, scan.cursor)
