"""Approvers proven by a token: with the approvers' credentials file configured, the person who promotes or rolls
back is the token's, not whatever name is typed, so typing an approver's name passes neither the approver list nor
the two-distinct-approvers rule; the UI jobs, which cannot carry a token, refuse. Real MLflow (SQLite), real DuckDB,
a real Dagster instance."""

from __future__ import annotations

import pytest

from mlplatform.cli import main
from mlplatform.lib.api_tokens import TokenFileError, token_digest
from mlplatform.lib.approver_identity import (
    APPROVER_TOKEN_ENV,
    APPROVER_TOKENS_ENV,
    Approver,
    load_approver_tokens,
    unauthenticated_warning,
)
from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, register_toy_versions, warehouse_query
from mlplatform_tests.test_approvers import FAIR, POLICIES

ALICE, DANA, ZED, MALLORY = ("alice-token-" + "a" * 20, "dana-token-" + "d" * 20, "zed-token-" + "z" * 20,
                             "mallory-token-" + "m" * 20)
ANA, BO = "ana-token-" + "x" * 20, "bo-token-" + "y" * 20


def _credentials(tmp_path, monkeypatch, entries: dict[str, object]):
    file = tmp_path / "approvers.yaml"
    lines = [f'  "{token_digest(token)}": {person}' for token, person in entries.items()]
    file.write_text("tokens:\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv(APPROVER_TOKENS_ENV, str(file))
    monkeypatch.delenv(APPROVER_TOKEN_ENV, raising=False)
    return file


def _trail(home) -> list[tuple]:
    found = warehouse_query(home, "select event, actor, version, summary, details from audit.events "
                                  "where model = 'toy' order by seq")
    return [tuple(row) for row in found.itertuples(index=False)
            if row.event in ("approval_refused", "approval_pending", "approval", "rollback")]


def test_the_credentials_file_maps_tokens_or_digests_to_one_person_and_names_the_key_when_wrong(tmp_path):
    file = tmp_path / "approvers.yaml"
    file.write_text(f'tokens:\n  "{token_digest(ALICE)}": alice\n  "{DANA}": {{name: dana, groups: [risk]}}\n')
    tokens = load_approver_tokens(file)
    assert tokens.approver_for(ALICE) == Approver("alice")
    assert tokens.approver_for(DANA) == Approver("dana", frozenset({"risk"}))
    assert tokens.approver_for("alice") is None and tokens.approver_for(None) is None
    for text, key, message in [
            ('tokens:\n  "short": alice\n', "tokens.short...", "too short to be a secret"),
            (f'tokens:\n  "{ALICE}": [alice, bob]\n', "tokens.alice-token-aaaa...", "the person's name"),
            (f'tokens:\n  "{ALICE}": alice\n  "{token_digest(ALICE)}": bob\n', "tokens.sha256:", "a token names one"),
            ("approvers: {}\n", "tokens", "expected a mapping `tokens`")]:
        file.write_text(text)
        with pytest.raises(TokenFileError, match="approvers.yaml") as error:
            load_approver_tokens(file)
        assert error.value.key.startswith(key) and message in error.value.message
    assert unauthenticated_warning(None, 1, None) is None
    assert APPROVER_TOKENS_ENV in unauthenticated_warning({"alice": "named"}, 1, "reviewed")


def test_a_typed_approver_name_is_refused_without_the_token_and_the_tokens_person_is_the_actor(
        home, spec_dir, instance, tmp_path, monkeypatch, capsys):
    spec_dir({"toy.yaml": TOY_SPEC + "policy: reviewed\n", "policies.yaml": POLICIES}, {"toy.csv": toy_rows()})
    tracker = Tracker.under(home / "mlflow")
    register_toy_versions(tracker, ["2024-01-08", "2024-01-15"])
    tracker.set_alias("toy", CHALLENGER, "1")

    # without the file: as before (a name is required), with a one-line warning that names are not authenticated
    assert main(["promote", "toy", "--version", "1"]) == 1
    assert "--by NAME: give the name of the person who decides" in capsys.readouterr().err
    assert main(["promote", "toy", "--version", "1", "--by", "alice", "--reason", "reviewed"]) == 0
    assert "approver identities are not authenticated" in capsys.readouterr().err

    _credentials(tmp_path, monkeypatch, {ALICE: "alice", DANA: "dana", MALLORY: "mallory",
                                         ZED: "{name: zed, groups: [risk]}"})
    assert main(["promote", "toy", "--version", "2", "--by", "alice", "--reason", "trust me"]) == 1
    err = capsys.readouterr().err
    assert "no approver token was given" in err and "a typed name is not enough" in err
    monkeypatch.setenv(APPROVER_TOKEN_ENV, "not-a-known-token-at-all")
    assert main(["promote", "toy", "--version", "2", "--by", "alice"]) == 1
    assert "not in the approvers' credentials file" in capsys.readouterr().err
    monkeypatch.setenv(APPROVER_TOKEN_ENV, MALLORY)  # a real person, but no approver under the policy
    assert main(["promote", "toy", "--version", "2", "--by", "alice"]) == 1
    assert "the approver token is mallory's but --by names 'alice'" in capsys.readouterr().err
    assert main(["promote", "toy", "--version", "2"]) == 1
    assert "'mallory' may not promote toy: policy 'reviewed'" in capsys.readouterr().err
    assert tracker.alias_version("toy", CHAMPION) == "1"

    monkeypatch.setenv(APPROVER_TOKEN_ENV, ZED)  # not named, but the file puts zed in the policy's group
    assert main(["promote", "toy", "--version", "2", "--reason", "reviewed"]) == 0
    assert "champion v1 -> v2 (approved by zed)" in capsys.readouterr().out
    monkeypatch.setenv(APPROVER_TOKEN_ENV, ALICE)
    assert main(["rollback", "toy", "--by", "Alice", "--reason", "v2 degrades"]) == 0  # her own name may be given
    assert "champion v2 -> v1 (rolled back by alice)" in capsys.readouterr().out

    # the UI cannot carry a token: its jobs refuse a person's move, audited, and say where to approve instead
    approve = load_definitions().resolve_job_def("toy_approve")
    refused = approve.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {
        "toy_approve_champion": {"config": {"approved_by": "alice", "reason": "from the UI", "version": "2"}}}})
    assert not refused.success and "mlplatform promote toy" in str(refused.all_events)
    rollback = load_definitions().resolve_job_def("toy_rollback")
    refused = rollback.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {
        "toy_rollback_champion": {"config": {"decided_by": "alice", "reason": "from the UI"}}}})
    assert not refused.success and "mlplatform rollback toy" in str(refused.all_events)
    assert tracker.alias_version("toy", CHAMPION) == "1"

    trail = _trail(home)
    assert [(event, actor, version) for event, actor, version, *_ in trail] == [
        ("approval", "alice", "1"), ("approval_refused", "alice (not authenticated)", "2"),
        ("approval_refused", "alice (not authenticated)", "2"), ("approval_refused", "mallory", "2"),
        ("approval_refused", "mallory", "2"), ("approval", "zed", "2"), ("rollback", "alice", "1"),
        ("approval_refused", "alice (not authenticated, Dagster UI)", "2"),
        ("approval_refused", "alice (not authenticated, Dagster UI)", None)]
    assert not any(secret in str(trail) for secret in (ALICE, MALLORY, ZED, "not-a-known-token-at-all"))
    assert main(["audit", "toy", "--verify"]) == 0


