"""`<model>/audit_trail` in the UI: reported by the steps and jobs that write audit events, with the latest
events, the counts per event type and the hash chain's verification, on a real Dagster instance."""

from __future__ import annotations

import duckdb
from dagster import AssetKey, DagsterInstance

from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query

MODEL_SPEC = TOY_SPEC + """
estimator:
  class: sklearn.linear_model.Ridge
gates:
  threshold: 1.0
  training_data: {enabled: false}
rollout:
  approval: manual
"""
KEY = AssetKey(["toy", "audit_trail"])


def _latest(instance: DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(KEY)
    assert event is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_the_audit_trail_asset_follows_runs_and_approvals_and_shows_a_broken_chain(home, spec_dir, instance):
    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    defs = load_definitions()
    assert KEY in {spec.key for spec in defs.resolve_all_asset_specs()}
    assert run_weeks(defs, "toy", instance, "2024-01-01", "2024-01-15").success  # the whole lifecycle job
    shown = _latest(instance)
    events = warehouse_query(home, "select event, count(*) as n from audit.events where model = 'toy' group by event")
    assert shown["events"] == int(events["n"].sum())
    assert shown["chain_intact"] is True and shown["chain_problems"] == []
    assert "hash chain verified" in shown["chain_verification"]
    for event, count in zip(events["event"], events["n"], strict=True):
        assert f"| {event} | {count} |" in shown["counts_per_event"]
    assert "model_trained" in shown["latest_events"] and "alias_change" in shown["latest_events"]

    approve = defs.resolve_job_def("toy_approve")
    assert approve.execute_in_process(instance=instance, run_config={"ops": {"toy_approve_champion": {"config": {
        "approved_by": "alice", "reason": "reviewed", "version": "1"}}}}).success
    shown = _latest(instance)
    assert shown["events"] == int(events["n"].sum()) + 1 and "| approval | 1 |" in shown["counts_per_event"]
    assert shown["latest_events"].splitlines()[2].split(" | ")[2] == "approval"  # newest first

    with duckdb.connect(str(home / "warehouse.duckdb")) as connection:  # someone edits a row behind the platform
        connection.execute("update audit.events set actor = 'mallory' where model = 'toy' and seq = 2")
    assert run_weeks(defs, "toy", instance, "2024-01-15", assets=["raw", "features", "drift"]).success
    shown = _latest(instance)
    assert shown["chain_intact"] is False
    assert any(problem.startswith("event 2 ") and "was changed" in problem for problem in shown["chain_problems"])
    assert shown["chain_verification"].startswith("BROKEN")


def test_a_data_gate_that_stops_the_run_still_reports_the_trail(home, spec_dir, instance):
    rows = toy_rows()
    rows["x1"] = rows["x1"].astype(str)
    rows.loc[3, "x1"] = "not a number"
    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": rows})
    assert not run_weeks(load_definitions(), "toy", instance, "2024-01-01").success  # source_contract fails
    shown = _latest(instance)
    assert shown["events"] == 1 and shown["chain_intact"] is True
    assert "| data_gate | 1 |" in shown["counts_per_event"] and "source_contract" in shown["latest_events"]
