"""The demo's production plan: the example's own configuration, checked with one clear line per mistake."""

from __future__ import annotations

from datetime import date

import pytest

from mlplatform.demo.plan import PLAN_FILE, REPLAY, WEEK_BY_WEEK, PlanError, ProductionWeeks, held_back, load_plan
from mlplatform.lib.settings import BUNDLED_SPECS_DIR
from mlplatform.specs import declared_names


def test_the_bundled_plan_names_bundled_models_and_the_demo_holds_their_weeks_back():
    plan = load_plan(BUNDLED_SPECS_DIR, declared_names(BUNDLED_SPECS_DIR))
    assert plan and set(plan) <= set(declared_names(BUNDLED_SPECS_DIR))
    assert {entry.shape for entry in plan.values()} == {REPLAY, WEEK_BY_WEEK}
    assert held_back(plan) == {model: entry.weeks for model, entry in plan.items()}
    assert all(entry.weeks >= 1 for entry in plan.values())


def test_a_specs_folder_without_a_plan_has_no_production_weeks(tmp_path):
    assert load_plan(tmp_path, ["toy"]) == {}


@pytest.mark.parametrize(("text", "expected"), [
    ("production:\n  toyy: {weeks: 2}\n", "production.toyy: no model spec named 'toyy'; the specs define toy"),
    ("production:\n  toy: {weeks: 0}\n", "production.toy.weeks: found 0; expected a whole number of weeks, 1 or more"),
    ("production:\n  toy: {weeks: two}\n", "production.toy.weeks: found 'two'"),
    ("production:\n  toy: {weeks: 2, shape: daily}\n",
     "production.toy.shape: found 'daily'; allowed: replay, week_by_week"),
    ("production:\n  toy: {weeks: 2, days: 3}\n", "production.toy: expected {weeks: N, shape: replay|week_by_week}"),
    ("toy: {weeks: 2}\n", "expected one key `production:`"),
    ("production: [\n", "not readable YAML"),
])
def test_plan_mistakes_name_the_file_and_the_key(tmp_path, text, expected):
    file = tmp_path / PLAN_FILE
    file.parent.mkdir(parents=True)
    file.write_text(text)
    with pytest.raises(PlanError) as raised:
        load_plan(tmp_path, ["toy"])
    assert str(file) in str(raised.value) and expected in str(raised.value), str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_valid_plan_reads_weeks_and_shape_with_week_by_week_the_default(tmp_path):
    file = tmp_path / PLAN_FILE
    file.parent.mkdir(parents=True)
    file.write_text("production:\n  a: {weeks: 3}\n  b: {weeks: 1, shape: replay}\n")
    assert load_plan(tmp_path, ["a", "b", "c"]) == {"a": ProductionWeeks(3, WEEK_BY_WEEK), "b": ProductionWeeks(1, REPLAY)}


def test_production_weeks_follow_the_last_week_run_and_stay_within_the_partitions():
    import yaml

    from mlplatform.demo.production import live_weeks
    from mlplatform.specs import ModelSpec

    raw = yaml.safe_load((BUNDLED_SPECS_DIR / "churn_shift.yaml").read_text())
    spec = ModelSpec.model_validate(raw)  # partitions end 2024-04-08: the last week is 2024-04-01
    assert live_weeks(spec, "2024-03-04", 4) == ["2024-03-11", "2024-03-18", "2024-03-25", "2024-04-01"]
    assert live_weeks(spec, "2024-03-25", 4) == ["2024-04-01"]
    assert all(date.fromisoformat(w) > date(2024, 3, 4) for w in live_weeks(spec, "2024-03-04", 2))
