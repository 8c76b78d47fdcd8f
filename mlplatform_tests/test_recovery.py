"""Recovering from a concept change: the pure decisions (:mod:`mlplatform.lib.recovery`) and what the decay sensor
asks for while a recovery goes on. The end-to-end story, lived week by week through the real service, is
``test_production_loop.test_after_a_concept_change_a_four_week_window_retrains_on_the_new_regime_until_back_at_the_pre_change_level``.
"""

from __future__ import annotations

import math
from datetime import date, datetime

import pandas as pd
import pytest

from mlplatform.lib import recovery
from mlplatform.lib.recovery import ENDED, RETRAIN, STARTED, Level
from mlplatform.lib.retraining import CheckRecord, decay_requests

WEEKS = [f"2024-{m:02d}-{d:02d}" for m, d in [(1, 1), (1, 8), (1, 15), (1, 22), (1, 29), (2, 5), (2, 12), (2, 19),
                                                 (2, 26)]]


def _next(week: str) -> str:
    return WEEKS[WEEKS.index(week) + 1]


def _live(rows: list[recovery.RecoveryRow], weeks_values: list[tuple[str, float, bool]], metric: str = "roc_auc",
          window: int = 4) -> list[recovery.RecoveryRow]:
    """Lives weeks of (week, champion live value, check passed) through decide_week, as the production step does."""
    for week, value, passed in weeks_values:
        state = recovery.state_before(rows, week)
        level = Level(0.99, "live metric of the last healthy champion v3") if not passed else None
        decision = recovery.decide_week(state, week, metric, 0.10, True, passed, "7", value, level, _next(week),
                                        window)
        if decision.row is not None:
            rows = [*rows, decision.row]
    return rows


def test_a_failed_check_starts_a_recovery_each_judged_week_short_of_the_level_retrains_and_the_first_back_ends_it():
    rows = _live([], [(WEEKS[0], 0.98, True), (WEEKS[1], 0.48, False), (WEEKS[2], 0.73, True),
                      (WEEKS[3], 0.80, False), (WEEKS[4], 0.95, True), (WEEKS[5], 0.97, True)])
    assert [(r.week, r.event) for r in rows] == [(WEEKS[1], STARTED), (WEEKS[2], RETRAIN), (WEEKS[3], RETRAIN),
                                                 (WEEKS[4], ENDED)]
    started = rows[0]
    assert (started.change_week, started.level, started.limit) == (WEEKS[1], 0.99, pytest.approx(0.891))
    assert started.retrain_week == WEEKS[2]
    # 0.73 passed its own check (noise, or its own low evaluation) yet is far from the level: retrain anyway
    assert rows[1].retrain_week == WEEKS[3] and "still past the limit 0.891" in rows[1].note
    assert rows[3].retrain_week is None and "back within the limit" in rows[3].note and "3 week(s)" in rows[3].note
    assert recovery.state_before(rows, WEEKS[4]).active and not recovery.state_before(rows, WEEKS[5]).active
    assert recovery.state_before(rows, WEEKS[1]) is None  # a re-run of the change week decides it afresh


def test_an_unjudged_week_changes_nothing_and_a_passing_week_outside_a_recovery_is_quiet():
    state = recovery.state_before(_live([], [(WEEKS[1], 0.48, False)]), WEEKS[2])
    quiet = recovery.decide_week(state, WEEKS[2], "roc_auc", 0.10, False, True, "7", None, None, WEEKS[3], 4)
    assert quiet.row is None and not quiet.retrain and "not judged" in quiet.summary
    assert recovery.decide_week(None, WEEKS[2], "roc_auc", 0.10, True, True, "7", 0.9, None, WEEKS[3], 4).row is None


