"""Production closes the loop: outcomes join the prediction log, live performance is judged, and the platform acts.

Pure decisions are tested directly (fast); each behaviour the issue names has one end-to-end test with the real
service (``mlplatform serve`` in a subprocess, real HTTP), real Dagster runs and sensor ticks, a real MLflow
registry and DuckDB warehouse in a temp home. The data are :mod:`mlplatform.demo.synthetic`'s: inputs with one
distribution every week, outcomes by rule A or its reverse B.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, RunsFilter

from mlplatform import names
from mlplatform.demo.plan import ProductionWeeks
from mlplatform.demo.synthetic import churn_weeks
from mlplatform.lib import live, outcomes
from mlplatform.lib.metrics import MetricEstimate
from mlplatform.lib.routing import CANARY_ROLE, CHAMPION_ROLE, SHADOW_ROLE
from mlplatform_tests.helpers import warehouse_query

pytestmark = pytest.mark.usefixtures("warehouse_backend")

# --- pure decisions -------------------------------------------------------------------------------------------------


def _log(rows: list[dict]) -> pd.DataFrame:
    base = {"request_id": "q", "record_index": 0, "record_id": None, "time": pd.Timestamp("2026-01-01"), "model": "m",
            "version": "1", "role": CHAMPION_ROLE, "entity_key": None, "label": "1", "score": 0.9,
            "probabilities": '{"0": 0.1, "1": 0.9}', "latency_ms": 1.0}
    return pd.DataFrame([{**base, **row} for row in rows])


def test_outcomes_join_predictions_on_the_entity_key_or_the_record_id_and_the_latest_prediction_wins():
    keyed = pd.DataFrame({"id": [7, 8, 9], "y": [1, 0, 1]})
    labels = pd.DataFrame({outcomes.JOIN_KEY: outcomes.label_join_keys(keyed, ["id"]), outcomes.LABEL: keyed["y"]})
    logged = _log([
        {"entity_key": "7", "score": 0.2, "time": pd.Timestamp("2026-01-01")},
        {"entity_key": "7", "score": 0.8, "time": pd.Timestamp("2026-01-02")},  # predicted again: this one counts
        {"entity_key": "8", "score": 0.3},
        {"entity_key": "8", "score": 0.35, "role": SHADOW_ROLE, "version": "2"},
        {"entity_key": None, "record_id": None},  # nothing to match on
    ])
    matched = outcomes.match_labels(logged, labels)
    champion = matched.rows[matched.rows["role"] == CHAMPION_ROLE].set_index(outcomes.JOIN_KEY)
    assert champion.loc["k:7", "score"] == 0.8 and champion.loc["k:8", "score"] == 0.3
    assert len(matched.rows[matched.rows["role"] == SHADOW_ROLE]) == 1
    assert matched.unmatched_labels == 1 and matched.predictions_without_key == 1  # id 9 was never predicted

    rows = pd.DataFrame({"_source_row": [0, 1], "y": [0, 1]})  # no key: the row number replay sends as `_id`
    labels = pd.DataFrame({outcomes.JOIN_KEY: outcomes.label_join_keys(rows, [], rows["_source_row"]),
                           outcomes.LABEL: rows["y"]})
    matched = outcomes.match_labels(_log([{"record_id": "1"}, {"record_id": "5"}]), labels)
    assert list(matched.rows[outcomes.JOIN_KEY]) == ["r:1"] and matched.unmatched_labels == 1


def _scores(n: int, auc_signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    return y, 1 / (1 + np.exp(-(auc_signal * (y - 0.5) + rng.normal(0, 1, n))))


def test_a_drop_inside_the_noise_passes_and_the_same_drop_on_many_rows_fails():
    reference = 0.80
    small_y, small_s = _scores(80, 0.74, seed=3)  # a true ROC AUC of about 0.70: 12% below the evaluation
    small = live.estimate("binary", "roc_auc", small_y, small_s)
    big_y, big_s = _scores(20_000, 0.74, seed=1)
    big = live.estimate("binary", "roc_auc", big_y, big_s)
    limit = reference * 0.9
    assert small.value < limit and big.value < limit  # both below the limit: a 10% drop or more

    noisy = live.judge_degradation("roc_auc", "3", small, 80, reference, 0.10, min_rows=50)
    assert noisy.passed and noisy.judged and "noise" in noisy.reason and small.high >= limit
    certain = live.judge_degradation("roc_auc", "3", big, 20_000, reference, 0.10, min_rows=50)
    assert not certain.passed and "degraded" in certain.reason and certain.limit == pytest.approx(limit)

    few = live.judge_degradation("roc_auc", "3", small, 20, reference, 0.10, min_rows=50)
    assert few.passed and not few.judged  # too few labelled rows: reported, not judged
    lower = live.judge_degradation("rmse", "3", MetricEstimate(130.0, 120.0, 140.0), 500, 100.0, 0.10, 50)
    assert not lower.passed and lower.relative_drop == pytest.approx(0.30)  # errors: worse means higher


def test_the_rollback_decision_needs_a_significantly_better_earlier_champion_and_says_why_as_fields():
    y, degraded = _scores(400, 0.5, seed=5)
    _, better = _scores(400, 3.0, seed=6)
    better = np.where(y == 1, np.maximum(better, degraded), np.minimum(better, degraded))  # never worse, row by row
    matched = pd.DataFrame({"version": "4", "role": CHAMPION_ROLE, "score": degraded, "x": 0.0,
                            outcomes.LABEL: y.astype(int), "probabilities": '{"0": 0.5, "1": 0.5}'})

    def judge(rescored, candidate="2", champion_now="4", columns=("x",)):
        return live.judge_rollback("binary", "roc_auc", matched, "4", champion_now, candidate,
                                   ["v3 did not pass every gate"], list(columns), lambda version, rows: rescored)

    roll = judge(better)
    c = roll.comparison
    assert roll.target == "2" and roll.summary == "roll back to v2" and c.low > 0 and c.a > c.b
    assert roll.metadata()["rollback_to"] == "2" and roll.metadata()["rollback_ci_low"] == c.low
    assert roll.candidate_estimate.role == live.PREVIOUS_CHAMPION_ROLE and roll.candidate_estimate.rows == 400
    same = judge(degraded)  # no better on the same rows: no rollback, the comparison kept as evidence
    assert same.target is None and same.summary == "no rollback, not significantly better" and same.comparison
    assert same.metadata()["rollback_to"] == "" and same.metadata()["rollback_candidate"] == "2"
    moved = judge(better, champion_now="5")  # the champion moved since the check judged v4: never undo that
    assert moved.target is None and "no longer the champion" in moved.reason
    none = judge(better, candidate=None)
    assert none.target is None and "v3 did not pass every gate" in none.reason
    blind = judge(better, columns=("x", "unlogged"))
    assert blind.target is None and "lacks inputs" in blind.reason


def _canary_rows(champion_signal: float, canary_signal: float, n: int = 400) -> pd.DataFrame:
    y1, s1 = _scores(n, champion_signal, seed=3)
    y2, s2 = _scores(n, canary_signal, seed=4)
    return pd.DataFrame({
        "version": ["1"] * n + ["3"] * n, "role": [CHAMPION_ROLE] * n + [CANARY_ROLE] * n,
        "score": np.concatenate([s1, s2]), outcomes.LABEL: np.concatenate([y1, y2]).astype(int),
        "probabilities": ['{"0": 0.5, "1": 0.5}'] * (2 * n)})


def test_a_canary_significantly_worse_fails_and_one_as_good_passes():
    worse = live.judge_canary("binary", "roc_auc", _canary_rows(3.0, 0.5), "3", min_rows=50)
    assert not worse.passed and worse.difference.a_worse and "significantly worse" in worse.reason
    good = live.judge_canary("binary", "roc_auc", _canary_rows(3.0, 3.0), "3", min_rows=50)
    assert good.passed and good.judged and not good.difference.a_worse


def test_the_shadow_report_pairs_each_shadow_score_with_the_champions_answer_to_the_same_record():
    logged = _log([
        {"request_id": "a", "role": CHAMPION_ROLE, "version": "1", "label": "1", "score": 0.9, "record_id": "0"},
        {"request_id": "a", "role": SHADOW_ROLE, "version": "2", "label": "1", "score": 0.8, "record_id": "0"},
        {"request_id": "b", "role": CHAMPION_ROLE, "version": "1", "label": "1", "score": 0.7, "record_id": "1"},
        {"request_id": "b", "role": SHADOW_ROLE, "version": "2", "label": "0", "score": 0.2, "record_id": "1"},
        {"request_id": "c", "role": CHAMPION_ROLE, "version": "1", "label": "0", "score": 0.1, "record_id": "2"},
    ])
    labels = pd.DataFrame({outcomes.JOIN_KEY: ["r:0", "r:1"], outcomes.LABEL: [1, 0]})
    [report] = live.shadow_comparison("binary", "roc_auc", logged, labels)
    assert (report.champion, report.shadow, report.pairs, report.agreement) == ("1", "2", 2, 0.5)
    assert report.labelled is not None and report.labelled.rows_a == 2


# --- end to end -----------------------------------------------------------------------------------------------------

def churn_spec(end: str, approval: str = "auto", extra: str = "", window: int = 1) -> str:
    return f"""
