"""Who may approve: a policy's approvers (names and groups) are the only people whose promote or rollback moves the
champion, from the CLI and from the UI jobs, and every refusal is in the audit trail; under ``regulated`` two
distinct people approve before a version becomes champion. Real MLflow (SQLite), real DuckDB, a real Dagster
instance."""

from __future__ import annotations

import json

import pytest

from mlplatform.cli import main
from mlplatform.lib.approvals import APPROVALS_TAG, ApprovalRule
from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
from mlplatform.specs.policies import PolicyFileError, load_policies
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, warehouse_query
from mlplatform_tests.test_policies import problems_of, write
from mlplatform_tests.test_promotion import _register

POLICIES = """
groups:
  risk: [dana, Erin]
policies:
  reviewed:
    approvers: [alice]
    approver_groups: [risk]
"""
FAIR = "fairness:\n  sensitive: [region]\n"


def _events(home, kinds: tuple[str, ...]) -> list[tuple]:
    found = warehouse_query(home, "select event, actor, version, summary from audit.events where model = 'toy' "
                                  "order by seq")
    return [tuple(row) for row in found.itertuples(index=False) if row.event in kinds]


def test_the_rule_names_who_may_approve_from_names_and_groups_case_blind(tmp_path, monkeypatch):
    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    file = tmp_path / "policies.yaml"
    file.write_text(POLICIES)
    policies, _ = load_policies(file)
    rule = ApprovalRule.of(policies["reviewed"])
    assert rule.refusal("toy", "Alice", "promote") is None and rule.refusal("toy", "erin ", "promote") is None
    refusal = rule.refusal("toy", "mallory", "promote")
    assert "'mallory' may not promote toy: policy 'reviewed'" in refusal and "alice, dana, erin" in refusal
    assert ApprovalRule.of(None).refusal("toy", "anyone", "promote") is None
    # the built-in regulated needs two approvers; naming its approvers in the file keeps its gates mandatory
    assert policies["regulated"].required_approvals == 2
    file.write_text("policies:\n  regulated: {approvers: [ana, bo]}\n")
    regulated = load_policies(file)[0]["regulated"]
    assert regulated.require_fairness and regulated.required_approvals == 2 and ApprovalRule.of(regulated).allowed
    # the groups may come from a directory export instead; an unknown group is refused naming the key
    groups = tmp_path / "groups.yaml"
    groups.write_text("risk: [zoe]\n")
    monkeypatch.setenv("MLPLATFORM_APPROVER_GROUPS", str(groups))
    file.write_text(POLICIES)
    assert ApprovalRule.of(load_policies(file)[0]["reviewed"]).allowed == {"alice": "named", "zoe": "group risk"}
    file.write_text("policies:\n  reviewed: {approver_groups: [risc]}\n")
    with pytest.raises(PolicyFileError, match=r"policies.reviewed.approver_groups: found 'risc'; defined groups: risk"):
        load_policies(file)
    # two approvers and an automatic promotion cannot both hold: refused at load, naming the key
    folder = write(tmp_path / "specs", {"policies.yaml": "policies:\n  pair: {required_approvals: 2}\n",
                                        "auto.yaml": TOY_SPEC.replace("name: toy", "name: auto")
                                        + "policy: pair\nrollout: {approval: auto}\n"})
    [(spec_file, key, message)] = problems_of(folder)
    assert (spec_file, key) == ("auto.yaml", "rollout.approval") and "requires 2 distinct approvers" in message