@pytest.mark.parametrize("metric, healthy, broken, short, back", [
    ("rmse", 10.0, 30.0, 12.0, 10.5),  # an error: worse is higher, the limit is above the level
    ("macro_f1", 0.80, 0.40, 0.65, 0.78),  # multiclass score
    ("log_loss", 0.30, 0.90, 0.40, 0.31),
])
def test_errors_and_multiclass_scores_recover_in_their_own_direction(metric, healthy, broken, short, back):
    history = pd.DataFrame({"week": pd.to_datetime(WEEKS[:2]), "version": ["3", "3"], "value": [healthy, healthy],
                            "passed": [True, True]})
    level = recovery.pre_change_level(history, WEEKS[2], 99.0, "3")
    assert level.value == pytest.approx(healthy)
    start = recovery.decide_week(None, WEEKS[2], metric, 0.10, True, False, "3", broken, level, WEEKS[3], 4).row
    assert start.limit == pytest.approx(healthy * (1.1 if metric in ("rmse", "log_loss") else 0.9))
    state = recovery.state_before([start], WEEKS[3])
    assert recovery.decide_week(state, WEEKS[3], metric, 0.10, True, True, "4", short, None, WEEKS[4], 4).row.event \
        == RETRAIN
    assert recovery.decide_week(state, WEEKS[3], metric, 0.10, True, True, "4", back, None, WEEKS[4], 4).row.event \
        == ENDED
    assert recovery.share_of_level(metric, back, healthy) > 0.95


def test_the_level_is_the_last_healthy_champions_live_metric_else_the_degraded_versions_evaluation():
    history = pd.DataFrame({"week": pd.to_datetime(WEEKS[:7]), "version": ["2", "3", "3", "3", "3", "3", "3"],
                            "value": [0.5, 0.90, 0.92, 0.94, 0.96, 0.98, 0.40], "passed": [True] * 6 + [False]})
    level = recovery.pre_change_level(history, WEEKS[6], 0.95, "3")
    assert level.value == pytest.approx((0.92 + 0.94 + 0.96 + 0.98) / 4)  # its newest four healthy weeks
    assert f"v3 (weeks {WEEKS[2]}..{WEEKS[5]})" in level.note
    none = recovery.pre_change_level(history.iloc[:0], WEEKS[6], 0.95, "3")
    assert none.value == 0.95 and "v3's own evaluation" in none.note


def test_versions_trained_after_the_change_are_held_to_the_pre_change_level_even_after_the_recovery_ended():
    rows = _live([], [(WEEKS[1], 0.48, False), (WEEKS[2], 0.95, True)])
    during = recovery.state_before(rows, WEEKS[2])
    old = recovery.reference_for(during, WEEKS[0], 0.97)  # the degraded champion, still serving during the recovery
    assert old.value == 0.99 and "pre-change level" in old.against
    after = recovery.state_before(rows, WEEKS[4])
    assert not after.active
    assert recovery.reference_for(after, WEEKS[2], 0.76).value == 0.99  # a decayed evaluation is not the new normal
    assert recovery.reference_for(after, WEEKS[0], 0.97).value == 0.97  # trained before the change: its evaluation
    assert recovery.reference_for(None, WEEKS[2], 0.76).against == "at its evaluation"


def test_the_window_starts_at_the_change_and_grows_week_by_week_up_to_the_specs_window():
    rows = _live([], [(WEEKS[2], 0.48, False)])  # change week 2024-01-15
    starts = {week: recovery.training_start(rows, week, 4) for week in WEEKS}
    assert starts[WEEKS[2]] is None and starts[WEEKS[1]] is None  # the change week's own model and older: normal
    assert [starts[w] for w in WEEKS[3:6]] == [date(2024, 1, 15)] * 3  # 1, 2, 3 weeks of the new regime
    assert starts[WEEKS[6]] is None  # 4 weeks since the change: the spec's window holds only the new regime
    assert recovery.training_start(rows, WEEKS[3], 1) is None  # a one-week window is the new regime already
    assert "(1 of 4 weeks, the new regime only)" in recovery.window_text(WEEKS[2], WEEKS[3], 4)


def test_the_lifecycle_window_starts_at_the_change_but_never_before_the_specs_window():
    from mlplatform.lib.lifecycle import training_window
    from mlplatform.specs import ModelSpec

    wide = ModelSpec.model_validate({
        "name": "toy", "task": "binary", "source": {"path": "x.csv", "timestamp": "ts"}, "target": "y",
        "features": {"numeric": ["x1"]}, "partitions": {"start": "2024-01-01", "training_window_weeks": 4}})
    week = datetime(2024, 2, 19)
    assert training_window(wide, week).start == datetime(2024, 1, 22)
    assert training_window(wide, week, datetime(2024, 2, 5)).start == datetime(2024, 2, 5)
    assert training_window(wide, week, datetime(2023, 12, 1)).start == datetime(2024, 1, 22)
    assert training_window(wide, week, week).start == datetime(2024, 1, 22)  # the change is week W itself


