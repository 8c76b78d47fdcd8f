"""``<model>/prediction_log`` shows each week of what the service answered, from the service's own log."""

from __future__ import annotations

from datetime import datetime

from dagster import AssetKey, AssetRecordsFilter

from mlplatform.lib.prediction_log import PredictionLogWriter
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks


def logged_row(i: int, when: datetime, version: str, role: str, latency: float) -> dict:
    return {"request_id": f"r{i}", "record_index": 0, "record_id": None, "time": when, "model": "toy",
            "version": version, "role": role, "entity_key": str(i), "inputs": {"x1": 1.0, "x2": 0.5, "color": "red"},
            "outputs": {"prediction": 2.5}, "score": 2.5, "label": "2.5", "latency_ms": latency}


def test_each_week_of_the_log_becomes_a_partition_with_rows_versions_roles_and_latency(home, spec_dir, instance):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    writer = PredictionLogWriter(home)
    writer.write([logged_row(i, datetime(2024, 1, 9, 12), "3", "champion", 1.0 + i) for i in range(10)])
    writer.write([logged_row(100 + i, datetime(2024, 1, 10, 8), "4", "canary", 2.0) for i in range(2)])
    writer.write([logged_row(i, datetime(2024, 1, 9, 12), "4", "shadow", 3.0) for i in range(10)])
    writer.write([logged_row(500, datetime(2024, 1, 16, 1), "3", "champion", 1.0)])
    writer.close()

    assert run_weeks(load_definitions(), "toy", instance, "2024-01-08", "2024-01-15",
                     assets=["prediction_log"]).success
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(["toy", "prediction_log"])),
                                              limit=10).records
    by_week = {r.partition_key: r.asset_materialization.metadata for r in records}
    week = by_week["2024-01-08"]
    assert week["rows"].value == 22 and week["requests"].value == 12
    assert week["versions"].value == ["3", "4"] and week["roles"].value == ["canary", "champion", "shadow"]
    assert "| v3 | champion | 10 |" in week["by_version_and_role"].value
    assert by_week["2024-01-15"]["rows"].value == 1


def test_the_training_data_gate_compares_with_logged_production_inputs_when_the_log_has_them(home, spec_dir, instance):
    from mlplatform_tests.helpers import check_record

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", "2024-01-15", assets=["raw", "features"]).success
    writer = PredictionLogWriter(home)  # production has moved far away from the training window
    writer.write([{**logged_row(i, datetime(2024, 1, 12, 8), "1", "champion", 1.0),
                   "inputs": {"x1": 9.9, "x2": 40.0 + i, "color": "blue"}} for i in range(60)])
    writer.close()
    assert run_weeks(defs, "toy", instance, "2024-01-15", assets=["model"]).success
    gate = check_record(instance, ["toy", "model"], "training_data_drift").evaluation
    assert gate.partition == "2024-01-15" and gate.passed is False
    assert "60 logged production inputs" in gate.metadata["reason"].value
