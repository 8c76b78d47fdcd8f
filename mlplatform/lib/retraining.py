"""Which drift check results deserve a retrain: a plain function over check records.

The sensor (``defs/automation.py``) only reads the instance and turns decisions into run
requests; everything that could be wrong about "exactly one retrain per failed check"
lives here, where it is tested without Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def retrain_requests(records: list[CheckRecord], cursor: int, last_retrain_at: float | None,
                     cooldown_minutes: float, partition_keys: list[str]) -> RetrainDecision:
    """One retrain per failed check newer than ``cursor``; the new cursor never passes a pending check.

    Dagster writes a check's row when the run is planned and fills in the result later, so a
    record id can be seen before its result: the cursor stops just before the first pending
    record and the next tick looks again (requests already made are deduplicated by run key).
    Failures inside the cool-down after the previous retrain (by check time) are skipped with a reason.
    """
    requests, skipped = [], []
    new_cursor, blocked = cursor, False
    for record in sorted(records, key=lambda r: r.record_id):
        if record.record_id <= cursor:
            continue
        if record.passed is None:
            blocked = True
            skipped.append(f"drift check {record.record_id} (week {record.week}) not evaluated yet")
            continue
        if not blocked:
            new_cursor = record.record_id
        if record.passed:
            skipped.append(f"drift check {record.record_id} (week {record.week}) passed")
            continue
        if record.week is None:
            skipped.append(f"drift check {record.record_id} failed but names no week")
            continue
        if last_retrain_at is not None and record.timestamp - last_retrain_at < cooldown_minutes * 60:
            skipped.append(f"drift check {record.record_id} (week {record.week}) failed inside the "
                           f"{cooldown_minutes:g}-minute cool-down after the last retrain")
            continue
        requests.append((record, retrain_partition(record.week, partition_keys)))
        last_retrain_at = record.timestamp
    return RetrainDecision(requests, skipped, new_cursor)