def test_the_decay_sensor_retrains_once_per_passed_check_that_asks_for_it_during_a_recovery():
    records = [CheckRecord(1, False, WEEKS[1], 0.0, {"version": "3", "rollback_to": "", "recovery_retrain": True}),
               CheckRecord(2, True, WEEKS[2], 0.0, {"recovery_retrain": True, "recovery": "recovery goes on: v4"}),
               CheckRecord(3, True, WEEKS[3], 0.0, {"recovery_retrain": False}),
               CheckRecord(4, None, WEEKS[4], 0.0),
               CheckRecord(5, True, WEEKS[5], 0.0, {"recovery_retrain": True})]
    decision = decay_requests(records, 0, WEEKS)
    assert [(r.record.record_id, r.retrain_partition, r.rollback_to) for r in decision.requests] == [
        (1, WEEKS[2], None), (2, WEEKS[3], None)]  # 5 waits behind the pending 4
    assert decision.requests[1].reason == "recovery goes on: v4" and decision.cursor == 3
    assert not any("check 2 " in reason for reason in decision.skipped)
    later = decay_requests([*records[:3], CheckRecord(4, True, WEEKS[4], 0.0), records[4]], decision.cursor, WEEKS)
    assert [r.record.record_id for r in later.requests] == [5]


def test_the_audit_events_of_a_start_carry_the_level_and_the_first_retrain_on_the_new_regime():
    [start] = _live([], [(WEEKS[1], 0.48, False)])
    events = recovery.recovery_events(start, 4)
    assert [e for e, *_ in events] == [STARTED, RETRAIN]
    (_, summary, passed, details), (_, retrain, _, numbers) = events
    assert passed is False and details["pre_change_level"] == 0.99 and details["change_week"] == WEEKS[1]
    assert f"retrain for {WEEKS[2]} on {WEEKS[1]}..{WEEKS[2]} (1 of 4 weeks" in retrain
    assert math.isclose(numbers["share_of_level"], 0.48 / 0.99)


def _churn_spec(window: int = 4):
    from mlplatform.specs import ModelSpec

    return ModelSpec.model_validate({
        "name": "toy", "task": "binary", "source": {"path": "churn.csv", "timestamp": "signup_time"},
        "target": "churned", "features": {"numeric": ["tenure_months", "monthly_charges", "support_calls",
                                                      "usage_hours"], "categorical": ["contract"]},
        "partitions": {"start": "2024-01-01", "training_window_weeks": window},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}}})


def _churn(rules: list[str]) -> pd.DataFrame:
    from mlplatform.demo.synthetic import churn_weeks

    frame = churn_weeks(date(2024, 1, 1), rules, rows_per_week=200)
    return frame.assign(signup_time=pd.to_datetime(frame["signup_time"]))


def test_the_window_is_chosen_by_its_out_of_time_score_on_the_newest_labelled_week():
    from mlplatform.lib.lifecycle import choose_window

    spec, change = _churn_spec(), datetime(2024, 1, 22)  # rule B from week 3
    features = _churn(["A", "A", "A", "B", "B", "B"])
    first = choose_window(spec, features, datetime(2024, 1, 29), change)  # the first retrain: only week 3 is new
    assert first.start == change and first.candidates[0].validation is None  # nothing before week 3 to score
    assert "change-point window (1 weeks) chosen" in first.text()
    second = choose_window(spec, features, datetime(2024, 2, 5), change)  # scored on week 4 (rule B)
    mixed, usual = second.candidates
    assert usual.start == datetime(2024, 1, 8) and usual.train_rows == 600  # weeks 1-3: two of the old rule
    assert mixed.validation > 0.8 > usual.validation and second.start == change
    assert f"roc_auc {mixed.validation:.4g} (200 rows)" in second.text()
    # no real change: the longer window scores at least as well and is kept when it does
    steady = choose_window(spec, _churn(["A"] * 6), datetime(2024, 2, 5), change)
    a, b = (c.validation for c in steady.candidates)
    assert steady.start == (datetime(2024, 1, 8) if b > a else change)
