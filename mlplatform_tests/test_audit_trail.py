"""One audit trail of every lifecycle event, hash-chained per model: a changed or deleted row is caught."""

from __future__ import annotations

import pytest

from mlplatform.cli import main
from mlplatform.lib.audit import AuditEvent, append_events, read_events, verify_chain
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, open_warehouse, run_weeks

pytestmark = pytest.mark.usefixtures("warehouse_backend")

MODEL_SPEC = TOY_SPEC + """
estimator:
  class: sklearn.linear_model.Ridge
gates:
  threshold: 1.0
rollout:
  approval: auto
  auto_promote: immediate  # champion at once: this test is not about the canary stage (test_canary.py)
"""


def test_a_changed_or_deleted_row_breaks_the_chain(tmp_path):
    with open_warehouse(tmp_path / "w.duckdb") as connection:
        append_events(connection, [AuditEvent("m", "gate", "run", f"gate {i}", passed=i % 2 == 0, version="1")
                                   for i in range(5)])
        append_events(connection, [AuditEvent("other", "approval", "alice", "champion -> v1", version="1")])
        assert verify_chain(read_events(connection, "m")) == []
        connection.execute("update audit.events set summary = 'gate 2 (edited)' where model = 'm' and seq = 3")
        assert any("event 3 (gate" in p and "was changed" in p for p in verify_chain(read_events(connection, "m")))
        connection.execute("update audit.events set summary = 'gate 2' where model = 'm' and seq = 3")
        connection.execute("delete from audit.events where model = 'm' and seq = 2")
        problems = verify_chain(read_events(connection, "m"))
        assert any("event 2 is missing" in p for p in problems)
        assert verify_chain(read_events(connection, "other")) == []  # one chain per model


@pytest.mark.postgres_extended
def test_a_run_leaves_every_event_type_it_causes_and_verify_catches_an_edit(home, spec_dir, instance, capsys):
    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15").success
    with open_warehouse(home / "warehouse.duckdb", read_only=True) as connection:
        events = read_events(connection, "toy")
    assert {"data_gate", "model_trained", "gate", "alias_change"} <= set(events["event"])
    trained = events[events["event"] == "model_trained"].iloc[0]
    assert trained["mlflow_run_id"] and len(trained["data_fingerprint"]) == 64 and trained["dagster_run_id"]
    assert trained["code_version"].startswith("mlplatform ")
    assert main(["audit", "toy", "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"intact ({len(events)} events" in out and "the chain is unkeyed" in out  # no key configured: said so
    assert "head anchored at event" in out  # the alias moves wrote the registry tag; the step the checkpoint

    with open_warehouse(home / "warehouse.duckdb") as connection:  # someone edits a gate verdict by hand
        connection.execute("update audit.events set passed = not passed where model = 'toy' and event = 'gate' "
                           "and seq = (select min(seq) from audit.events where event = 'gate')")
    assert main(["audit", "toy", "--verify"]) == 1
    assert "was changed after it was written" in capsys.readouterr().err

    assert main(["audit", "tyo", "--verify"]) == 1  # a typo, or a model that never ran: nothing vouches for it
    assert "no audit trail to verify" in (err := capsys.readouterr().err) and "models with a trail: toy" in err
    with open_warehouse(home / "warehouse.duckdb") as connection:  # the whole trail deleted
        connection.execute("delete from audit.events where model = 'toy'")
    assert main(["audit", "toy", "--verify"]) == 1
    assert "no audit trail to verify" in capsys.readouterr().err


def test_without_a_git_checkout_the_audit_names_the_code_version_the_image_was_built_with(tmp_path, monkeypatch):
    from mlplatform.lib import settings

    monkeypatch.setattr(settings, "REPO_DIR", tmp_path)  # an image: the package is installed, there is no .git
    monkeypatch.delenv(settings.CODE_VERSION_ENV, raising=False)
    with open_warehouse(tmp_path / "w.duckdb") as connection:
        append_events(connection, [AuditEvent("m", "approval", "alice", "champion -> v1", version="1")])
        assert settings.git_commit() is None
        monkeypatch.setenv(settings.CODE_VERSION_ENV, "mlplatform 0.1.0 @ 0123456789ab")  # the Dockerfile's form
        append_events(connection, [AuditEvent("m", "approval", "bob", "champion -> v2", version="2")])
        versions = list(read_events(connection, "m")["code_version"])
    assert versions[0].startswith("mlplatform ") and "@" not in versions[0]
    assert versions[1] == "mlplatform 0.1.0 @ 0123456789ab"
    assert settings.git_commit() == "0123456789ab"  # what a run trained in the image is tagged with (git.commit)
