"""Promotion owns every alias move: audit row and move are one unit, in runs as in `promote`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey

from mlplatform.lib import promotion
from mlplatform.lib.audit import alias_history
from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import (
    load_definitions,
    open_warehouse,
    register_failed_toy_version,
    register_toy_versions,
    run_weeks,
    skip_on_postgres,
    toy_pipeline,
    warehouse_query,
)

pytestmark = pytest.mark.usefixtures("warehouse_backend")

MODEL_SPEC = TOY_SPEC.replace("end: 2024-01-22", "end: 2024-01-29") + """
estimator:
  class: sklearn.linear_model.Ridge
gates:
  threshold: 1.0
  training_data: {enabled: false}
rollout:
  approval: auto
  auto_promote: immediate  # these tests are about audited alias moves, not the canary stage (test_canary.py)
"""


def test_a_failed_alias_move_puts_back_the_aliases_already_moved_and_writes_no_audit_row(home):
    tracker = Tracker.under(home / "mlflow")
    register_toy_versions(tracker, ["2024-01-08"])
    changes, _ = promotion.gate_changes("toy", "1", True, "2024-01-08", "test", "auto", {}, {})
    changes[1].version = "99"  # the registry refuses the champion move: no such version
    home.mkdir(parents=True, exist_ok=True)
    with open_warehouse(home / "warehouse.duckdb") as connection:
        with pytest.raises(Exception, match="99"):
            promotion.commit_changes(connection, tracker, changes)
        assert alias_history(connection, "toy").empty
    assert tracker.alias_version("toy", CHALLENGER) is None  # moved first, then put back
    assert tracker.alias_version("toy", CHAMPION) is None


def test_champion_of_a_week_is_the_last_champion_trained_for_that_week_or_before(home):
    tracker = Tracker.under(home / "mlflow")
    register_toy_versions(tracker, ["2024-01-08", "2024-01-15", "2024-01-22"])
    home.mkdir(parents=True, exist_ok=True)
    with open_warehouse(home / "warehouse.duckdb") as connection:
        for version in ("1", "2", "3"):
            change = promotion.approval_change(tracker, "toy", version, "alice", "step by step")
            promotion.commit_changes(connection, tracker, [change])
        assert promotion.champion_as_of(connection, tracker, "toy", "2024-01-29") == "3"  # the current one
        assert promotion.champion_as_of(connection, tracker, "toy", "2024-01-15") == "2"  # a re-run of history
        assert promotion.champion_as_of(connection, tracker, "toy", "2024-01-01") is None  # none trained before


HOLDER = textwrap.dedent("""
    import duckdb, sqlite3, sys, time
    warehouse, mlflow_db, versions, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    while True:  # wait until the run has registered `versions` versions: its week is being recorded
        try:
            if sqlite3.connect(mlflow_db).execute("select count(*) from model_versions").fetchone()[0] >= versions:
                break
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    while True:  # then take the warehouse as a reader would, as soon as the run lets go of it
        try:
            connection = duckdb.connect(warehouse, read_only=True)
            break
        except duckdb.IOException:
            time.sleep(0.01)
    print("holding", flush=True)
    time.sleep(seconds)