name: toy
task: binary
source:
  path: churn.csv
  timestamp: signup_time
target: churned
features:
  numeric: [tenure_months, monthly_charges, support_calls, usage_hours]
  categorical: [contract]
columns:
  churned: {{categories: [0, 1]}}
  contract: {{categories: [month-to-month, one-year, two-year]}}
partitions:
  start: 2024-01-01
  end: {end}
  training_window_weeks: {window}
estimator:
  class: sklearn.linear_model.LogisticRegression
  params: {{max_iter: 1000}}
gates:
  metric: roc_auc
  threshold: 0.7
automation:
  retrain: on_drift
  weekly_schedule: false
rollout:
  approval: {approval}
  auto_promote: immediate  # champion at once: the canary stage is test_canary.py's
{extra}"""


def weeks_from(start: str, count: int) -> list[str]:
    return [(pd.Timestamp(start) + pd.Timedelta(weeks=i)).date().isoformat() for i in range(count)]


def setup_model(home: Path, spec_dir, rules: list[str], end: str, approval: str = "auto", extra: str = "",
                window: int = 1, rows: int = 300):
    """A churn model over ``rules`` weeks from 2024-01-01: spec, data, definitions, instance, settings, tracker."""
    from mlplatform.definitions import build_definitions
    from mlplatform.defs.instance import prepare_dagster_home
    from mlplatform.demo.runner import specs_by_name
    from mlplatform.lib.settings import load_settings
    from mlplatform.lib.tracking import Tracker

    spec_dir({"toy.yaml": churn_spec(end, approval, extra, window)},
             {"churn.csv": churn_weeks(date(2024, 1, 1), rules, rows_per_week=rows)})
    settings = load_settings()
    prepare_dagster_home(settings)
    return build_definitions(), settings, Tracker.for_settings(settings), specs_by_name()["toy"]


def audit_events(home: Path, event: str) -> pd.DataFrame:
    return warehouse_query(home, f"select * from audit.events where model = 'toy' and event = '{event}' order by seq")


@pytest.mark.slow
def test_concept_drift_keeps_the_drift_check_green_fails_live_performance_and_one_retrain_recovers(
        home, spec_dir, monkeypatch):
    from mlplatform.demo.production import run_production
    from mlplatform.demo.runner import run_job, tick_sensor

    rules = ["A", "A", "A", "B", "B"]  # the outcome rule flips in week 3; inputs never change
    weeks = weeks_from("2024-01-01", len(rules))
    defs, settings, tracker, spec = setup_model(home, spec_dir, rules, end="2024-02-05")
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    instance = DagsterInstance.get()
    assert run_job(defs, instance, names.pipeline_job("toy"), weeks[0], weeks[2]).success
    assert tracker.alias_version("toy", "champion") == "2"

    [summary] = run_production(settings, [spec], {"toy": "2024-01-15"}, {"toy": weeks[2]}, {"toy": ProductionWeeks(2)})
    flipped, after = summary.story
    assert (flipped.week, flipped.served_by, flipped.drift_passed, flipped.degradation_passed) == (
        weeks[3], "2", True, False)  # the inputs look the same; the outcomes do not
    retrains = instance.get_runs(RunsFilter(job_name=names.retrain_job("toy"),
                                            tags={names.TRIGGER_TAG: names.DECAY_TRIGGER}))
    assert [run.tags[names.DECAY_WEEK_TAG] for run in retrains] == [weeks[3]]  # exactly one retrain
    assert not instance.get_runs(RunsFilter(job_name=names.rollback_job("toy")))  # v1 is no better: no rollback
    assert after.served_by == "3" and after.degradation_passed is True  # the retrained version, through the service
    live_rows = warehouse_query(home, "select * from toy.live_performance where role = 'champion' order by week")
    by_week = dict(zip(live_rows["week"].dt.strftime("%Y-%m-%d"), live_rows["value"], strict=True))
    assert by_week[weeks[3]] < 0.5 and by_week[weeks[4]] > 0.8  # fell, then recovered

    assert not tick_sensor(defs, instance, names.decay_sensor("toy"))  # a second tick requests nothing more
    requested = audit_events(home, "retrain_requested")
    assert len(requested) == 1 and '"trigger": "performance_decay"' in requested["details"].iloc[0]
    assert len(audit_events(home, "performance_alert")) == 1


@pytest.mark.slow
@pytest.mark.postgres_extended
def test_after_a_concept_change_a_four_week_window_retrains_on_the_new_regime_until_back_at_the_pre_change_level(
        home, spec_dir, monkeypatch, capsys):
    """Issue 26: with a 4-week window, one retrain on the usual window would learn 3 weeks of the old rule and 1 of
    the new, evaluate low, and be judged against that low evaluation for good. Instead the platform records the
    level before the change, retrains on the new regime only (a window from the change week that grows week by
    week), keeps retraining while live is short of the level (even when the check passes), and then stops.

    Small weeks (60 rows) and a tight max_degradation (3%) make one week of the new rule not quite enough."""
    from mlplatform.cli import main
    from mlplatform.demo.production import run_production
    from mlplatform.demo.runner import run_job, tick_sensor

    rules = ["A"] * 4 + ["B"] * 3  # inputs never change; the outcome rule flips in week 4
    weeks = weeks_from("2024-01-01", len(rules))
    defs, settings, tracker, spec = setup_model(home, spec_dir, rules, end="2024-02-19", window=4, rows=60,
                                                extra="  rollback: {max_degradation: 0.03}\n")
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    instance = DagsterInstance.get()
    assert run_job(defs, instance, names.pipeline_job("toy"), weeks[0], weeks[2]).success
    before = tracker.alias_version("toy", "champion")

    [summary] = run_production(settings, [spec], {"toy": before}, {"toy": weeks[2]}, {"toy": ProductionWeeks(4)})
    healthy, flipped, short, back = summary.story
    assert healthy.degradation_passed and flipped.degradation_passed is False and "recovery started" in flipped.actions
    # the first retrain (one week of the new rule) passes its check, yet is short of the level: retrain again
    assert short.degradation_passed and "recovery goes on" in short.actions
    assert f"retrain (recovery) for {weeks[6]} done" in short.actions and "recovery ended" in back.actions
    live_rows = warehouse_query(home, "select * from toy.live_performance where role = 'champion' and judged "
                                      "order by week")
    by_week = dict(zip(live_rows["week"].dt.strftime("%Y-%m-%d"), live_rows["value"], strict=True))
    level = by_week[weeks[3]]  # the last healthy champion's live metric: the level to return to
    assert by_week[weeks[4]] < 0.5 and by_week[weeks[5]] < 0.95 * level <= by_week[weeks[6]]  # back in 3 lived weeks
    assert list(live_rows["reference_value"].iloc[-2:]) == pytest.approx([level, level])  # not their own evaluations
    assert back.served_by not in (before, short.served_by)

    trained = audit_events(home, "model_trained").set_index("week")["details"]
    assert f'"train_window": "{weeks[4]}..{weeks[5]}"' in trained[weeks[5]]  # the new regime only, not weeks 1..4
    assert f'"train_window": "{weeks[4]}..{weeks[6]}"' in trained[weeks[6]]  # growing week by week
    # the window was chosen by evidence: both candidates scored on the newest labelled week
    last = instance.get_latest_materialization_event(AssetKey(["toy", "model"])).asset_materialization
    assert last.partition == weeks[6]
    choice = last.metadata["window_choice"].value
    assert choice.startswith("change-point window (2 weeks) chosen") and "the spec's 4-week window from" in choice
    started, retrains, ended = (audit_events(home, e) for e in ("recovery_started", "recovery_retrain",
                                                                "recovery_ended"))
    assert len(started) == 1 and started["week"].iloc[0] == weeks[4]
    assert f'"pre_change_level": {level}' in started["details"].iloc[0]
    assert list(retrains["week"]) == [weeks[4], weeks[5]]
    assert f"retrain for {weeks[5]} on {weeks[4]}..{weeks[5]} (1 of 4 weeks" in retrains["summary"].iloc[0]
    assert f"retrain for {weeks[6]} on {weeks[4]}..{weeks[6]} (2 of 4 weeks" in retrains["summary"].iloc[1]
    assert len(ended) == 1 and ended["week"].iloc[0] == weeks[6] and "back within the limit" in ended["summary"].iloc[0]
    recovery_rows = warehouse_query(home, "select event from toy.recovery order by week")
    assert list(recovery_rows["event"]) == ["recovery_started", "recovery_retrain", "recovery_ended"]
    runs = instance.get_runs(RunsFilter(job_name=names.retrain_job("toy"), tags={names.TRIGGER_TAG: names.DECAY_TRIGGER}))
    assert sorted((run.tags[names.DECAY_WEEK_TAG], run.tags.get(names.RECOVERY_TAG)) for run in runs) == [
        (weeks[4], None), (weeks[5], "true")]  # a failed check, then a passed one the recovery asked a retrain for
    assert not tick_sensor(defs, instance, names.decay_sensor("toy"))  # back: nothing more to retrain
    capsys.readouterr()
    assert main(["reproduce", "toy", back.served_by]) == 0  # retrained on its recorded new-regime window
    assert f"toy v{back.served_by}: reproduced: identical metrics" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.postgres_extended
def test_flipped_outcomes_for_a_week_roll_the_champion_back_once_never_to_a_gate_failing_version(home, spec_dir,
                                                                                                  monkeypatch):
    from mlplatform.demo.production import Service, run_production
    from mlplatform.demo.runner import run_job, tick_sensor
    from mlplatform.lib import promotion
    from mlplatform.lib.warehouse import connect_when_free

    # v1, v2 learn rule A; v3 (trained on A, judged on B) fails its gates; v4 learns B and beats v2 on B: champion.
    # Week 5 follows rule A again: v4 is far worse live than at its evaluation, and v2 is better on the same rows.
    rules = ["A", "A", "A", "B", "B", "A"]
    weeks = weeks_from("2024-01-01", len(rules))
    defs, settings, tracker, spec = setup_model(home, spec_dir, rules, end="2024-02-12")
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    instance = DagsterInstance.get()
    assert run_job(defs, instance, names.pipeline_job("toy"), weeks[0], weeks[3]).success
    assert tracker.version_tags("toy", "3")["gates"] == "failed"
    # a person once forced the gate-failing v3 into production, then v4 replaced it: v3 is in the champion history
    with connect_when_free(settings.warehouse_path, 60) as connection:
        promotion.commit_changes(connection, tracker, [promotion.approval_change(tracker, "toy", "3", "ana", "test",
                                                                                  force=True)])
    assert run_job(defs, instance, names.pipeline_job("toy"), weeks[4]).success
    assert tracker.alias_version("toy", "champion") == "4"

    [summary] = run_production(settings, [spec], {"toy": "4"}, {"toy": weeks[4]}, {"toy": ProductionWeeks(1)})
    [week] = summary.story
    assert week.degradation_passed is False and "roll back" in " ".join(week.actions)
    assert tracker.alias_version("toy", "champion") == "2"  # not v3, the forced one whose gates failed
    rollbacks = audit_events(home, "rollback")
    assert len(rollbacks) == 1
    assert rollbacks["actor"].iloc[0] == f"sensor {names.decay_sensor('toy')}" and "v4 -> v2" in rollbacks["summary"].iloc[0]
    assert "live_degradation failed on week 2024-02-05" in rollbacks["summary"].iloc[0]
    assert not tick_sensor(defs, instance, names.decay_sensor("toy"))  # one failure, one rollback

    with Service(settings, ["toy"]) as service:  # a service started now serves what the rollback left: v2
        import httpx

        assert service.champion("toy") == "2"
        rows = churn_weeks(date(2024, 1, 1), ["A"], 20)[spec.feature_columns]
        records = [{c: (v.item() if hasattr(v, "item") else v) for c, v in row.items()} for _, row in rows.iterrows()]
        answer = httpx.post(f"{service.url}/v1/models/toy/predict", json={"records": records}).json()
        assert {(p["version"], p["role"]) for p in answer["predictions"]} == {("2", CHAMPION_ROLE)}
    # the degraded v4 kept `challenger` from its gates: the rollback stopped its canary too, in the same unit
    assert tracker.alias_version("toy", "challenger") is None
    [stopped] = audit_events(home, "canary_stopped").itertuples()
    assert stopped.actor == f"sensor {names.decay_sensor('toy')}" and "v4 was rolled back" in stopped.summary

    with connect_when_free(settings.warehouse_path, 60) as connection, pytest.raises(promotion.PromotionRefused,
                                                                                    match="did not pass every gate"):
        promotion.rollback_change(connection, tracker, "toy", "3", "sensor x", "test")


@pytest.mark.slow
@pytest.mark.parametrize("canary_rule", ["B", "A"])
@pytest.mark.postgres_extended
def test_a_worse_canary_is_stopped_and_audited_and_a_good_one_keeps_running(home, spec_dir, monkeypatch, capsys,
                                                                            canary_rule):
    from mlplatform.cli import main
    from mlplatform.demo.production import run_production
    from mlplatform.demo.runner import run_job
    from mlplatform.lib import promotion
    from mlplatform.lib.warehouse import connect_when_free

    # v1 learns rule A and is approved; v3 learns `canary_rule` and passes its gates (judged on it): the challenger,
    # a canary with half the traffic. Week 4 follows rule A: a rule-B canary is far worse than the champion there.
    rules = ["A", "A", canary_rule, canary_rule, "A"]
    weeks = weeks_from("2024-01-01", len(rules))
    defs, settings, tracker, spec = setup_model(home, spec_dir, rules, end="2024-02-05", approval="manual",
                                                extra="  canary_percent: 50\n  shadow: true\n")
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    instance = DagsterInstance.get()
    assert run_job(defs, instance, names.pipeline_job("toy"), weeks[0], weeks[3]).success
    with connect_when_free(settings.warehouse_path, 60) as connection:
        promotion.commit_changes(connection, tracker, [promotion.approval_change(tracker, "toy", "1", "ana", "ok")])
    assert (tracker.alias_version("toy", "champion"), tracker.alias_version("toy", "challenger")) == ("1", "3")

    [summary] = run_production(settings, [spec], {"toy": "1"}, {"toy": weeks[3]}, {"toy": ProductionWeeks(1)})
    assert {role for _, role in summary.log_rows} == {CHAMPION_ROLE, CANARY_ROLE, SHADOW_ROLE}
    live_rows = warehouse_query(home, "select version, role, value from toy.live_performance order by role")
    assert set(zip(live_rows["version"], live_rows["role"], strict=True)) == {
        ("1", CHAMPION_ROLE), ("3", CANARY_ROLE), ("3", SHADOW_ROLE)}
    [shadow] = warehouse_query(home, "select * from toy.shadow").itertuples()  # v3 in the shadow of v1's answers
    assert (shadow.champion_version, shadow.shadow_version) == ("1", "3") and shadow.labelled_pairs == shadow.pairs > 50
    assert (shadow.difference < 0 and shadow.ci_high < 0) if canary_rule == "B" else shadow.agreement > 0.7
    assert tracker.alias_version("toy", "champion") == "1"
    if canary_rule == "B":
        assert tracker.alias_version("toy", "challenger") is None  # stopped: serving sends it no more traffic
        [stopped] = audit_events(home, "canary_stopped").itertuples()
        assert pd.isna(stopped.version) and "canary stopped: significantly worse: canary v3" in stopped.summary
        return
    assert tracker.alias_version("toy", "challenger") == "3" and audit_events(home, "canary_stopped").empty
    capsys.readouterr()
    assert main(["promote", "toy", "--by", "ana", "--reason", "a good canary"]) == 0
    out = capsys.readouterr().out
    assert "champion v1 -> v3" in out and "production evidence for v3:" in out
    assert f"canary week {weeks[4]}: live roc_auc" in out and "vs champion v1" in out
    assert f"shadow week {weeks[4]}: agrees with champion v1 on" in out


def test_outcomes_from_a_teams_labels_file_land_in_the_week_of_their_rows_and_missing_columns_are_named(
        home, spec_dir):
    from mlplatform.demo.runner import specs_by_name
    from mlplatform.lib.source import Window

    labels_file = pd.DataFrame({"signup_time": ["2024-01-02 10:00:00", "2024-01-09 10:00:00", "2024-01-03 11:00:00"],
                             "_id": [17, 18, 19], "churned": [1, 0, 0]})
    folder = spec_dir({"toy.yaml": churn_spec("2024-02-05", extra="labels:\n  path: outcomes.csv\n")},
                      {"churn.csv": churn_weeks(date(2024, 1, 1), ["A", "A"], rows_per_week=50),
                       "outcomes.csv": labels_file})
    spec = specs_by_name()["toy"]
    week = outcomes.file_outcomes(spec, Window(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-08")))
    assert sorted(week[outcomes.JOIN_KEY]) == ["r:17", "r:19"] and sorted(week[outcomes.LABEL]) == [0, 1]

    labels_file.drop(columns=["_id"]).to_csv(folder / "outcomes.csv", index=False)
    with pytest.raises(ValueError, match="missing column.*_id.*the record id clients sent"):
        outcomes.file_outcomes(spec, Window(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-08")))
