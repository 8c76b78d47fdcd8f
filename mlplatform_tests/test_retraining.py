"""Which drift results deserve a retrain: the pure decision behind the sensor."""

from __future__ import annotations

from mlplatform.lib.retraining import CheckRecord, retrain_partition, retrain_requests

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


def test_records_at_or_below_the_cursor_are_never_requested_again():
    records = [CheckRecord(1, False, "2024-01-01", 10.0), CheckRecord(2, False, "2024-01-08", 11.0)]
    first = decide(records)
    second = decide(records, cursor=first.cursor)
    assert len(first.requests) == 2 and second.requests == [] and second.cursor == 2


def test_cursor_stops_before_a_check_still_being_evaluated():
    records = [CheckRecord(1, False, "2024-01-01", 10.0), CheckRecord(2, None, "2024-01-08", 11.0),
               CheckRecord(3, False, "2024-01-15", 12.0)]
    decision = decide(records)
    assert decision.cursor == 1  # record 2 may still fail: look at it again next tick
    assert [r.record_id for r, _ in decision.requests] == [1, 3]
    assert any("not evaluated yet" in reason for reason in decision.skipped)
    later = decide([CheckRecord(2, False, "2024-01-08", 11.0), CheckRecord(3, False, "2024-01-15", 12.0)],
                   cursor=decision.cursor)
    assert [r.record_id for r, _ in later.requests] == [2, 3] and later.cursor == 3


def test_cooldown_skips_failures_too_soon_after_the_last_retrain_with_a_reason():
    records = [CheckRecord(1, False, "2024-01-01", 0.0), CheckRecord(2, False, "2024-01-08", 60.0),
               CheckRecord(3, False, "2024-01-15", 700.0)]
    decision = decide(records, cooldown=10)  # 10 minutes
    assert [r.record_id for r, _ in decision.requests] == [1, 3]
    assert any("cool-down" in reason and "2024-01-08" in reason for reason in decision.skipped)
    assert decide(records, last_retrain_at=-30.0, cooldown=1).requests[0][0].record_id == 2
