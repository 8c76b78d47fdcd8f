"""The fairness gate: pure functions on synthetic data with fairlearn, then the gate in a real Dagster run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlplatform.lib import gates as gate_lib
from mlplatform.lib.fairness import MISSING_GROUP, band_labels, fairness_report, group_labels


def credit_rows(n: int, biased: bool, seed: int = 0) -> pd.DataFrame:
    """Applicants of two groups with the same income distribution; a fair label depends on income only.

    ``biased``: group B's good outcomes are cut by 60 points of probability (biased history), and a
    proxy feature (a district code) reveals the group 90% of the time.
    """
    rng = np.random.default_rng(seed)
    group = rng.choice(["A", "B"], n)
    income = rng.normal(50, 15, n)
    p_good = 1 / (1 + np.exp(-(income - 50) / 8))
    if biased:
        p_good = np.where(group == "B", np.clip(p_good - 0.6, 0.02, 1), p_good)
    label = (rng.uniform(size=n) < p_good).astype(int)
    reveals = rng.uniform(size=n) < 0.9
    district = np.where(reveals, np.where(group == "B", 1.0, 0.0), rng.integers(0, 2, n).astype(float))
    return pd.DataFrame({"group": group, "income": income, "district": district, "label": label})


def fitted_scores(rows: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Train on the first half, score the second half (the week's evaluation rows)."""
    half = len(rows) // 2
    model = LogisticRegression().fit(rows[features][:half], rows["label"][:half])
    return model.predict_proba(rows[features][half:])[:, 1]


def binary_report(rows: pd.DataFrame, features: list[str], **limits):
    half = len(rows) // 2
    evaluation = rows[half:]
    return fairness_report("binary", evaluation["label"].to_numpy(), fitted_scores(rows, features),
                           group_labels(evaluation, ["group"]), "roc_auc",
                           limits.pop("max_parity_difference", 0.1), **limits)


def test_model_trained_on_biased_labels_through_a_proxy_fails_the_gate():
    report = binary_report(credit_rows(2000, biased=True), ["income", "district"])
    gate = gate_lib.fairness_gate(report)
    assert not gate.passed and gate.name == gate_lib.FAIRNESS
    group = report.attributes[0]
    assert group.parity_difference > 0.25
    rates = group.table.set_index("group")["selection_rate"]
    assert rates["A"] - rates["B"] == pytest.approx(group.parity_difference)
    assert "group: demographic parity difference" in gate.reason and "above 0.1" in gate.reason
    assert "| group | rows | decides | selection_rate | true_positive_rate | false_positive_rate | roc_auc |" \
        in gate.facts["per_group"]
    assert gate.facts["parity_difference[group]"] == group.parity_difference


def test_model_on_fair_labels_without_the_proxy_passes():
    report = binary_report(credit_rows(2000, biased=False), ["income"])
    gate = gate_lib.fairness_gate(report)
    assert gate.passed, gate.reason
    assert report.attributes[0].parity_difference < 0.1
    assert gate.reason.startswith("within the limit 0.1: group 0.")


