"""Drift as an asset, its check, the retrain sensor and the training-data gate, on a real Dagster instance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetCheckKey, AssetKey, SensorResult, build_sensor_context
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from mlplatform.lib.tracking import Tracker
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import QUIET, load_definitions, materialized_partitions, run_weeks, warehouse_query

DRIFT_SPEC = TOY_SPEC.replace("end: 2024-01-22", "end: 2024-02-12\n  training_window_weeks: 3") + """
estimator:
  class: sklearn.linear_model.Ridge
gates:
  metric: rmse
rollout:
  approval: auto
  auto_promote: immediate  # champion at once: this test is not about the canary stage (test_canary.py)
automation:
  retrain: on_drift
"""
FIRST, LAST, SHIFTED = "2024-01-01", "2024-02-05", "2024-01-29"
SENSOR = "toy_retrain_on_drift"


def shifted_rows(shift_from: str = SHIFTED) -> pd.DataFrame:
    """Six clean weeks, then x1 and x2 moved (inside their declared ranges) from ``shift_from`` on."""
    frame = toy_rows(weeks=6, per_week=60)
    late = pd.to_datetime(frame["ts"]) >= pd.Timestamp(shift_from)
    rng = np.random.default_rng(1)
    frame.loc[late, "x1"] = rng.uniform(7, 10, int(late.sum())).round(3)
    frame.loc[late, "x2"] = (rng.normal(0, 1, int(late.sum())) + 3).round(3)
    frame["y"] = (2 * frame["x1"] + frame["x2"]).round(3)
    return frame


def tick(defs, instance, cursor: str | None) -> SensorResult:
    result = defs.resolve_sensor_def(SENSOR)(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    assert isinstance(result, SensorResult)
    return result


CALIBRATED_TESTS = {"K-S permutation", "K-S asymptotic", "chi-square permutation", "chi-square asymptotic"}
EVIDENTLY_TESTS = {"K-S p_value", "chi-square p_value", "Z-test p_value"}


@pytest.mark.parametrize("method", ["calibrated", "evidently"])
def test_drift_check_fails_on_the_shifted_week_and_names_the_features(home: Path, spec_dir, instance, method):
    spec = DRIFT_SPEC if method == "calibrated" else DRIFT_SPEC + "drift:\n  method: evidently\n"  # default: calibrated
    spec_dir({"toy.yaml": spec}, {"toy.csv": shifted_rows()})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, FIRST, LAST, assets=["raw", "features", "drift"]).success

    history = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey(["toy", "drift"]), "drifted_share"), limit=100)
    verdicts = {r.partition: r.evaluation for r in history if r.status.value != "PLANNED"}
    assert FIRST not in verdicts  # no weeks before it: nothing to compare (planned, never evaluated; said in the log)
    assert [verdicts[w].passed for w in ("2024-01-08", "2024-01-15", "2024-01-22")] == [True, True, True]
    failed = verdicts[SHIFTED]
    assert failed.passed is False
    assert set(failed.metadata["drifted"].value) >= {"x1", "x2"}
    assert failed.metadata["drifted_share"].value > 0.3
    assert failed.metadata["method"].value == method and f"method {method}" in failed.description
    per_feature = failed.metadata["per_feature"].value
    assert per_feature["x1"]["drifted"] and per_feature["y"]["role"] == "label" and not per_feature["y"]["counts"]
    if method == "calibrated":
        assert set(per_feature["x1"]) >= {"statistic", "p_value", "p_adjusted", "effect", "method"}
        assert per_feature["x1"]["p_adjusted"] < 0.05 and per_feature["x1"]["effect"] >= 0.1
    assert failed.metadata["not_compared"].value == {"prediction": "no champion"}

    table = warehouse_query(home, f"select * from toy.drift where week = '{SHIFTED}'")
    assert set(table.loc[table["drifted"], "column"]) >= {"x1", "x2"}
    assert set(table["method"]) <= (CALIBRATED_TESTS if method == "calibrated" else EVIDENTLY_TESTS)
    assert set(table["decided_by"]) == {method} and set(table["role"]) == {"feature", "label"}
    assert (home / "reports" / "toy" / f"drift_{SHIFTED}.html").stat().st_size > 10_000
    materialization = instance.get_latest_materialization_event(AssetKey(["toy", "drift"])).asset_materialization
    assert "evidently_report" in materialization.metadata and "per_feature" in materialization.metadata
    assert materialized_partitions(instance, ["toy", "model"]) == set()



def test_no_evidently_report_for_failing_weeks_when_the_spec_asks_for_none_and_rows_shown_are_bounded(
        home: Path, spec_dir, instance):
    spec_dir({"toy.yaml": DRIFT_SPEC + "drift:\n  html_reports_per_run: 0\n  report_features: 2\n"},
             {"toy.csv": shifted_rows()})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, FIRST, LAST, assets=["raw", "features", "drift"]).success
    assert not warehouse_query(home, f"select * from toy.drift where week = '{SHIFTED}' and not check_passed").empty
    # only the run's last week gets Evidently's report; the failing week's verdict is in the check and table
    assert sorted(p.name for p in (home / "reports" / "toy").glob("*.html")) == [f"drift_{LAST}.html"]
    # report_features: 2 of the week's 4 rows are shown (the label, then the strongest drifted feature); the
    # statistics, the share and the warehouse table cover all of them
    check_key = AssetCheckKey(AssetKey(["toy", "drift"]), "drifted_share")
    check = instance.get_latest_asset_check_evaluation_record(check_key).evaluation
    assert check.partition == LAST and len(check.metadata["per_feature"].value) == 2
    assert set(check.metadata["per_feature"].value) & {"x1", "x2"} and "y" in check.metadata["per_feature"].value
    materialization = instance.get_latest_materialization_event(AssetKey(["toy", "drift"])).asset_materialization
    assert materialization.metadata["shown"].value.startswith("2 of 4 rows shown")
    assert materialization.metadata["features"].value == 3 and "plot" in materialization.metadata
    assert len(warehouse_query(home, f"select * from toy.drift where week = '{LAST}'")) == 4

def test_sensor_requests_one_retrain_per_failed_check_and_the_request_retrains(home: Path, spec_dir, instance):
    spec_dir({"toy.yaml": DRIFT_SPEC}, {"toy.csv": shifted_rows()})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, FIRST, LAST, assets=["raw", "features", "drift"]).success
    failed_weeks = warehouse_query(home, "select distinct week from toy.drift where not check_passed order by week")
    failed_weeks = [f"{w:%Y-%m-%d}" for w in failed_weeks["week"]]
    assert failed_weeks[0] == SHIFTED

    first = tick(defs, instance, None)
    requested = {(r.tags["mlplatform/drift_week"], r.partition_key) for r in first.run_requests}
    following = {SHIFTED: LAST, LAST: LAST}
    assert requested == {(week, following[week]) for week in failed_weeks}
    assert len({r.run_key for r in first.run_requests}) == len(first.run_requests)

    again = tick(defs, instance, first.cursor)
    assert again.run_requests == [] and again.cursor == first.cursor

    request = next(r for r in first.run_requests if r.tags["mlplatform/drift_week"] == SHIFTED)
    run = defs.resolve_job_def("toy_retrain").execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=QUIET,
        tags={**request.tags, SENSOR_NAME_TAG: SENSOR, RUN_KEY_TAG: request.run_key})
    assert run.success
    assert materialized_partitions(instance, ["toy", "model"]) == {LAST}
    assert materialized_partitions(instance, ["toy", "evaluation"]) == {LAST}
    assert Tracker.under(home / "mlflow").version_tags("toy", "1")["week"] == LAST

    # A passing drift check afterwards: recorded, nothing requested, the tick says why.
    assert run_weeks(defs, "toy", instance, "2024-01-15", assets=["drift"]).success
    passed = tick(defs, instance, first.cursor)
    assert passed.run_requests == [] and int(passed.cursor) > int(first.cursor)
    assert "passed" in passed.skip_reason.skip_message
    check = AssetCheckKey(AssetKey(["toy", "drift"]), "drifted_share")
    before = instance.get_latest_asset_check_evaluation_record(check).evaluation.metadata
    assert "inside or before champion v1" in before["not_compared"].value["prediction"]

    # The week the champion's training window ends with: its predictions there vs on its training window.
    assert run_weeks(defs, "toy", instance, LAST, assets=["drift"]).success
    record = instance.get_latest_asset_check_evaluation_record(check).evaluation
    prediction = record.metadata["per_feature"].value["prediction"]
    assert prediction["role"] == "prediction" and not prediction["counts"] and "prediction" not in record.metadata["not_compared"].value
    assert 0 <= prediction["p_adjusted"] <= 1 and prediction["effect"] >= 0


def test_training_data_gate_halts_training_on_a_drifted_window(home: Path, spec_dir, instance):
    # The shift starts mid-window: the 30 days before 2024-02-05 are mostly shifted, the 3-week window is mixed.
    spec = DRIFT_SPEC.replace("gates:\n  metric: rmse", "gates:\n  metric: rmse\n  training_data: {max_drifted_share: 0.3, recent_days: 10}")
    spec_dir({"toy.yaml": spec}, {"toy.csv": shifted_rows("2024-01-26")})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, FIRST, LAST, assets=["raw", "features"]).success
    assert run_weeks(defs, "toy", instance, LAST, assets=["model", "evaluation"]).success

    record = instance.get_latest_asset_check_evaluation_record(
        AssetCheckKey(AssetKey(["toy", "model"]), "training_data_drift"))
    assert record.evaluation.passed is False and record.evaluation.partition == LAST
    reason = record.evaluation.metadata["reason"].value
    assert "training halted" in reason and "x1" in reason
    assert record.evaluation.metadata["model_version"].value == "none (not trained)"
    assert materialized_partitions(instance, ["toy", "model"]) == set()
    assert Tracker.under(home / "mlflow").alias_version("toy", "champion") is None

    # The same week with the gate at its default (share 0.5, 30 days): trains, and the gate's verdict is on record.
    spec_dir({"toy.yaml": DRIFT_SPEC}, {"toy.csv": shifted_rows("2024-01-26")})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, LAST, assets=["model", "evaluation"]).success
    assert materialized_partitions(instance, ["toy", "model"]) == {LAST}

    # Switched off, the strict settings that halted the week no longer apply: it trains, with no verdict of that gate.
    spec_dir({"toy.yaml": spec.replace("recent_days: 10}", "recent_days: 10, enabled: false}")},
             {"toy.csv": shifted_rows("2024-01-26")})
    result = run_weeks(load_definitions(), "toy", instance, LAST, assets=["model", "evaluation"])
    assert result.success
    evaluated = {e.event_specific_data.check_name for e in result.all_events
                 if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert "absolute_threshold" in evaluated and "training_data_drift" not in evaluated
