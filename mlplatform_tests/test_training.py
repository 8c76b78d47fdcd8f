"""Training building blocks, directly and fast: the pipeline a spec describes, its inputs, fingerprint, predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.lib.training import SEED, build_pipeline, encode_target, fingerprint, predict, split_xy
from mlplatform.specs import ModelSpec


def spec(task: str = "regression", estimator: str | None = None, **params) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "toy", "task": task, "source": {"path": "x.csv", "timestamp": "ts", "key": ["id"]}, "target": "y",
        "features": {"numeric": ["x1", "x2"], "categorical": ["color"]}, "partitions": {"start": "2024-01-01"},
        **({"estimator": {"class": estimator, "params": params}} if estimator else {}),
    })


def rows(n: int = 60, seed: int = 0, task: str = "regression") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "ts": pd.date_range("2024-01-01", periods=n, freq="h"), "id": np.arange(n),
        "x1": rng.uniform(0, 10, n), "x2": rng.normal(0, 1, n),
        "color": rng.choice(["red", "green", "blue"], n).astype(object),
    })
    signal = 2 * frame["x1"] + (frame["color"] == "red") * 3
    if task == "regression":
        frame["y"] = signal + rng.normal(0, 0.1, n)
    elif task == "binary":
        frame["y"] = np.where(signal > signal.median(), "yes", "no")
    else:
        frame["y"] = pd.cut(signal, 3, labels=["low", "mid", "high"]).astype(str)
    return frame


def test_pipeline_uses_the_spec_estimator_and_params_with_the_platform_seed():
    pipeline = build_pipeline(spec(estimator="sklearn.ensemble.RandomForestRegressor", n_estimators=7))
    estimator = pipeline.named_steps["estimator"]
    assert type(estimator).__name__ == "RandomForestRegressor"
    assert estimator.n_estimators == 7 and estimator.random_state == SEED
    explicit = build_pipeline(spec(estimator="sklearn.ensemble.RandomForestRegressor", random_state=11))
    assert explicit.named_steps["estimator"].random_state == 11  # the spec's own seed wins


def test_inputs_are_floats_and_text_with_nulls_kept_and_missing_values_imputed():
    frame = rows().assign(x1=lambda f: f["x1"].round().astype("int64"))
    frame.loc[0, "x2"] = np.nan
    frame.loc[1, "color"] = None
    x, y = split_xy(frame, spec())
    assert list(x.columns) == ["x1", "x2", "color"]
    assert x["x1"].dtype == "float64" and x["x2"].dtype == "float64" and y.dtype == "float64"
    assert x.loc[1, "color"] is None
    fitted = build_pipeline(spec(estimator="sklearn.linear_model.Ridge")).fit(x, y)
    assert np.isfinite(fitted.predict(x)).all()  # the null numeric and the null category are imputed


def test_unseen_category_at_prediction_time_does_not_fail():
    train = rows()
    x, y = split_xy(train, spec())
    fitted = build_pipeline(spec(estimator="sklearn.linear_model.Ridge")).fit(x, y)
    unseen = x.head(3).assign(color="purple")
    assert np.isfinite(predict(fitted, unseen, "regression").score).all()


def test_fingerprint_ignores_row_order_and_changes_with_any_value():
    frame = rows()
    base = fingerprint(frame, spec())
    assert fingerprint(frame.sample(frac=1, random_state=3), spec()) == base
    changed = frame.copy()
    changed.loc[5, "x2"] += 1e-9
    assert fingerprint(changed, spec()) != base
    assert fingerprint(frame.iloc[1:], spec()) != base


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_classifier_scores_and_labels_agree_with_the_encoded_target(task):
    frame = rows(200, task=task)
    x, y = split_xy(frame, spec(task))
    fitted = build_pipeline(spec(task, "sklearn.linear_model.LogisticRegression", max_iter=500)).fit(x, y)
    predicted = predict(fitted, x, task)
    encoded = encode_target(y, task, predicted.classes)
    assert predicted.classes == sorted(set(y))
    if task == "binary":
        assert ((predicted.score >= 0.5) == (predicted.label == predicted.classes[1])).all()
        assert set(encoded) == {0.0, 1.0} and encoded.mean() == pytest.approx((y == predicted.classes[1]).mean())
    else:
        assert (np.asarray(predicted.classes, dtype=object)[predicted.score.astype(int)] == predicted.label).all()
        assert (np.asarray(predicted.classes, dtype=object)[encoded.astype(int)] == y).all()
    assert (predicted.label == y).mean() > 0.7  # the signal is learnable: the encoding is not scrambled
