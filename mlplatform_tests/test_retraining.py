"""What the sensors ask for: the pure decisions behind the drift-retrain and the decay sensors."""

from __future__ import annotations

from mlplatform.lib.retraining import CheckRecord, decay_requests, new_failures, retrain_partition, retrain_requests

WEEKS = ["2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22"]


def decide(records, cursor=0, last_retrain_at=None, cooldown=0.0):
    return retrain_requests(records, cursor, last_retrain_at, cooldown, WEEKS)


def test_one_request_per_failed_check_for_the_following_week():
    decision = decide([CheckRecord(1, True, "2024-01-01", 10.0), CheckRecord(2, False, "2024-01-08", 11.0),
                       CheckRecord(3, False, "2024-01-15", 12.0)])
    assert [(r.record_id, partition) for r, partition in decision.requests] == [(2, "2024-01-15"), (3, "2024-01-22")]
    assert decision.cursor == 3
    assert any("passed" in reason for reason in decision.skipped)


def test_the_newest_week_is_retrained_on_itself():
    assert retrain_partition("2024-01-22", WEEKS) == "2024-01-22"
    assert retrain_partition("2024-01-15", WEEKS) == "2024-01-22"


def test_each_failed_check_is_answered_once_and_the_cursor_never_passes_a_pending_check():
    """The rule both sensors share (drift -> retrain, live_degradation -> rollback and retrain)."""
    records = [CheckRecord(1, False, "2024-01-01", 10.0), CheckRecord(2, None, "2024-01-08", 11.0),
               CheckRecord(3, False, "2024-01-15", 12.0), CheckRecord(4, True, "2024-01-22", 13.0),
               CheckRecord(5, False, None, 14.0)]
    scan = new_failures(records, 0, "drift")
    assert [r.record_id for r in scan.failed] == [1, 3]  # not the passed 4, not 5 that names no week
    assert scan.cursor == 1  # record 2 may still fail: the next tick looks at it again
    assert {"not evaluated yet", "passed", "names no week"} <= {
        phrase for reason in scan.skipped for phrase in ("not evaluated yet", "passed", "names no week") if phrase in reason}
    later = new_failures([CheckRecord(2, False, "2024-01-08", 11.0), *records[2:]], scan.cursor, "drift")
    assert [r.record_id for r in later.failed] == [2, 3] and later.cursor == 5  # 1 never again; all evaluated now
    assert new_failures(records, later.cursor, "drift").failed == []
    # both sensors answer exactly these failures
    assert [r.record_id for r, _ in retrain_requests(records, 0, None, 0.0, WEEKS).requests] == [1, 3]
    assert [r.record.record_id for r in decay_requests(records, 0, WEEKS).requests] == [1, 3]


def test_the_decay_decision_carries_the_checks_rollback_and_retrains_the_following_week():
    records = [CheckRecord(2, False, "2024-01-08", 0.0, {"version": "9", "rollback_to": "8", "summary": "degraded"}),
               CheckRecord(4, False, "2024-01-22", 0.0, {"version": "9", "rollback_to": ""})]
    decision = decay_requests(records, 0, WEEKS)
    assert [(r.record.record_id, r.retrain_partition, r.rollback_to, r.degraded_version, r.reason)
            for r in decision.requests] == [(2, "2024-01-15", "8", "9", "degraded"),
                                            (4, "2024-01-22", None, "9", "live performance degraded")]


def test_cooldown_skips_failures_too_soon_after_the_last_retrain_with_a_reason():
    records = [CheckRecord(1, False, "2024-01-01", 0.0), CheckRecord(2, False, "2024-01-08", 60.0),
               CheckRecord(3, False, "2024-01-15", 700.0)]
    decision = decide(records, cooldown=10)  # 10 minutes
    assert [r.record_id for r, _ in decision.requests] == [1, 3]
    assert any("cool-down" in reason and "2024-01-08" in reason for reason in decision.skipped)
    assert decide(records, last_retrain_at=-30.0, cooldown=1).requests[0][0].record_id == 2
