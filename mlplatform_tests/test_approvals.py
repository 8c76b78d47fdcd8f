"""A person's champion move, the one workflow behind `mlplatform promote`/`rollback` and the UI's jobs."""

from __future__ import annotations

import duckdb
import pytest

from mlplatform.lib import approvals, promotion
from mlplatform.lib.tracking import Tracker
from mlplatform_tests.test_hostile_inputs import stores_with_a_champion


def audit_rows(home) -> list[tuple]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        return connection.execute("select alias, version, previous_version, actor from audit.alias_changes "
                                  "order by changed_at").fetchall()


def test_a_damaged_store_refuses_the_move_before_the_rule_is_asked(home):
    stores_with_a_champion(home)
    replaced = Tracker.under(home.parent / "recreated" / "mlflow")  # the registry lost: the audit names v1
    asked = []
    with pytest.raises(approvals.StoresDamaged) as raised:
        approvals.move_champion(home, home / "warehouse.duckdb", replaced, 5, lambda c, t: asked.append(1))
    assert asked == [] and "the MLflow store was replaced or lost" in str(raised.value)
    assert raised.value.problems and audit_rows(home) == [("champion", "1", None, "ann")]


def test_the_move_is_decided_then_audited_and_made_as_one_unit(home):
    tracker = stores_with_a_champion(home)
    tracker.client.create_model_version("toy", source=(home / "model").as_uri(), tags={"gates": "passed"})
    seen = []

    def decide(connection, registry):
        return promotion.approval_change(registry, "toy", "2", "bea", "reviewed")

    change = approvals.move_champion(home, home / "warehouse.duckdb", tracker, 5, decide,
                                     committed=lambda connection: seen.append(connection.execute(
                                         "select count(*) from audit.alias_changes").fetchone()[0]))
    assert (change.version, change.previous_version) == ("2", "1") and tracker.alias_version("toy", "champion") == "2"
    assert audit_rows(home)[-1] == ("champion", "2", "1", "bea") and seen == [2]  # after the commit, same connection
    assert approvals.move_champion(home, home / "warehouse.duckdb", tracker, 5, lambda c, t: None) is None
    assert len(audit_rows(home)) == 2  # nothing to change: nothing written