def test_a_non_approvers_promote_and_rollback_are_refused_and_audited_from_the_cli_and_the_ui_job(
        home, spec_dir, instance, capsys):
    folder = spec_dir({"toy.yaml": TOY_SPEC + "policy: reviewed\n", "policies.yaml": POLICIES},
                      {"toy.csv": toy_rows()})
    assert (folder / "policies.yaml").exists()
    tracker = Tracker.under(home / "mlflow")
    _register(tracker, ["2024-01-08", "2024-01-15"])
    tracker.set_alias("toy", CHALLENGER, "1")

    assert main(["promote", "toy", "--by", "mallory", "--reason", "looks fine to me"]) == 1
    err = capsys.readouterr().err
    assert "'mallory' may not promote toy: policy 'reviewed'" in err and "recorded in the audit trail" in err
    assert tracker.alias_version("toy", CHAMPION) is None
    assert main(["promote", "toy", "--by", "dana", "--reason", "reviewed"]) == 0  # a member of the group
    assert tracker.alias_version("toy", CHAMPION) == "1"
    assert main(["promote", "toy", "--version", "2", "--by", "alice", "--reason", "reviewed"]) == 0
    assert main(["rollback", "toy", "--by", "mallory", "--reason", "I prefer v1"]) == 1
    assert "'mallory' may not roll back toy" in capsys.readouterr().err
    assert tracker.alias_version("toy", CHAMPION) == "2"

    approve = load_definitions().resolve_job_def("toy_approve")
    refused = approve.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {
        "toy_approve_champion": {"config": {"approved_by": "mallory", "reason": "from the UI", "version": "1"}}}})
    assert not refused.success and "'mallory' may not promote toy" in str(refused.all_events)
    assert tracker.alias_version("toy", CHAMPION) == "2"

    refusals = _events(home, ("approval_refused",))
    assert [(event, actor, version) for event, actor, version, _ in refusals] == [
        ("approval_refused", "mallory", None), ("approval_refused", "mallory", None),
        ("approval_refused", "mallory", "1")]
    assert "promote of the challenger refused" in refusals[0][3] and "roll back of the previous champion" in \
        refusals[1][3]
    assert main(["audit", "toy", "--verify"]) == 0  # the refusals are links of the chain like every event


def test_regulated_needs_two_distinct_approvers_the_first_waits_the_same_person_twice_does_not_count(
        home, spec_dir, capsys):
    rows = toy_rows().assign(region=lambda r: ["north", "south"] * (len(r) // 2))
    spec_dir({"toy.yaml": TOY_SPEC + FAIR + "policy: regulated\n"}, {"toy.csv": rows})
    tracker = Tracker.under(home / "mlflow")
    _register(tracker, ["2024-01-08", "2024-01-15"])

    assert main(["promote", "toy", "--version", "1", "--by", "ana", "--reason", "backtest reviewed"]) == 0
    assert "approval 1 of 2 recorded (ana)" in capsys.readouterr().out
    assert tracker.alias_version("toy", CHAMPION) is None  # it waits
    assert "ana at " in tracker.version_tags("toy", "1")[APPROVALS_TAG]
    assert main(["promote", "toy", "--version", "1", "--by", " ANA", "--reason", "again"]) == 1
    assert "ANA already approved toy v1; policy 'regulated' needs 2 distinct approvers" in capsys.readouterr().err
    assert tracker.alias_version("toy", CHAMPION) is None
    assert main(["promote", "toy", "--version", "1", "--by", "bo", "--reason", "fairness reviewed"]) == 0
    assert "champion v- -> v1 (approved by bo)" in capsys.readouterr().out
    assert tracker.alias_version("toy", CHAMPION) == "1"
    tag = tracker.version_tags("toy", "1")[APPROVALS_TAG]
    assert tag.startswith("ana at ") and "; bo at " in tag

    assert main(["promote", "toy", "--version", "2", "--by", "bo"]) == 0  # a new version starts over
    assert tracker.alias_version("toy", CHAMPION) == "1"
    trail = _events(home, ("approval_pending", "approval_refused", "approval"))
    assert [(event, actor, version) for event, actor, version, _ in trail] == [
        ("approval_pending", "ana", "1"), ("approval_refused", "ANA", "1"), ("approval", "bo", "1"),
        ("approval_pending", "bo", "2")]
    assert "approvals 2 of 2: ana, bo" in trail[2][3]
    history = warehouse_query(home, "select version, actor, reason from audit.alias_changes where model = 'toy'")
    assert [tuple(r) for r in history.itertuples(index=False)] == [
        ("1", "bo", "fairness reviewed [approvals 2 of 2: ana, bo]")]
    details = warehouse_query(home, "select details from audit.events where event = 'approval_pending' order by seq")
    assert json.loads(details["details"][0])["approvals"] == ["ana"]