def test_one_token_cannot_make_two_distinct_approvals_under_regulated(home, spec_dir, tmp_path, monkeypatch, capsys):
    rows = toy_rows().assign(region=lambda r: ["north", "south"] * (len(r) // 2))
    spec_dir({"toy.yaml": TOY_SPEC + FAIR + "policy: regulated\n"}, {"toy.csv": rows})
    tracker = Tracker.under(home / "mlflow")
    register_toy_versions(tracker, ["2024-01-08"])
    _credentials(tmp_path, monkeypatch, {ANA: "ana", BO: "bo"})

    monkeypatch.setenv(APPROVER_TOKEN_ENV, ANA)
    assert main(["promote", "toy", "--version", "1", "--reason", "backtest reviewed"]) == 0
    assert "approval 1 of 2 recorded (ana)" in capsys.readouterr().out
    assert main(["promote", "toy", "--version", "1", "--by", "bo"]) == 1  # ana typing bo's name
    assert "the approver token is ana's but --by names 'bo'" in capsys.readouterr().err
    assert main(["promote", "toy", "--version", "1"]) == 1
    assert "ana already approved toy v1" in capsys.readouterr().err
    assert tracker.alias_version("toy", CHAMPION) is None
    monkeypatch.setenv(APPROVER_TOKEN_ENV, BO)
    assert main(["promote", "toy", "--version", "1", "--reason", "fairness reviewed"]) == 0
    assert tracker.alias_version("toy", CHAMPION) == "1"
    assert [(event, actor) for event, actor, *_ in _trail(home)] == [
        ("approval_pending", "ana"), ("approval_refused", "ana"), ("approval_refused", "ana"), ("approval", "bo")]
