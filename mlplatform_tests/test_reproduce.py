"""`mlplatform reproduce`: a version retrained from what it recorded gives identical metrics, and a changed
source row is refused loudly, before anything is trained."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from mlplatform.cli import main
from mlplatform.lib.spec_hash import GATES_HASH_TAG, SPEC_HASH_TAG
from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query

pytestmark = pytest.mark.usefixtures("warehouse_backend")

MODEL_SPEC = TOY_SPEC.replace("  end: 2024-01-22", "  end: 2024-01-22\n  training_window_weeks: 1") + """
estimator:
  class: sklearn.ensemble.RandomForestRegressor
  params: {n_estimators: 10}
gates:
  threshold: 1.0
rollout:
  approval: auto
  auto_promote: immediate  # champion at once: this test is not about the canary stage (test_canary.py)
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
    # week 2024-01-08, trained on the week of 2024-01-01 (the first week); the rows it reads reach back the data
    # gate's 30 recent days, to Saturday 2023-12-09: a window that is not whole weeks
    tags = tracker.version_tags("toy", "1")
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
    assert "REFUSED" in err and "window 2024-01-01..2024-01-08 (end excluded) changed" in err
    assert f"fingerprint recorded {tags['data.fingerprint']}, now " in err
    assert main(["reproduce", "toy", "2"]) == 2  # no such version: refused too, never a traceback
    assert "no such registered model version" in capsys.readouterr().err
    assert _stores(home, tracker) == before


def test_a_plain_spec_whose_rows_reach_back_to_mid_week_is_rebuilt_not_refused(home, spec_dir, tmp_path):
    """Without dbt staging the rows are rebuilt from the source; a window starting on a Saturday (1 training week,
    30 recent days) still counts its rows in the Monday weeks they belong to, so unchanged data passes the gate."""
    from mlplatform.demo.runner import specs_by_name
    from mlplatform.lib.lifecycle import rows_needed
    from mlplatform.lib.reproduce import current_rows
    from mlplatform.lib.source import rows_per_week

    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    spec = specs_by_name()["toy"]
    window = rows_needed(spec, datetime(2024, 1, 8))
    assert window.start.weekday() == 5  # the case: a Saturday
    rows, source = current_rows(spec, window, tmp_path / "no-warehouse.duckdb")
    assert "rebuilt from the source file" in source
    expected = toy_rows().query("ts < '2024-01-15'")
    assert len(rows) == len(expected) and sorted(rows["id"]) == sorted(expected["id"])
    counts = rows_per_week(rows, spec.time_column, window)
    assert list(counts)[0] == "2023-12-04" and all(datetime.fromisoformat(w).weekday() == 0 for w in counts)
    assert counts["2024-01-01"] == counts["2024-01-08"] == 40 and sum(counts.values()) == len(rows)


def test_with_dbt_staging_the_source_is_checked_against_the_stored_raw_rows(home, spec_dir, instance):
    """A staged spec's features are dbt's output, read from the warehouse; a changed source row is still caught."""
    import pytest

    from mlplatform.demo.runner import specs_by_name
    from mlplatform.lib.reproduce import ReproductionRefused, current_rows
    from mlplatform.lib.source import Window
    from mlplatform.lib.training import fingerprint
    from mlplatform.specs.schema import StagingSpec

    folder = spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15", assets=["raw", "features"]).success
    staged = specs_by_name()["toy"].model_copy(update={"staging": StagingSpec(dbt_model="stg_toy")})
    window = Window(datetime(2024, 1, 1), datetime(2024, 1, 15))
    rows, source = current_rows(staged, window, home / "warehouse.duckdb")
    stored = warehouse_query(home, "select * from toy.features where ts < '2024-01-15' order by ts")
    assert "features rows from the warehouse" in source and fingerprint(rows, staged) == fingerprint(stored, staged)

    changed = toy_rows()
    changed.loc[5, "color"] = "blue" if changed.loc[5, "color"] != "blue" else "red"
    changed.to_csv(folder / "toy.csv", index=False)
    with pytest.raises(ReproductionRefused, match="source rows of 2024-01-01..2024-01-15 .* differ from the raw rows"):
        current_rows(staged, window, home / "warehouse.duckdb")


def test_library_python_and_seed_versions_that_differ_from_the_recorded_ones_are_listed():
    from mlplatform.lib.reproduce import Recorded, environment_differences
    from mlplatform.lib.source import Window
    from mlplatform.lib.tracking import library_versions

    now = library_versions()
    recorded = Recorded("toy", "1", "run", "2024-01-08", Window(datetime(2024, 1, 1), datetime(2024, 1, 8)), "f", None,
                        {"seed": "7"}, {}, {**{f"library.{k}": v for k, v in now.items()},
                                            "library.scikit-learn": "0.0.1", "python.version": "2.7.18"}, {}, None)
    found = {d.what: (d.recorded, d.now) for d in environment_differences(recorded)}
    assert found["library scikit-learn"] == ("0.0.1", now["scikit-learn"])
    assert found["python"][0] == "2.7.18" and found["seed"] == ("7", "0")
    assert not any(name.startswith("library ") and name != "library scikit-learn" for name in found)