def test_equalized_odds_limit_fails_a_model_whose_errors_differ_by_group():
    # Same outcome rates by construction, but the model is right for A and guesses for B.
    rng = np.random.default_rng(1)
    n = 400
    group = np.repeat(["A", "B"], n // 2)
    y = rng.integers(0, 2, n)
    score = np.where(group == "A", y * 0.8 + 0.1, rng.uniform(size=n))
    report = fairness_report("binary", y, score, {"group": pd.Series(group)}, "roc_auc", 0.2,
                             max_equalized_odds_difference=0.1)
    item = report.attributes[0]
    assert item.parity_difference < 0.2
    assert item.equalized_odds_difference > 0.3
    assert report.problems == [f"group: equalized odds difference {item.equalized_odds_difference:.3f} above 0.1"]
    without_limit = fairness_report("binary", y, score, {"group": pd.Series(group)}, "roc_auc", 0.2)
    assert without_limit.passed


def test_a_small_group_is_reported_but_does_not_decide():
    rng = np.random.default_rng(2)
    group = np.array(["A"] * 100 + ["B"] * 100 + ["C"] * 10)
    y = rng.integers(0, 2, len(group))
    score = np.where(group == "C", 0.9, 0.1 + 0.8 * y)  # C: everyone approved, a 100% selection rate
    report = fairness_report("binary", y, score, {"group": pd.Series(group)}, "roc_auc", 0.1, min_group_rows=20)
    item = report.attributes[0]
    table = item.table.set_index("group")
    assert table.loc["C", "rows"] == 10 and not table.loc["C", "decides"] and table.loc["C", "selection_rate"] == 1
    assert report.passed and item.parity_difference < 0.1
    assert "fewer than 20 rows are shown but do not decide: C" in item.notes[0]
    assert not fairness_report("binary", y, score, {"group": pd.Series(group)}, "roc_auc", 0.1,
                               min_group_rows=5).passed


def test_fewer_than_two_deciding_groups_pass_and_say_nothing_was_compared():
    group = pd.Series(["A"] * 50 + ["B"] * 5)
    y = np.tile([0, 1], 28)[:55]
    report = fairness_report("binary", y, np.where(group == "B", 0.9, 0.1), {"group": group}, "roc_auc", 0.1)
    gate = gate_lib.fairness_gate(report)
    assert gate.passed and report.attributes[0].parity_difference is None
    assert "group not compared (fewer than two groups of 20+ rows)" in gate.reason


def test_numeric_attribute_is_banded_and_missing_values_form_their_own_group():
    ages = pd.Series([19, 25, 34.5, 35, 49, 50, 80, None])
    assert list(band_labels(ages, [25, 35, 50])) == ["<25", "25-35", "25-35", "35-50", "35-50", ">=50", ">=50",
                                                     MISSING_GROUP]
    rows = pd.DataFrame({"sex": ["male", None, "female", "male", "female", "male", "female", "male"], "age": ages})
    groups = group_labels(rows, ["sex", "age"], {"age": [25, 35, 50]})
    assert list(groups) == ["sex", "age (banded)"]
    assert groups["sex"][1] == MISSING_GROUP and groups["age (banded)"][0] == "<25"


def test_two_attributes_are_judged_separately_and_either_can_fail():
    rows = credit_rows(2000, biased=True)
    rows["age"] = np.random.default_rng(3).uniform(20, 70, len(rows))  # unrelated to the outcome
    evaluation = rows[1000:]
    groups = group_labels(evaluation, ["group", "age"], {"age": [30, 45]})
    report = fairness_report("binary", evaluation["label"].to_numpy(), fitted_scores(rows, ["income", "district"]),
                             groups, "roc_auc", 0.1)
    by_name = {a.attribute: a for a in report.attributes}
    assert by_name["age (banded)"].parity_difference < 0.1 < by_name["group"].parity_difference
    assert len(report.problems) == 1 and report.problems[0].startswith("group:")


def test_regression_compares_group_mean_predictions_as_a_relative_gap():
    rng = np.random.default_rng(4)
    n = 600
    group = rng.choice(["A", "B"], n)
    x = rng.normal(10, 2, n)
    fair_y = 3 * x + rng.normal(0, 1, n)
    unfair_y = fair_y + np.where(group == "B", -10, 0)  # B's past claims were paid less
    frame = pd.DataFrame({"x": x, "b": (group == "B").astype(float)})
    fair = LinearRegression().fit(frame[["x"]], fair_y).predict(frame[["x"]])
    unfair = LinearRegression().fit(frame, unfair_y).predict(frame)
    groups = {"group": pd.Series(group)}
    fair_report = fairness_report("regression", fair_y, fair, groups, "rmse", 0.1)
    unfair_report = fairness_report("regression", unfair_y, unfair, groups, "rmse", 0.1)
    assert fair_report.passed and unfair_report.attributes[0].parity_difference > 0.2
    table = unfair_report.attributes[0].table.set_index("group")
    gap = table["mean_prediction"].max() - table["mean_prediction"].min()
    assert unfair_report.attributes[0].parity_difference == pytest.approx(gap / abs(unfair.mean()))
    assert {"mean_prediction", "mean_absolute_error", "rmse"} <= set(table.columns)
    assert "relative gap of group mean predictions" in unfair_report.problems[0]


def test_multiclass_takes_the_largest_selection_rate_gap_over_classes():
    group = pd.Series(["A"] * 50 + ["B"] * 50)
    y = np.tile([0, 1, 2, 0, 1], 20).astype(float)
    predicted = np.where(group == "A", 2.0, y)  # A always gets class 2
    report = fairness_report("multiclass", y, predicted, {"group": group}, "macro_f1", 0.1)
    item = report.attributes[0]
    table = item.table.set_index("group")
    assert table.loc["A", "selection_rate[2]"] == 1 and table.loc["B", "selection_rate[2]"] == pytest.approx(0.2)
    assert item.parity_difference == pytest.approx(0.8) and not report.passed


# --- the spec keys --------------------------------------------------------------------------------------------

LENDING_SPEC = """
name: lending
task: binary
source:
  path: lending.csv
  timestamp: ts
  key: [id]
target: label
features:
  numeric: [income, district]
columns:
  label: {categories: [0, 1]}
partitions:
  start: 2024-01-01
  end: 2024-01-15
  training_window_weeks: 1
fairness:
  sensitive: group
rollout:
  approval: auto
  auto_promote: immediate  # champion at once: this test is not about the canary stage (test_canary.py)
"""


def lending_rows(biased: bool, per_week: int = 400) -> pd.DataFrame:
    rows = credit_rows(2 * per_week, biased)
    rows.insert(0, "id", np.arange(len(rows)))
    seconds = np.arange(len(rows)) * (7 * 24 * 3600 / per_week)
    rows.insert(1, "ts", (pd.Timestamp("2024-01-01") + pd.to_timedelta(seconds, unit="s")).strftime("%Y-%m-%d %H:%M:%S"))
    return rows


def spec_problems(spec_dir, text: str) -> list[str]:
    from mlplatform.specs import SpecError, load_specs

    folder = spec_dir({"lending.yaml": text}, {"lending.csv": lending_rows(False, per_week=30)})
    with pytest.raises(SpecError) as raised:
        load_specs(folder)
    return [str(p) for p in raised.value.problems]


def test_sensitive_may_be_a_list_and_every_one_travels_with_the_rows(spec_dir):
    from mlplatform.lib.validation import features_schema
    from mlplatform.specs import load_specs

    rows = lending_rows(False, per_week=30).assign(age=40)
    text = LENDING_SPEC.replace("sensitive: group", "sensitive: [group, age]\n  bands: {age: [30, 50]}")
    folder = spec_dir({"lending.yaml": text}, {"lending.csv": rows})
    [spec] = load_specs(folder)
    assert spec.fairness.sensitive == ["group", "age"] and spec.fairness.max_demographic_parity_difference == 0.1
    assert spec.fairness.max_equalized_odds_difference is None and spec.fairness.min_group_rows == 20
    assert spec.modelling_columns == ["ts", "id", "group", "age", "income", "district", "label"]
    assert {"group", "age"} <= set(features_schema(spec).columns)
    assert "group" not in spec.feature_columns


@pytest.mark.parametrize(("change", "expected"), [
    (("sensitive: group", "sensitive: [group, income]"), "fairness.sensitive: 'income' is also a feature"),
    (("sensitive: group", "sensitive: gender"), "fairness.sensitive: found 'gender', which is not a column"),
    (("sensitive: group", "sensitive: group\n  bands: {income: [10]}"),
     "fairness.bands: 'income' is not a sensitive column; allowed: group"),
    (("sensitive: group", "sensitive: group\n  bands: {group: [50, 25]}"),
     "fairness.bands: group: found [50.0, 25.0]; expected band edges in increasing order"),
])
def test_fairness_spec_mistakes_are_named(spec_dir, change, expected):
    problems = spec_problems(spec_dir, LENDING_SPEC.replace(*change))
    assert any(expected in p for p in problems), problems


def test_equalized_odds_limit_is_refused_for_a_regression(spec_dir):
    from mlplatform.specs import load_specs

    regression = LENDING_SPEC.replace("task: binary", "task: regression").replace("{categories: [0, 1]}", "{min: 0}")
    folder = spec_dir({"lending.yaml": regression}, {"lending.csv": lending_rows(False, per_week=30)})
    assert load_specs(folder)[0].fairness is not None  # the gate itself is fine for a regression
    problems = spec_problems(spec_dir, regression.replace(
        "sensitive: group", "sensitive: group\n  max_equalized_odds_difference: 0.1"))
    assert any("fairness.max_equalized_odds_difference: found 0.1 for task regression" in p for p in problems), problems


# --- end to end -----------------------------------------------------------------------------------------------


def test_unfair_model_fails_the_fairness_check_and_gets_no_alias(home, spec_dir, instance):
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
    from mlplatform_tests.helpers import check_record, load_definitions, run_weeks, warehouse_query

    spec_dir({"lending.yaml": LENDING_SPEC}, {"lending.csv": lending_rows(biased=True)})
    assert run_weeks(load_definitions(), "lending", instance, "2024-01-01", "2024-01-08").success

    record = check_record(instance, ["lending", "model"], "fairness")
    evaluation = record.evaluation
    assert evaluation.partition == "2024-01-08" and evaluation.passed is False
    assert "group: demographic parity difference" in evaluation.metadata["reason"].value
    table = evaluation.metadata["per_group"].value
    assert "| group | rows | decides | selection_rate |" in table and "| A |" in table and "| B |" in table
    assert evaluation.metadata["parity_difference[group]"].value > 0.25
    for other in ("absolute_threshold", "beat_champion", "prediction_sanity"):  # fairness alone stops it
        assert check_record(instance, ["lending", "model"], other).evaluation.passed is True

    registry = Tracker.under(home / "mlflow")
    tags = registry.version_tags("lending", "1")
    assert tags["gates"] == "failed" and tags["gate.fairness"] == "failed"
    assert registry.alias_version("lending", CHALLENGER) is None
    assert registry.alias_version("lending", CHAMPION) is None
    row = warehouse_query(home, "select gate_fairness, aliases_set from lending.evaluations")
    assert row["gate_fairness"].tolist() == [False] and row["aliases_set"].tolist() == [""]

    from mlplatform.demo.runner import ModelRunResult
    from mlplatform.demo.summary import summary_table
    from mlplatform_tests.demo_checks import assert_history_summary_agrees

    summary = summary_table([ModelRunResult("lending", "2024-01-01", "2024-01-08", True, "run")],
                            home / "warehouse.duckdb", {"lending": None})
    evaluations = warehouse_query(home, "select * from lending.evaluations order by week")
    assert_history_summary_agrees(summary, evaluations, None)  # fairness is a column, and its FAIL is shown


# --- a snapshot dataset and the credit example --------------------------------------------------------------


def test_snapshot_holdout_is_the_same_whatever_the_row_order_and_never_overlaps():
    import yaml

    from mlplatform.lib.lifecycle import SNAPSHOT_EVALUATION_SHARE, snapshot_holdout
    from mlplatform.specs import ModelSpec

    raw = yaml.safe_load(LENDING_SPEC)
    raw["source"] = {"path": "lending.csv"}  # no timestamp: a snapshot
    spec = ModelSpec.model_validate(raw)
    rows = lending_rows(False, per_week=500).drop(columns=["ts"]).assign(_event_time=pd.Timestamp("2024-01-01"))
    train, held_out = snapshot_holdout(rows, spec)
    _, shuffled_held_out = snapshot_holdout(rows.sample(frac=1, random_state=7), spec)
    assert len(train) + len(held_out) == len(rows) and not set(train.index) & set(held_out.index)
    assert abs(len(held_out) / len(rows) - SNAPSHOT_EVALUATION_SHARE) < 0.05
    assert set(held_out.index) == set(shuffled_held_out.index)


def test_german_credit_example_trains_through_dbt_with_the_fairness_gate(home, bundled_specs, instance):
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
    from mlplatform_tests.helpers import check_record, load_definitions, run_weeks, warehouse_query

    defs = load_definitions()  # loads every bundled spec, german_credit's dbt model included
    assert defs.resolve_job_def("german_credit_pipeline").partitions_def.get_partition_keys() == ["2024-01-01"]
    assert run_weeks(defs, "german_credit", instance, "2024-01-01").success

    staged = warehouse_query(home, "select sex, personal_status, checking_account, count(*) as n from "
                                   "german_credit.staged group by all")
    assert staged["n"].sum() == 1000 and set(staged["sex"]) == {"male", "female"}
    assert set(staged["checking_account"]) == {"none", "negative", "0-200 DM", "200+ DM or salary"}
    features = warehouse_query(home, "select * from german_credit.features")
    assert len(features) == 1000 and {"sex", "age_years"} <= set(features.columns)
    assert "personal_status" not in features.columns and "foreign_worker" not in features.columns

    week = warehouse_query(home, "select train_rows, eval_rows, gate_fairness, value from german_credit.evaluations")
    assert week["train_rows"].item() + week["eval_rows"].item() == 1000 and 250 < week["eval_rows"].item() < 350
    fairness = check_record(instance, ["german_credit", "model"], "fairness").evaluation
    assert fairness.partition == "2024-01-01" and fairness.passed == week["gate_fairness"].item()
    table = fairness.metadata["per_group"].value
    assert "**sex**" in table and "| female |" in table and "**age_years (banded)**" in table
    assert table.index("| <25 |") < table.index("| 25-35 |") < table.index("| 35-50 |") < table.index("| >=50 |")
    differences = {k: v.value for k, v in fairness.metadata.items() if k.startswith("parity_difference[")}
    assert set(differences) == {"parity_difference[sex]", "parity_difference[age_years (banded)]"}, differences
    assert fairness.passed is all(d <= 0.1 for d in differences.values())  # the spec's limit, max 0.1
    registry = Tracker.under(home / "mlflow")
    assert registry.version_tags("german_credit", "1")["gates"] == "passed"
    # approval: manual: a version that passed every gate is challenger; a credit officer makes it champion
    assert registry.alias_version("german_credit", CHALLENGER) == "1"
    assert registry.alias_version("german_credit", CHAMPION) is None
