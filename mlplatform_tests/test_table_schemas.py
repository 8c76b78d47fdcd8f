"""Every table asset has a Pandera schema: shown as its column schema in the UI, and a bad row refused by column."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import AssetKey

from mlplatform import names
from mlplatform.defs.dbt_project import prepare_manifest
from mlplatform.lib import drift as drift_lib
from mlplatform.lib import table_schemas as ts
from mlplatform.lib.audit import AuditEvent, append_events, read_events
from mlplatform.lib.drift import ColumnDrift
from mlplatform.lib.gates import GateOutcome
from mlplatform.lib.lifecycle import WeekResult, evaluation_row
from mlplatform.lib.live import Difference, LiveEstimate, ShadowComparison
from mlplatform.lib.metrics import MetricEstimate
from mlplatform.lib.outcomes import outcome_rows
from mlplatform.lib.prediction_log import read_prediction_log, write_segments
from mlplatform.lib.source import Window
from mlplatform.lib.table_schemas import TableRefused, validate_table
from mlplatform.specs import dbt_manifest_columns, load_specs
from mlplatform.specs.loader import load_spec_file
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query

WEEK = "2024-01-08"


@pytest.fixture
def toy(tmp_path: Path):
    (tmp_path / "toy.yaml").write_text(TOY_SPEC)
    toy_rows().to_csv(tmp_path / "toy.csv", index=False)
    spec, problems = load_spec_file(tmp_path / "toy.yaml")
    assert spec is not None, problems
    return spec


def test_every_table_asset_shows_the_columns_of_its_schema_in_the_ui(home, bundled_specs):
    defs = load_definitions()
    graph = defs.resolve_asset_graph()
    specs = {s.name: s for s in load_specs(bundled_specs, dbt_manifest_columns(prepare_manifest()))}
    stages = set()
    for key in graph.get_all_asset_keys():
        model, stage = key.path
        stages.add(stage)
        metadata = graph.get(key).metadata
        if stage in ts.NOT_TABLES:
            continue
        assert "dagster/column_schema" in metadata, key.to_user_string()
        shown = [c.name for c in metadata["dagster/column_schema"].columns]
        if stage in ts.SCHEMAS_BY_ASSET:
            spec = specs[model]
            expected = list(ts.SCHEMAS_BY_ASSET[stage](spec).columns)
            assert shown[:len(expected)] == expected, key.to_user_string()  # staged: dbt's own columns follow
    # a new kind of asset must come with a schema (or be declared not a table)
    assert stages <= set(ts.SCHEMAS_BY_ASSET) | {names.FEATURES} | ts.NOT_TABLES
    assert {names.RAW, names.STAGED, names.FEATURES, names.DRIFT, names.PREDICTION_LOG} <= stages
    predictions = graph.get(AssetKey(["bike_demand", names.EVALUATION])).metadata["predictions_column_schema"]
    assert "predicted_label" in [c.name for c in predictions.schema.columns]


def _refused(frame: pd.DataFrame, schema, table: str = "t.table") -> TableRefused:
    with pytest.raises(TableRefused) as refused:
        validate_table(frame, schema, table)
    return refused.value


def _drift_rows() -> pd.DataFrame:
    columns = [ColumnDrift("x1", "K-S permutation", 0.01, 0.05, True, statistic=0.4, p_value=0.001, p_adjusted=0.01,
                           effect=0.4),
               ColumnDrift("prediction", drift_lib.WASSERSTEIN, 0.02, 0.1, False, role=drift_lib.PREDICTION,
                           counts=False)]
    rows = pd.DataFrame([{**c.as_dict(), "week": pd.Timestamp(WEEK), "drifted_share": 0.5, "check_passed": False,
                          "decided_by": "calibrated"} for c in columns])
    return rows.astype({"statistic": "float64", "p_value": "float64", "p_adjusted": "float64", "effect": "float64"})


def _live_rows() -> pd.DataFrame:
    estimates = [LiveEstimate("3", "champion", 40, "rmse", MetricEstimate(1.0, 0.8, 1.2)),
                 LiveEstimate("4", "shadow", 40, "rmse", None)]
    rows = pd.DataFrame([{**e.row(WEEK), "evaluation_value": 0.9, "judged": e.role == "champion",
                          "passed": True if e.role == "champion" else None} for e in estimates])
    return rows.astype({"evaluation_value": "float64", "judged": "bool", "passed": "boolean"})


def _shadow_rows() -> pd.DataFrame:
    labelled = Difference("rmse", 1.1, 1.0, 0.1, -0.2, 0.4, 40, 40)
    return pd.DataFrame([ShadowComparison("3", "4", 40, 0.9, 0.05, labelled).row(WEEK),
                         ShadowComparison("3", "5", 10, 1.0, 0.0, None).row(WEEK)])


def _labels_rows(spec) -> pd.DataFrame:
    frame = toy_rows(weeks=1, per_week=5).assign(ts=lambda f: pd.to_datetime(f["ts"]))
    outcomes = outcome_rows(frame, spec.source.key, spec.target, spec.time_column)
    return outcomes.assign(week=pd.Timestamp(WEEK), y=outcomes["y"].astype(str))


def _evaluation_rows(spec) -> pd.DataFrame:
    gates = [GateOutcome(g, True, "ok") for g in ("absolute_threshold", "beat_champion", "prediction_sanity")]
    result = WeekResult(WEEK, "3", "run", "0", Window(datetime(2024, 1, 1), datetime(2024, 1, 8)), 40, 40, "abc",
                        {"rmse": MetricEstimate(1.0, 0.9, 1.1)}, gates, pd.DataFrame(), {})
    return evaluation_row(spec, result)


def _prediction_rows(spec) -> pd.DataFrame:
    return pd.DataFrame({"week": pd.Timestamp(WEEK), "ts": pd.date_range(WEEK, periods=3, freq="h"), "id": [1, 2, 3],
                         "actual": [1.0, 2.0, 3.0], "prediction": [1.1, 2.1, 2.9], "predicted_label": ["1.1", "2.1", "2.9"],
                         "model_version": "3"})


def _backtest_rows(spec) -> pd.DataFrame:
    return pd.DataFrame({"week": pd.to_datetime([WEEK, "2024-01-15"]), "model_version": ["1", "2"],
                         "value": [1.0, 1.1], "ci_low": [0.9, 1.0], "ci_high": [1.1, 1.2], "threshold_ok": [True, True],
                         "champion_ok": [True, False], "sanity_ok": [True, True], "aliases_set": ["champion", ""]})


def _dataset_rows(spec) -> pd.DataFrame:
    return toy_rows(weeks=1, per_week=5).assign(ts=lambda f: pd.to_datetime(f["ts"]))


def _set(column: str, value):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame[column] = frame[column].astype(object)
        frame.loc[frame.index[-1], column] = value
        return frame
    return change


# (schema, good rows, the bad change, the column that must be named)
CASES = {
    "raw: text in a numeric column": (ts.raw_schema, _dataset_rows, _set("x1", "12,5"), "x1"),
    "staged: a row without event time": (ts.staged_schema, _dataset_rows, _set("ts", None), "ts"),
    "predictions: no predicted label": (ts.predictions_schema, _prediction_rows, _set("predicted_label", None),
                                        "predicted_label"),
    "evaluations: a gate verdict that is not a boolean": (ts.evaluations_schema, _evaluation_rows,
                                                          _set("gate_prediction_sanity", "yes"), "gate_prediction_sanity"),
    "backtest: a week without a version": (ts.backtest_schema, _backtest_rows, _set("model_version", None),
                                           "model_version"),
    "drift: a p-value above 1": (ts.drift_schema, lambda spec: _drift_rows(), _set("p_value", 1.5), "p_value"),
    "labels: an outcome without event time": (ts.labels_schema, _labels_rows, _set("time", None), "time"),
    "live performance: an unknown role": (ts.live_performance_schema, lambda spec: _live_rows(), _set("role", "boss"),
                                          "role"),
    "shadow: an agreement above 100%": (ts.shadow_schema, lambda spec: _shadow_rows(), _set("agreement", 1.3),
                                        "agreement"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_row_is_refused_naming_the_table_the_column_and_the_row(toy, case):
    build, rows, change, column = CASES[case]
    schema = build(toy)
    good = rows(toy)
    assert validate_table(good.copy(), schema, "toy.table") is not None  # the producer's own rows pass
    refused = _refused(change(good), schema, "toy.table")
    assert refused.columns == [column]
    assert str(refused).startswith("toy.table: refused by its schema: column ")
    assert f"'{column}'" in str(refused) and f"rows {len(good) - 1}:" in str(refused)  # the last row is the bad one


def test_a_missing_column_is_named_and_columns_the_spec_does_not_know_are_kept(toy):
    evaluation = _evaluation_rows(toy)
    assert _refused(evaluation.drop(columns=["metrics_json"]), ts.evaluations_schema(toy)).columns == ["metrics_json"]
    raw = _dataset_rows(toy).assign(comment="free text")  # a source column the spec does not name
    assert "comment" in validate_table(raw, ts.raw_schema(toy), "toy.raw").columns


def test_every_failing_column_is_reported_at_once(toy):
    bad = _set("agreement", 2.0)(_set("pairs", -1)(_shadow_rows()))
    assert _refused(bad, ts.shadow_schema(toy)).columns == ["agreement", "pairs"]


def test_drift_roles_spelled_in_the_schema_are_the_drift_modules():
    assert set(ts.DRIFT_ROLES) == {drift_lib.FEATURE, drift_lib.PREDICTION, drift_lib.LABEL}


def _log_row(i: int, role: str = "champion", **changes) -> dict:
    return {"request_id": f"r{i}", "record_index": 0, "record_id": None, "time": datetime(2024, 1, 10, 12),
            "model": "toy", "version": "3", "role": role, "entity_key": str(i),
            "inputs": {"x1": 1.0, "x2": 0.5, "color": "red"}, "score": 2.5, "label": "2.5", "probabilities": None,
            "latency_ms": 1.0, **changes}


def test_the_prediction_log_as_written_by_the_service_passes_and_a_bad_row_is_named(toy, tmp_path):
    root = tmp_path / "prediction_log"
    types = {"toy": {"x1": "float64", "x2": "float64", "color": "string"}}
    write_segments(root, [_log_row(i) for i in range(3)] + [_log_row(3, "shadow")], types)
    logged = read_prediction_log(tmp_path, "toy")
    validate_table(logged, ts.prediction_log_schema(toy), "log")
    write_segments(root, [_log_row(9, "bogus", latency_ms=-2.0)], types)
    refused = _refused(read_prediction_log(tmp_path, "toy"), ts.prediction_log_schema(toy))
    assert refused.columns == ["latency_ms", "role"]


def test_an_audit_event_that_breaks_the_trail_schema_is_refused_and_the_chain_keeps_its_rows():
    connection = duckdb.connect()
    append_events(connection, [AuditEvent("toy", "approval", "ana", "v1 approved", version="1")])
    with pytest.raises(TableRefused) as refused:
        append_events(connection, [AuditEvent("toy", "approval", None, "no actor", version="1")])  # type: ignore[arg-type]
    assert refused.value.columns == ["actor"] and "audit.events" in str(refused.value)
    events = read_events(connection, "toy")
    assert list(events["summary"]) == ["v1 approved"]
    validate_table(events, ts.audit_events_schema(), "audit.events")  # as stored, read back: still the schema


def test_the_column_facts_say_type_nullability_and_rules(toy):
    facts = {c["name"]: c for c in ts.describe_columns(ts.shadow_schema(toy))}
    assert facts["agreement"]["type"] == "number" and not facts["agreement"]["nullable"]
    assert "value >= 0 and <= 1" in facts["agreement"]["constraints"]
    assert facts["metric"]["nullable"] is True
    log = {c["name"]: c for c in ts.describe_columns(ts.prediction_log_schema(toy))}
    assert log["color"]["type"] == "text" and "optional column" in log["color"]["constraints"]


@pytest.mark.slow
def test_the_drift_step_refuses_a_prediction_log_row_that_breaks_its_schema_and_writes_nothing(home, spec_dir, instance):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    write_segments(home / "prediction_log", [_log_row(i) for i in range(5)] + [_log_row(5, "bogus")],
                   {"toy": {"x1": "float64", "x2": "float64", "color": "string"}})
    result = run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-08",
                       assets=["raw", "features", "drift"])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.event_specific_data.error
    message = error.cause.message if error.cause else error.message  # the step's own error, under Dagster's wrapper
    assert "prediction log" in message and "column 'role'" in message and "bogus" in message
    tables = warehouse_query(home, "select table_name from information_schema.tables where table_schema = 'toy'")
    assert "drift" not in set(tables["table_name"])  # nothing of the weeks' drift was written
    assert {"raw", "features"} <= set(tables["table_name"])  # the steps before it wrote theirs
