"""The prediction log in the lineage and as production inputs: what the service answered feeds drift and the
training-data gate, and each week of it shows on ``<model>/prediction_log``."""

from __future__ import annotations

from datetime import datetime

from dagster import AssetKey, AssetRecordsFilter

from mlplatform.lib.prediction_log import PredictionLogWriter
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import check_record, load_definitions, run_weeks

TYPES = {"toy": {"x1": "float64", "x2": "float64", "color": "string"}}


def logged_row(i: int, when: datetime, version: str, role: str, latency: float, **inputs) -> dict:
    return {"request_id": f"r{i}", "record_index": 0, "record_id": None, "time": when, "model": "toy",
            "version": version, "role": role, "entity_key": str(i),
            "inputs": {"x1": 1.0, "x2": 0.5, "color": "red", **inputs}, "score": 2.5, "label": "2.5",
            "probabilities": None, "latency_ms": latency}


def write_log(home, rows: list[dict]) -> None:
    writer = PredictionLogWriter(home, input_types=TYPES)
    writer.write(rows)
    writer.close()


def test_drift_judges_a_week_on_what_production_sent_and_reports_the_log_week_by_week(home, spec_dir, instance):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    write_log(home, [logged_row(i, datetime(2024, 1, 16, 12), "3", "champion", 1.0 + i, x1=9.5, x2=30.0 + i)
                     for i in range(40)]
              + [logged_row(100 + i, datetime(2024, 1, 17, 8), "4", "canary", 2.0, x1=9.5, x2=35.0) for i in range(4)]
              + [logged_row(i, datetime(2024, 1, 16, 12), "4", "shadow", 3.0) for i in range(40)])
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15",
                     assets=["raw", "features", "drift"]).success

    logs = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(["toy", "prediction_log"])),
                                           limit=10).records
    week = {r.partition_key: r.asset_materialization.metadata for r in logs}["2024-01-15"]
    assert week["rows"].value == 84 and week["requests"].value == 44
    assert week["versions"].value == ["3", "4"] and week["roles"].value == ["canary", "champion", "shadow"]
    assert "| v3 | champion | 40 |" in week["by_version_and_role"].value

    drift = {r.partition_key: r.asset_materialization.metadata for r in instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["toy", "drift"])), limit=10).records}
    assert drift["2024-01-15"]["current"].value == "44 logged production inputs of the week"  # shadow rows left out
    assert drift["2024-01-08"]["current"].value == "the features of the week"
    assert check_record(instance, ["toy", "drift"], "drifted_share").evaluation.passed is False


def test_the_training_data_gate_compares_with_logged_production_inputs_when_the_log_has_them(home, spec_dir, instance):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", "2024-01-15", assets=["raw", "features"]).success
    write_log(home, [logged_row(i, datetime(2024, 1, 12, 8), "1", "champion", 1.0, x1=9.9, x2=40.0 + i, color="blue")
                     for i in range(60)])  # production has moved far away from the training window
    assert run_weeks(defs, "toy", instance, "2024-01-15", assets=["model"]).success
    gate = check_record(instance, ["toy", "model"], "training_data_drift").evaluation
    assert gate.partition == "2024-01-15" and gate.passed is False
    assert "60 logged production inputs" in gate.metadata["reason"].value
