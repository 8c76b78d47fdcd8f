"""Training: the scikit-learn pipeline a spec describes, its inputs, and a fingerprint of the exact rows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlplatform.lib.decision import DECISION_THRESHOLD, predicted_positive
from mlplatform.names import CODE_FACTORY_TAG, CODE_FINGERPRINT_TAG
from mlplatform.specs import ModelSpec
from mlplatform.specs.estimators import code_fingerprint, import_estimator_class, import_factory

SEED = 0
"""One seed for estimators and bootstraps: the same rows and code give the same model and metrics."""


def estimator_class(spec: ModelSpec) -> type:
    """The spec's estimator class, imported only when its module is on the allow-list (never from the spec folder)."""
    folder = spec.spec_file.parent if spec.spec_file.is_file() else None  # a spec built in code has no folder
    return import_estimator_class(spec.estimator.class_name or "", folder)


def build_pipeline(spec: ModelSpec) -> Pipeline:
    """Impute + one-hot categoricals, impute numerics, then the spec's estimator with a fixed seed; or, with
    ``estimator.factory``, the team's own model behind a step that only selects the spec's feature columns."""
    if spec.estimator.factory is not None:
        return factory_pipeline(spec)
    cls = estimator_class(spec)
    params = dict(spec.estimator.params)
    if "random_state" in getattr(cls, "_get_param_names", lambda: [])() and "random_state" not in params:
        params["random_state"] = SEED
    transformers = []
    if spec.features.numeric:
        transformers.append(("numeric", SimpleImputer(strategy="median"), spec.features.numeric))
    if spec.features.categorical:
        categorical = Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="(missing)")),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ])
        transformers.append(("categorical", categorical, spec.features.categorical))
    preprocess = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("preprocess", preprocess), ("estimator", cls(**params))])


def factory_pipeline(spec: ModelSpec) -> Pipeline:
    """``preprocess`` passes the raw feature columns through unchanged (a DataFrame, numeric as float, categoricals
    as text; nothing else of the row reaches the team's code), ``estimator`` is what the team's factory returns.

    The two step names keep what reads a version's structure working (explanations: permutation importance and
    sampled Shapley values for a model that is not a bare tree; serving takes its generic path). The factory seeds
    its own randomness: the platform cannot know where a seed goes in someone else's pipeline.
    """
    folder = spec.spec_file.parent if spec.spec_file.is_file() else None
    model = import_factory(spec.estimator.factory or "", folder)(**spec.estimator.params)
    passthrough = [(kind, "passthrough", columns) for kind, columns in
                   (("numeric", spec.features.numeric), ("categorical", spec.features.categorical)) if columns]
    select = ColumnTransformer(passthrough, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("preprocess", select.set_output(transform="pandas")), ("estimator", model)])


def code_tags(spec: ModelSpec) -> dict[str, str]:
    """What a version records of the team's own code: the factory and the fingerprint of its module's source
    (nothing for a spec that names an estimator class: that code is a library, recorded by its version)."""
    if spec.estimator.factory is None:
        return {}
    return {CODE_FACTORY_TAG: spec.estimator.factory, CODE_FINGERPRINT_TAG: code_fingerprint(spec.estimator.factory)}



def split_xy(frame: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, np.ndarray]:
    """Model inputs (numeric as float, categoricals as text) and the target as the model sees it."""
    x = frame[spec.feature_columns].copy()
    for column in spec.features.numeric:
        x[column] = x[column].astype("float64")
    for column in spec.features.categorical:
        x[column] = x[column].astype(object).where(x[column].notna(), None)
    y = frame[spec.target]
    if spec.task == "regression":
        return x, y.to_numpy(dtype="float64")
    return x, y.to_numpy()


def fingerprint(frame: pd.DataFrame, spec: ModelSpec) -> str:
    """SHA-256 over the exact training rows (time, key, features, target) in a stable order."""
    columns = [c for c in spec.modelling_columns if c in frame.columns]
    ordered = frame[columns].sort_values(columns[: 1 + len(spec.source.key)], kind="mergesort").reset_index(drop=True)
    hashed = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(columns).encode())
    return digest.hexdigest()


@dataclass
class Predictions:
    """What a model said about some rows, in the shape metrics and comparisons need."""

    score: np.ndarray  # regression: prediction; binary: P(positive class); multiclass: label index
    label: np.ndarray  # regression: prediction; classification: predicted class
    classes: list | None = None


def predict(model: Pipeline, x: pd.DataFrame, task: str, threshold: float = DECISION_THRESHOLD) -> Predictions:
    """What ``model`` says of ``x``; a binary label is the positive class when P(positive) >= ``threshold`` (the
    spec's ``evaluation.decision_threshold``, :func:`mlplatform.lib.metrics.predicted_positive`)."""
    if task == "regression":
        values = np.asarray(model.predict(x), dtype="float64")
        return Predictions(score=values, label=values)
    classes = list(model.classes_)
    if task == "binary":
        proba = model.predict_proba(x)[:, 1]
        label = np.asarray(classes, dtype=object)[predicted_positive(proba, threshold).astype(int)]
        return Predictions(score=proba, label=label, classes=classes)
    labels = model.predict(x)
    index = {c: i for i, c in enumerate(classes)}
    return Predictions(score=np.array([index[c] for c in labels], dtype=float), label=labels, classes=classes)


def encode_target(y: np.ndarray, task: str, classes: list | None) -> np.ndarray:
    """The target in the metric's encoding: binary -> 1.0 for the positive (second) class; multiclass -> class index."""
    if task == "regression" or classes is None:
        return y.astype("float64")
    if task == "binary":
        return (y == classes[1]).astype("float64")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(c, -1) for c in y], dtype=float)
