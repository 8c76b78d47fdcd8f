"""Every spec mistake gives one message naming the file, the key, what was found and what is allowed."""

from __future__ import annotations

import pytest

from mlplatform.defs.dbt_project import prepare_manifest
from mlplatform.lib.settings import BUNDLED_SPECS_DIR
from mlplatform.specs import SpecError, dbt_manifest_columns, load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows


def problems_for(spec_dir, spec_text: str, extra_specs: dict[str, str] | None = None) -> list[str]:
    folder = spec_dir({"toy.yaml": spec_text, **(extra_specs or {})}, {"toy.csv": toy_rows()})
    with pytest.raises(SpecError) as caught:
        load_specs(folder)
    return [str(p) for p in caught.value.problems]


def test_valid_toy_spec_loads_with_defaults(spec_dir):
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    [spec] = load_specs(folder)
    assert spec.name == "toy"
    assert spec.primary_metric == "rmse"
    assert spec.estimator.class_name == "sklearn.ensemble.HistGradientBoostingRegressor"
    assert spec.partitions.training_window_weeks == 8
    assert spec.rollout.approval == "manual"
    assert spec.source_path == folder / "toy.csv"


def test_bundled_specs_load():
    names = {s.name for s in load_specs(BUNDLED_SPECS_DIR, dbt_manifest_columns(prepare_manifest()))}
    assert names == {"bike_demand", "car_loan", "churn_shift", "german_credit"}


def test_unknown_task(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("task: regression", "task: regresion"))
    assert "toy.yaml: task: found 'regresion'; allowed: regression, binary, multiclass" in problem
    assert "did you mean 'regression'" in problem


def test_missing_target(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("target: y\n", ""))
    assert "toy.yaml: target: required key is missing" in problem


def test_misspelled_target_key(spec_dir):
    problems = problems_for(spec_dir, TOY_SPEC.replace("target: y", "targte: y"))
    assert any("target: required key is missing" in p for p in problems)
    assert any("targte: unknown key (did you mean 'target'?)" in p for p in problems)


def test_target_column_not_in_source(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("target: y", "target: yy"))
    assert "toy.yaml: target: found 'yy', which is not a column of source toy.csv (did you mean 'y'?)" in problem


def test_feature_column_not_in_source(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("numeric: [x1, x2]", "numeric: [x1, x3]"))
    assert "features.numeric: found 'x3', which is not a column of source toy.csv" in problem
    assert "columns: id, ts, x1, x2, color, y" in problem


def test_timestamp_column_not_in_source(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("timestamp: ts", "timestamp: time"))
    assert "source.timestamp: found 'time', which is not a column of source toy.csv" in problem


def test_bad_model_name(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("name: toy", "name: Toy-Model"))
    assert "toy.yaml: name: found 'Toy-Model'; a model name is lowercase letters, digits and underscores" in problem


def test_non_numeric_threshold(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC + "gates:\n  threshold: high\n")
    assert "toy.yaml: gates.threshold: found 'high'; expected a number" in problem


@pytest.mark.parametrize(("value", "expected"), [
    ("1.5", "evaluation.decision_threshold: found 1.5; a probability strictly between 0 and 1 (default 0.5)"),
    ("0", "evaluation.decision_threshold: found 0; a probability strictly between 0 and 1"),
    (".nan", "evaluation.decision_threshold: found nan; a probability strictly between 0 and 1"),
    ("half", "evaluation.decision_threshold: found 'half'; expected a number"),
])
def test_a_decision_threshold_outside_0_to_1_is_named(spec_dir, value, expected):
    binary = TOY_SPEC.replace("task: regression", "task: binary")
    problems = problems_for(spec_dir, binary + f"evaluation:\n  decision_threshold: {value}\n")
    assert any(f"toy.yaml: {expected}" in p for p in problems), problems


def test_a_decision_threshold_on_a_model_that_makes_no_binary_decision_is_refused(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC + "evaluation:\n  decision_threshold: 0.7\n")
    assert "evaluation.decision_threshold: found 0.7 for task regression; only a binary model" in problem


def test_metric_not_allowed_for_task(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC + "gates:\n  metric: roc_auc\n")
    assert "found 'roc_auc'; allowed for task regression: rmse, mae, r2" in problem


def test_unknown_estimator_class(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC + "estimator:\n  class: sklearn.ensemble.RandomForestRegresor\n")
    assert "estimator.class: found 'sklearn.ensemble.RandomForestRegresor'; sklearn.ensemble has no class" in problem
    assert "did you mean 'RandomForestRegressor'" in problem


def test_unknown_estimator_module(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC + "estimator:\n  class: sklearn.linear_modelx.Thing\n")
    assert "estimator.class: found 'sklearn.linear_modelx.Thing'; module 'sklearn.linear_modelx' cannot be " \
           "imported" in problem


def test_unknown_estimator_param(spec_dir):
    [problem] = problems_for(
        spec_dir, TOY_SPEC + "estimator:\n  class: sklearn.linear_model.Ridge\n  params: {alpah: 1.0}\n"
    )
    assert "estimator.params.alpah: Ridge has no parameter 'alpah' (did you mean 'alpha'?)" in problem


def test_duplicate_model_names(spec_dir):
    problems = problems_for(spec_dir, TOY_SPEC, {"toy_copy.yaml": TOY_SPEC})
    first, second = problems  # both files refused, each naming the other
    assert "toy.yaml: name: model name 'toy' is claimed again by" in first and "toy_copy.yaml" in first
    assert "toy_copy.yaml: name: model name 'toy' is already used by" in second and "toy.yaml" in second


