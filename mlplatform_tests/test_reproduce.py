"""`mlplatform reproduce`: a version retrained from what it recorded gives identical metrics, and a changed
source row is refused loudly, before anything is trained."""

from __future__ import annotations

import json

from mlplatform.cli import main
from mlplatform.lib.spec_hash import GATES_HASH_TAG, SPEC_HASH_TAG
from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query

MODEL_SPEC = TOY_SPEC + """
estimator:
  class: sklearn.ensemble.RandomForestRegressor
  params: {n_estimators: 10}
gates:
  threshold: 1.0
rollout:
  approval: auto
"""


def _stores(home, tracker: Tracker) -> tuple:
    """What reproduce must never change: registered versions, aliases, audit events, evaluations."""
    versions = sorted(v.version for v in tracker.client.search_model_versions("name = 'toy'"))
    aliases = (tracker.alias_version("toy", CHALLENGER), tracker.alias_version("toy", CHAMPION))
    events = len(warehouse_query(home, "select * from audit.events"))
    evaluations = warehouse_query(home, "select * from toy.evaluations order by week").to_json()
    return versions, aliases, events, evaluations


def test_reproduce_gives_identical_metrics_then_refuses_after_a_source_row_changed(home, spec_dir, instance, capsys):
    folder = spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-08",
                     assets=["raw", "features", "model", "evaluation"]).success
    tracker = Tracker.under(home / "mlflow")
    tags = tracker.version_tags("toy", "1")  # week 2024-01-08, trained on the week of 2024-01-01 (the first week)
    assert tags["week"] == "2024-01-08" and len(tags[SPEC_HASH_TAG]) == 64 and len(tags[GATES_HASH_TAG]) == 64
    run_tags = tracker.run(tracker.client.get_model_version("toy", "1").run_id).data.tags
    assert {"python.version", "library.scikit-learn", "library.scipy", "data.eval_fingerprint"} <= set(run_tags)
    before = _stores(home, tracker)

    assert main(["reproduce", "toy", "1"]) == 0
    out = capsys.readouterr().out
    assert "metrics: identical" in out and "toy v1: reproduced: identical metrics" in out
    assert f"fingerprint of the training rows: {tags['data.fingerprint']}" in out
    assert main(["reproduce", "toy", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] and report["metric_differences"] == [] and "rmse" in report["metrics"]
    assert _stores(home, tracker) == before  # nothing registered, moved or written

    rows = toy_rows()
    rows.loc[rows["ts"].str.startswith("2024-01-03").idxmax(), "x1"] += 1.0  # one row of the first training week
    rows.to_csv(folder / "toy.csv", index=False)
    assert main(["reproduce", "toy", "1"]) == 2
    err = capsys.readouterr().err
    assert "REFUSED" in err and "window 2023-11-13..2024-01-08 (end excluded) changed" in err
    assert f"fingerprint recorded {tags['data.fingerprint']}, now " in err
    assert main(["reproduce", "toy", "2"]) == 2  # no such version: refused too, never a traceback
    assert "no such registered model version" in capsys.readouterr().err
    assert _stores(home, tracker) == before
