"""Explanations: SHAP and permutation importance agree where one feature dominates; one prediction adds up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.lib import explain
from mlplatform.lib.training import build_pipeline, encode_target, split_xy
from mlplatform.specs import ModelSpec


def _spec(task: str, estimator: str) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "dominant", "task": task, "source": {"path": "rows.csv"}, "target": "target",
        "features": {"numeric": ["income", "noise_a", "noise_b"], "categorical": ["region"]},
        "partitions": {"start": "2024-01-01"}, "estimator": {"class": estimator},
    })


def _rows(task: str, n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """``income`` decides the target by construction; the others barely (region) or not at all (noise)."""
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({"income": rng.normal(size=n), "noise_a": rng.normal(size=n), "noise_b": rng.normal(size=n),
                         "region": rng.choice(["north", "south", "east"], n)})
    signal = 4 * rows["income"] + np.where(rows["region"] == "north", 0.3, 0.0)
    if task == "regression":
        rows["target"] = signal + rng.normal(0, 0.3, n)
    else:
        rows["target"] = np.where(rng.random(n) < 1 / (1 + np.exp(-signal)), "good", "bad")
    return rows


def _fit(task: str, estimator: str):
    spec = _spec(task, estimator)
    x, y = split_xy(_rows(task), spec)
    pipeline = build_pipeline(spec).fit(x, y)
    classes = None if task == "regression" else list(pipeline.classes_)
    return spec, pipeline, x, encode_target(y, task, classes)


CASES = [
    ("binary", "sklearn.ensemble.HistGradientBoostingClassifier", explain.TREE_SHAP),
    ("regression", "sklearn.ensemble.RandomForestRegressor", explain.TREE_SHAP),
    ("binary", "sklearn.linear_model.LogisticRegression", explain.PERMUTATION),
    ("regression", "sklearn.linear_model.Ridge", explain.PERMUTATION),
]


@pytest.mark.parametrize(("task", "estimator", "default_method"), CASES)
def test_shap_and_permutation_importance_agree_on_the_dominant_feature(task, estimator, default_method):
    spec, pipeline, x, y = _fit(task, estimator)
    chosen = explain.global_importance(pipeline, x, y, task, spec.primary_metric)
    assert chosen.method == default_method  # TreeSHAP for trees, permutation otherwise
    permutation = explain.global_importance(pipeline, x, y, task, spec.primary_metric, method=explain.PERMUTATION)
    # SHAP: TreeExplainer for trees; for linear models the mean |Shapley value| of the sampling explainer
    explainer = explain.Explainer(pipeline, task, spec.feature_columns, background=explain.background_rows(x))
    _, contributions, _ = explainer.contributions(x.head(100))
    shap_top = spec.feature_columns[int(np.abs(contributions).mean(axis=0).argmax())]
    assert chosen.top(1) == permutation.top(1) == [shap_top] == ["income"]
    assert chosen.table["share"].iloc[0] > 0.5
    assert set(chosen.table["feature"]) == set(spec.feature_columns)  # one-hot columns summed back to "region"


def test_tree_contributions_add_up_to_the_models_log_odds():
    spec, pipeline, x, _ = _fit("binary", "sklearn.ensemble.HistGradientBoostingClassifier")
    explainer = explain.Explainer(pipeline, "binary", spec.feature_columns)
    assert explainer.method == explain.TREE_SHAP
    record = x.iloc[3].to_dict()
    explained = explain.explain_prediction(explainer, record, top_k=2)
    proba = pipeline.predict_proba(x.iloc[[3]])[0, 1]
    assert explained.output == "log-odds of 'good'"
    assert explained.output_value == pytest.approx(np.log(proba / (1 - proba)), abs=1e-6)
    assert explained.base_value + sum(c.contribution for c in explained.top) + explained.rest == \
        pytest.approx(explained.output_value, abs=1e-9)
    assert len(explained.top) == 2 and explained.top[0].feature == "income"
    assert explained.top[0].value == pytest.approx(record["income"])


def test_sampled_shapley_is_exact_for_a_logistic_regression():
    """For an additive model the sampled Shapley values equal the closed form coef * (x - background mean)."""
    spec, pipeline, x, _ = _fit("binary", "sklearn.linear_model.LogisticRegression")
    background = explain.background_rows(x)
    explainer = explain.Explainer(pipeline, "binary", spec.feature_columns, background=background)
    assert explainer.method == explain.SAMPLED_SHAPLEY
    rows = x.iloc[:4].reset_index(drop=True)
    base, contributions, _ = explainer.contributions(rows)
    transform = pipeline[:-1]
    coef = pipeline.named_steps["estimator"].coef_[0]
    delta = (np.asarray(transform.transform(rows)) - np.asarray(transform.transform(background)).mean(axis=0)) * coef
    sources = explain.source_features(pipeline)
    expected = np.stack([delta[:, [s == f for s in sources]].sum(axis=1) for f in spec.feature_columns], axis=1)
    np.testing.assert_allclose(contributions, expected, atol=1e-9)
    explained = explainer.explain(rows)
    proba = pipeline.predict_proba(rows)[:, 1]
    np.testing.assert_allclose([e.output_value for e in explained], np.log(proba / (1 - proba)), atol=1e-9)


def test_a_categorical_value_unseen_in_training_is_explained_not_refused():
    spec, pipeline, x, _ = _fit("regression", "sklearn.ensemble.HistGradientBoostingRegressor")
    explainer = explain.Explainer(pipeline, "regression", spec.feature_columns)
    record = {**x.iloc[0].to_dict(), "region": "atlantis", "noise_a": None}
    explained = explain.explain_prediction(explainer, record, top_k=10)
    assert explained.output == "predicted value"
    assert explained.output_value == pytest.approx(float(pipeline.predict(pd.DataFrame([{
        **record, "noise_a": np.nan}])[spec.feature_columns])[0]), abs=1e-6)
    assert {c.feature for c in explained.top} == set(spec.feature_columns)
    assert {c.feature: c.value for c in explained.top}["noise_a"] is None


def test_importance_survives_a_round_trip_through_json_and_draws_a_plot():
    spec, pipeline, x, y = _fit("binary", "sklearn.ensemble.HistGradientBoostingClassifier")
    importance = explain.global_importance(pipeline, x, y, "binary", "roc_auc", max_rows=50)
    assert importance.rows == 50
    again = explain.Importance.from_dict(importance.as_dict())
    assert again.top(4) == importance.top(4) and again.unit == importance.unit
    assert "| income |" in importance.markdown()
    assert explain.importance_plot(importance, "dominant").startswith(b"\x89PNG")


@pytest.mark.parametrize(("task", "estimator"), [("regression", "sklearn.ensemble.HistGradientBoostingRegressor"),
                                                 ("binary", "sklearn.ensemble.HistGradientBoostingClassifier")])
def test_the_fast_histgradientboosting_conversion_gives_shaps_own_values(task, estimator):
    import shap

    spec, pipeline, x, _ = _fit(task, estimator)
    model = pipeline.named_steps["estimator"]
    assert isinstance(explain.shap_tree_model(model), dict)
    transformed = np.asarray(pipeline[:-1].transform(x.head(50)), dtype="float64")
    ours, theirs = shap.TreeExplainer(explain.shap_tree_model(model)), shap.TreeExplainer(model)
    np.testing.assert_allclose(ours.shap_values(transformed), theirs.shap_values(transformed), atol=1e-10)
    np.testing.assert_allclose(np.ravel(ours.expected_value), np.ravel(theirs.expected_value), atol=1e-10)