""")


def _aliases_match_their_last_audit_rows(home: Path, tracker: Tracker) -> None:
    audit = warehouse_query(home, "select alias, version from audit.alias_changes where model = 'toy' "
                                  "order by changed_at")
    for alias in (CHALLENGER, CHAMPION):
        audited = audit[audit["alias"] == alias]["version"].tolist()
        assert tracker.alias_version("toy", alias) == (audited[-1] if audited else None), alias


@pytest.mark.slow
def test_a_reader_holding_the_warehouse_during_a_run_never_leaves_an_alias_move_unaudited(
        home, spec_dir, instance, monkeypatch):
    skip_on_postgres("a reader holding the file's lock")
    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows(weeks=4)})
    monkeypatch.setenv("MLPLATFORM_WAREHOUSE_WAIT_SECONDS", "1")
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", "2024-01-15", assets=["raw", "features"]).success
    assert run_weeks(defs, "toy", instance, "2024-01-22", assets=["raw", "features"]).success
    tracker = Tracker.under(home / "mlflow")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home / "warehouse.duckdb"),
                               str(home / "mlflow" / "mlflow.db"), "1", "30"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ})
    try:
        # Week 2024-01-08 is recorded; the reader then holds the file longer than the run waits (1 s):
        # recording 2024-01-15 fails before anything of that week moves.
        failed = run_weeks(defs, "toy", instance, "2024-01-08", "2024-01-15", assets=["model", "evaluation"])
        assert holder.stdout.readline().strip() == "holding"
    finally:
        holder.kill()
        holder.wait()
    assert not failed.success
    assert "stayed locked by another process" in str(failed.all_events)
    assert tracker.alias_version("toy", CHAMPION) == "1"
    _aliases_match_their_last_audit_rows(home, tracker)

    # With a run willing to wait longer than the reader holds, the run waits and succeeds.
    monkeypatch.setenv("MLPLATFORM_WAREHOUSE_WAIT_SECONDS", "120")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home / "warehouse.duckdb"),
                               str(home / "mlflow" / "mlflow.db"), "2", "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert run_weeks(load_definitions(), "toy", instance, "2024-01-15", "2024-01-22",
                         assets=["model", "evaluation"]).success
    finally:
        holder.kill()
        holder.wait()
    assert tracker.alias_version("toy", CHAMPION) == "3"
    _aliases_match_their_last_audit_rows(home, tracker)
    evaluated = warehouse_query(home, "select strftime(week, '%Y-%m-%d') as week from toy.evaluations order by week")
    assert evaluated["week"].tolist() == ["2024-01-08", "2024-01-15", "2024-01-22"]


def test_check_history_adapter_reads_every_weeks_drift_check_from_a_real_instance(home, spec_dir, instance):
    """The one non-public Dagster read the sensor relies on: a Dagster upgrade that breaks it fails here."""
    from mlplatform.defs.check_history import check_executions

    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows(weeks=3)})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15",
                     assets=["raw", "features", "drift"]).success
    key = AssetCheckKey(AssetKey(["toy", "drift"]), "drifted_share")
    records = check_executions(instance, key, after=0)
    assert [r.week for r in records] == ["2024-01-08", "2024-01-15"]  # the first week has no reference
    assert all(r.passed is not None for r in records)
    assert [r.record_id for r in records] == sorted(r.record_id for r in records)
    latest = instance.get_latest_asset_check_evaluation_record(key)
    assert records[-1].passed == latest.evaluation.passed
    assert check_executions(instance, key, after=records[0].record_id) == records[1:]


def test_rollback_puts_the_previous_champion_back_audited_and_refuses_a_version_never_champion(home, capsys):
    from mlplatform.cli import main

    tracker = Tracker.under(home / "mlflow")
    register_toy_versions(tracker, ["2024-01-08", "2024-01-15"])
    register_failed_toy_version(tracker, "2024-01-22")
    assert main(["promote", "toy", "--version", "1", "--by", "alice"]) == 0
    assert main(["promote", "toy", "--version", "2", "--by", "alice"]) == 0
    assert main(["rollback", "toy", "--to", "3", "--by", "bob"]) == 1  # v3 never held champion: that is a promotion
    err = capsys.readouterr().err
    assert "v3 was never champion" in err and "use `mlplatform promote toy --version 3`" in err
    assert tracker.alias_version("toy", CHAMPION) == "2"
    assert main(["rollback", "toy", "--by", "", "--reason", "x"]) == 1
    assert main(["rollback", "toy", "--by", "bob", "--reason", "live metric fell"]) == 0  # the champion before v2
    assert "champion v2 -> v1 (rolled back by bob)" in capsys.readouterr().out
    assert tracker.alias_version("toy", CHAMPION) == "1"
    audit = warehouse_query(home, "select alias, version, previous_version, actor, reason from audit.alias_changes "
                                  "order by changed_at")
    assert audit.iloc[-1].tolist() == ["champion", "1", "2", "bob", "rollback from v2: live metric fell"]
    assert main(["rollback", "toy", "--by", "bob"]) == 0  # and back again: the previous champion is now v2
    assert tracker.alias_version("toy", CHAMPION) == "2"


def test_the_check_and_a_person_roll_back_to_the_same_version_past_a_forced_champion(home, capsys):
    """v1 a gated champion, v2 forced in with `promote --force`, v3 champion now: the version a rollback returns to
    is the newest earlier champion that may be served (v1), whether the live_degradation check picks it (what the
    decay sensor then carries out) or a person runs `mlplatform rollback` without --to."""
    from mlplatform.cli import main
    from mlplatform.lib import live
    from mlplatform.lib.routing import CHAMPION_ROLE

    tracker = Tracker.under(home / "mlflow")
    register_toy_versions(tracker, ["2024-01-08"])
    register_failed_toy_version(tracker, "2024-01-15")
    register_toy_versions(tracker, ["2024-01-22"])
    assert main(["promote", "toy", "--version", "1", "--by", "alice"]) == 0
    assert main(["promote", "toy", "--version", "2", "--by", "alice", "--force"]) == 0
    assert main(["promote", "toy", "--version", "3", "--by", "alice"]) == 0
    with open_warehouse(home / "warehouse.duckdb") as connection:
        target = promotion.rollback_target(connection, tracker, "toy", "3")
    assert target.version == "1"
    assert len(target.passed_over) == 1 and "v2 did not pass every gate" in target.passed_over[0]

    # the check: v3 degraded, and v1 scores better on the rows v3 answered -> its metadata names v1 for the sensor
    rows = toy_rows().head(60)
    matched = rows.assign(role=CHAMPION_ROLE, version="3", score=rows["y"] + 5.0, probabilities=None)
    decision = live.judge_rollback("regression", "rmse", matched, "3", "3", target.version, target.passed_over,
                                   ["x1", "x2"], lambda version, inputs: rows.loc[inputs.index, "y"].to_numpy())
    assert decision.metadata()["rollback_to"] == "1"

    capsys.readouterr()
    assert main(["rollback", "toy", "--by", "bob", "--reason", "live metric fell"]) == 0  # a person: the same v1
    assert "champion v3 -> v1" in capsys.readouterr().out
    assert tracker.alias_version("toy", CHAMPION) == decision.target == "1"
    assert main(["rollback", "toy", "--to", "2", "--by", "bob"]) == 1  # an earlier champion, but forced: refused
    assert "v2 did not pass every gate" in capsys.readouterr().err
    assert tracker.alias_version("toy", CHAMPION) == "1"


def test_approve_and_rollback_from_the_ui_jobs_write_the_same_audit_rows_as_the_cli(home, spec_dir, instance, capsys):
    from mlplatform.cli import main

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    tracker = Tracker.under(home / "mlflow")
    register_toy_versions(tracker, ["2024-01-08", "2024-01-15"])
    register_failed_toy_version(tracker, "2024-01-22")
    defs = load_definitions()
    approve, rollback = defs.resolve_job_def("toy_approve"), defs.resolve_job_def("toy_rollback")

    def run(job, op: str, **config):
        return job.execute_in_process(instance=instance, raise_on_error=False,
                                      run_config={"ops": {op: {"config": config}}})

    assert run(approve, "toy_approve_champion", approved_by="alice", reason="reviewed", version="1").success
    refused = run(approve, "toy_approve_champion", approved_by="alice", reason="x", version="3")
    assert not refused.success
    assert "v3 did not pass every gate" in str(refused.all_events)
    assert main(["promote", "toy", "--version", "2", "--by", "alice", "--reason", "reviewed"]) == 0
    assert run(rollback, "toy_rollback_champion", decided_by="bob", reason="live metric fell").success
    assert tracker.alias_version("toy", CHAMPION) == "1"
    assert not run(rollback, "toy_rollback_champion", decided_by="bob", reason="x", to_version="3").success
    assert main(["rollback", "toy", "--by", "bob", "--reason", "live metric fell"]) == 0
    audit = warehouse_query(home, "select alias, version, previous_version, actor, reason from audit.alias_changes "
                                  "order by changed_at")
    assert [tuple(row) for row in audit.itertuples(index=False)] == [
        ("champion", "1", None, "alice", "reviewed"),
        ("champion", "2", "1", "alice", "reviewed"),
        ("champion", "1", "2", "bob", "rollback from v2: live metric fell"),
        ("champion", "2", "1", "bob", "rollback from v1: live metric fell"),
    ]


def test_a_forced_approval_tags_the_version_so_the_one_servability_rule_serves_it_and_a_failed_move_leaves_no_tag(
        home):
    from mlplatform.lib.servability import FORCED_BY_TAG, servability

    tracker = Tracker.under(home / "mlflow")
    register_toy_versions(tracker, ["2024-01-08"])
    tracker.log_trained_model("toy", "toy-bad", *toy_pipeline(), {"seed": 0}, {"rmse": 9.9}, {}, {},
                              {"gates": "failed", "gate.threshold": "failed", "gate.sanity": "passed",
                               "week": "2024-01-15"})
    assert servability(tracker.version_tags("toy", "1")).servable
    refused = servability(tracker.version_tags("toy", "2"))
    assert not refused.servable and refused.failed_gates == ("threshold",) and "no person forced it" in refused.why_not
    with pytest.raises(promotion.PromotionRefused, match=r"v2 did not pass every gate \(gates=failed \(threshold\)\)"):
        promotion.approval_change(tracker, "toy", "2", "carol", "incident")

    forced = promotion.approval_change(tracker, "toy", "2", "carol", "incident", force=True)
    assert forced.forced == "gates=failed (threshold)"
    assert forced.reason == "incident [forced with --force: gates=failed (threshold)]"
    home.mkdir(parents=True, exist_ok=True)
    with open_warehouse(home / "warehouse.duckdb") as connection:
        unmovable = promotion.AliasChange("toy", CHALLENGER, "99", None, "carol", "x", None)  # no such version
        with pytest.raises(Exception, match="99"):
            promotion.commit_changes(connection, tracker, [forced, unmovable])
        assert FORCED_BY_TAG not in tracker.version_tags("toy", "2")  # the unit failed: no tag, no alias, no row
        assert tracker.alias_version("toy", CHAMPION) is None and alias_history(connection, "toy").empty

        promotion.commit_changes(connection, tracker, [forced])
        served = servability(tracker.version_tags("toy", "2"))
        assert served.servable and served.forced_by == "carol" and served.forced_reason == "incident"
        assert alias_history(connection, "toy")["version"].tolist() == ["2"]

        promotion.commit_changes(connection, tracker, [promotion.approval_change(tracker, "toy", "1", "dan", None)])
        with pytest.raises(promotion.PromotionRefused, match="without --force"):  # an old force waives nothing
            promotion.approval_change(tracker, "toy", "2", "dan", "again")