def test_source_file_missing(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("path: toy.csv", "path: missing.csv"))
    assert "toy.yaml: source.path: file" in problem and "missing.csv does not exist" in problem


def test_start_must_be_a_monday(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("start: 2024-01-01", "start: 2024-01-03"))
    assert "partitions.start: 2024-01-03 is a Wednesday; weeks start on Monday (use 2024-01-01)" in problem


def test_every_problem_reported_at_once(spec_dir):
    text = TOY_SPEC.replace("task: regression", "task: nope").replace("name: toy", "name: 1toy")
    problems = problems_for(spec_dir, text)
    assert len(problems) == 2
    assert {p.split(": ")[1] for p in problems} == {"task", "name"}


def test_invalid_yaml(spec_dir):
    [problem] = problems_for(spec_dir, "name: [unclosed\n")
    assert "toy.yaml: (yaml): not valid YAML" in problem


def test_no_specs_in_folder(tmp_path):
    with pytest.raises(SpecError, match="no \\*.yaml model specs in this folder"):
        load_specs(tmp_path)


def test_dbt_model_unknown(spec_dir):
    text = TOY_SPEC + "staging:\n  dbt_model: stg_nothing\n"
    folder = spec_dir({"toy.yaml": text}, {"toy.csv": toy_rows()})
    with pytest.raises(SpecError, match="staging.dbt_model: no dbt model named 'stg_nothing'"):
        load_specs(folder, dbt_manifest_columns(prepare_manifest()))


def test_relative_estimator_module_is_a_problem_not_a_crash(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC + "estimator: {class: .sklearn.linear_model.Ridge}\n")
    assert "toy.yaml: estimator.class: found '.sklearn.linear_model.Ridge'; estimator classes may only come from " \
           "the modules sklearn.*" in problem


def test_source_path_of_an_unknown_users_home_is_a_problem_not_a_crash(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("path: toy.csv", "path: ~no_such_user_here/toy.csv"))
    assert "toy.yaml: source.path: found '~no_such_user_here/toy.csv'" in problem


def test_spec_that_is_not_utf8_names_the_file_and_the_fix(spec_dir):
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    (folder / "toy.yaml").write_bytes((TOY_SPEC + "description: Modèle\n").encode("latin-1"))
    with pytest.raises(SpecError) as caught:
        load_specs(folder)
    [problem] = [str(p) for p in caught.value.problems]
    assert "toy.yaml: (file): not UTF-8 text" in problem and "save it as UTF-8" in problem


def test_hidden_files_such_as_editor_locks_are_not_specs(spec_dir):
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    (folder / ".#toy.yaml").symlink_to(folder / "user@host.12345")  # an Emacs lock: a dangling link
    assert [s.name for s in load_specs(folder)] == ["toy"]


def test_unknown_key_of_a_column_rule_lists_the_rule_keys_and_suggests_one(spec_dir):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("x1: {min: 0, max: 10}", "x1: {min: 0, maximum: 10}"))
    assert "toy.yaml: columns.x1.maximum:" in problem
    assert "did you mean 'max'" in problem and "categories" in problem


@pytest.mark.parametrize(("change", "expected"), [
    (("numeric: [x1, x2]", "numeric: [x1, x2, color]"), "features: columns ['color'] are listed as both numeric and "
                                                         "categorical; pick one"),
    (("numeric: [x1, x2]", "numeric: [x1, x2, y]"), "features: target 'y' is also listed as a feature"),
    (("x1: {min: 0, max: 10}", "x1: {min: 10, max: 0}"), "columns.x1: min 10.0 is greater than max 0.0"),
    (("x1: {min: 0, max: 10}", "x9: {min: 0}"), "columns.x9: rules for 'x9', which is not a target, feature, key or "
                                               "sensitive column of this spec"),
    (("end: 2024-01-22", "end: 2024-01-01"), "end 2024-01-01 must be after start 2024-01-01"),
    (("target: y", "target: y\nfairness: {sensitive: x1}"), "fairness.sensitive: 'x1' is also a feature"),
    (("target: y", "target: y\nestimator: {class: sklearn.preprocessing.StandardScaler}"),
     "estimator.class: found 'sklearn.preprocessing.StandardScaler'; it is not an estimator (needs fit and predict)"),
])
def test_contradictions_inside_a_spec_are_named(spec_dir, change, expected):
    problems = problems_for(spec_dir, TOY_SPEC.replace(*change))
    assert any(expected in p for p in problems), problems


def test_yml_files_are_specs_too(spec_dir):
    folder = spec_dir({"toy.yml": TOY_SPEC}, {"toy.csv": toy_rows()})
    assert [s.name for s in load_specs(folder)] == ["toy"]


def test_spec_that_is_not_a_mapping(spec_dir):
    assert "toy.yaml: (top level): expected a mapping of keys, found list" in problems_for(spec_dir, "- name: toy\n")[0]


def test_a_data_files_header_is_read_again_once_the_file_changes(tmp_path):
    """The header is read once per version of the file (the load asks twice per spec), never stale after an edit."""
    from mlplatform.specs.files import source_columns

    data = tmp_path / "rows.csv"
    data.write_text("a,b\n1,2\n")
    assert source_columns(data) == source_columns(data) == ["a", "b"]
    replacement = tmp_path / "new.csv"
    replacement.write_text("a,c\n1,2\n")  # same size, another file moved over it (what editors do)
    replacement.replace(data)
    assert source_columns(data) == ["a", "c"]
