"""Explanations of a model version: global importance per spec feature, and the contributions behind one prediction.

Two methods, chosen by the estimator:

- tree models (scikit-learn's forests, gradient boosting, HistGradientBoosting, decision trees): SHAP's
  ``TreeExplainer`` (exact TreeSHAP, path-dependent, no background data needed). Global importance is the mean
  absolute SHAP value per feature; one prediction is explained by its SHAP values.
- every other estimator: global importance is permutation importance (how much the primary metric worsens when
  the feature's values are shuffled); one prediction is explained by Shapley values estimated by permutation
  sampling against a few stored training rows (the "background"): exact for additive models such as a linear or
  logistic regression, an unbiased estimate otherwise, and always summing to the prediction minus the
  background's mean output.

The pipeline one-hot encodes categoricals; contributions are computed on its transformed columns (trees) and
summed back to the spec's features, so a credit officer reads ``checking_account``, not ``checking_account_none``.
What is explained is the model's raw output: the prediction (regression), the log-odds of the positive class
(binary), the score of the predicted class (multiclass; log-probability for non-tree models).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.lib.decision import DECISION_THRESHOLD
from mlplatform.specs.tasks import is_lower_better

EXPLAIN_ROWS = 100
"""Evaluation rows explained per version: the ranking of features is stable well below this, and TreeSHAP's
cost grows with rows (about 1.5 ms a row for a 200-tree HistGradientBoosting model)."""
PERMUTATION_REPEATS = 3
BACKGROUND_ROWS = 30
"""Training rows stored with a non-tree version: what "feature absent" means for its per-prediction Shapley values."""
SAMPLED_PERMUTATIONS = 8
"""Feature orders sampled per explained row (in antithetic pairs) for non-tree models."""
TOP_K = 5
TREE_MODULES = ("sklearn.ensemble", "sklearn.tree", "xgboost", "lightgbm", "catboost")
TREE_SHAP = "tree_shap"
PERMUTATION = "permutation"
SAMPLED_SHAPLEY = "sampled_shapley"
METHOD_TEXT = {
    TREE_SHAP: "SHAP TreeExplainer: mean |SHAP value|",
    PERMUTATION: "permutation importance: mean drop of the primary metric when the feature is shuffled",
}


@dataclass
class Importance:
    """Global importance of every spec feature for one version."""

    method: str  # TREE_SHAP | PERMUTATION
    unit: str  # what the numbers measure
    rows: int  # evaluation rows they were computed on
    table: pd.DataFrame  # feature, importance, share (of the total), std (permutation only); most important first
    notes: list[str] = field(default_factory=list)

    def top(self, k: int = TOP_K) -> list[str]:
        return list(self.table["feature"].head(k))

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "unit": self.unit, "rows": self.rows, "notes": self.notes,
                "features": [{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}
                             for row in self.table.to_dict("records")]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Importance:
        return cls(data["method"], data["unit"], int(data["rows"]), pd.DataFrame(data["features"]),
                   list(data.get("notes", [])))

    def markdown(self, k: int | None = None) -> str:
        shown = self.table if k is None else self.table.head(k)
        lines = ["| feature | importance | share |", "| --- | --- | --- |"]
        lines += [f"| {r.feature} | {r.importance:.4g} | {r.share:.1%} |" for r in shown.itertuples()]
        return "\n".join(lines)


@dataclass
class Contribution:
    feature: str
    value: Any  # the record's value of the feature, as the model received it
    contribution: float

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": self.value, "contribution": self.contribution}


@dataclass
class RowExplanation:
    """One prediction: base value + every feature's contribution = the explained output."""

    output: str  # what is explained, e.g. "log-odds of 'good'"
    base_value: float
    output_value: float
    top: list[Contribution]  # the largest contributions by size, at most k
    rest: float  # the sum of the other features' contributions

    def as_dict(self) -> dict[str, Any]:
        return {"explained_output": self.output, "base_value": self.base_value, "output_value": self.output_value,
                "top_contributions": [c.as_dict() for c in self.top], "other_features": self.rest}


def is_tree_model(estimator: Any) -> bool:
    return type(estimator).__module__.startswith(TREE_MODULES) and not type(estimator).__name__.startswith(
        ("AdaBoost", "Bagging", "Voting", "Stacking", "IsolationForest", "RandomTreesEmbedding"))


def shap_tree_model(estimator: Any) -> Any:
    """What TreeExplainer is given: a single-output HistGradientBoosting model as shap's own tree dictionary.

    shap converts such a model node by node in Python (~0.12 s for 200 trees, as long as explaining 100 rows);
    the same arrays built with numpy take ~5 ms. A test checks the SHAP values are identical. Anything else
    (multiclass boosting, forests) is passed as it is.
    """
    name = type(estimator).__name__
    if name not in ("HistGradientBoostingRegressor", "HistGradientBoostingClassifier") \
            or len(estimator._predictors[0]) != 1:
        return estimator
    trees = []
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].astype(bool)
        left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
        trees.append({
            "children_left": np.where(leaf, -1, left),
            "children_right": np.where(leaf, -1, right),
            "children_default": np.where(leaf, -1, np.where(nodes["missing_go_to_left"].astype(bool), left, right)),
            "features": np.where(leaf, -2, nodes["feature_idx"].astype(np.int64)),
            "thresholds": nodes["num_threshold"].astype(np.float64),
            "values": nodes["value"].astype(np.float64)[:, None],
            "node_sample_weight": nodes["count"].astype(np.float64),
        })
    offset = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)[0]
    return {"trees": trees, "base_offset": offset, "input_dtype": np.float64,
            "tree_output": "raw_value" if name.endswith("Regressor") else "log_odds"}


def source_features(pipeline: Any) -> list[str]:
    """The spec feature behind each column the preprocessing step outputs (one-hot columns share their source)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    preprocess = pipeline.named_steps["preprocess"]
    sources: list[str] = []
    for name, transformer, columns in preprocess.transformers_:
        if name == "remainder" or transformer == "drop":
            continue
        columns = list(columns)
        if transformer == "passthrough":  # a factory's model behind the column selection: one output per column
            sources += [str(c) for c in columns]
            continue
        last = transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer
        if isinstance(last, OneHotEncoder):
            drops = last.drop_idx_ if last.drop_idx_ is not None else [None] * len(columns)
            for column, categories, dropped in zip(columns, last.categories_, drops, strict=True):
                sources += [column] * (len(categories) - (dropped is not None))
        else:  # one output per input column; an imputer may drop an all-missing one
            sources += [str(c) for c in transformer.get_feature_names_out(columns)]
    return sources


class Explainer:
    """Explains one version's predictions in spec features; build once per version (TreeExplainer is not free)."""

    def __init__(self, pipeline: Any, task: str, features: Sequence[str], background: pd.DataFrame | None = None,
                 seed: int = 0):
        self.pipeline = pipeline
        self.task = task
        self.features = list(features)
        self.seed = seed
        self.classes = list(pipeline.classes_) if task != "regression" else None
        estimator = pipeline.named_steps["estimator"]
        self._tree = None
        if is_tree_model(estimator):
            with warnings.catch_warnings():  # shap's import warns about matplotlib colormap calls it makes
                warnings.simplefilter("ignore")
                import shap  # ~1 s to import: only where a tree model is explained
            try:
                self._tree = shap.TreeExplainer(shap_tree_model(estimator))
            except Exception:  # noqa: BLE001 - a tree model shap does not know: fall back to sampling
                self._tree = None
        self.method = TREE_SHAP if self._tree is not None else SAMPLED_SHAPLEY
        if self._tree is not None:
            sources = source_features(pipeline)
            self._map = np.zeros((len(sources), len(self.features)))
            for column, source in enumerate(sources):
                self._map[column, self.features.index(source)] = 1.0
        self.background = background.reset_index(drop=True) if background is not None else None
        if self._tree is None and (self.background is None or self.background.empty):
            raise ValueError("a non-tree model needs background rows (training rows) to explain predictions")

    def output_name(self, class_index: int | None = None) -> str:
        if self.task == "regression":
            return "predicted value"
        probability = self._tree is not None and getattr(self._tree.model, "tree_output", "") == "probability"
        if self.task == "binary":
            return f"{'probability' if probability else 'log-odds'} of '{_class_text(self.classes[1])}'"
        name = f"'{_class_text(self.classes[class_index])}'" if class_index is not None else "the predicted class"
        if probability:
            return f"probability of {name}"
        return f"score of {name}" if self.method == TREE_SHAP else f"log-probability of {name}"

    def contributions(self, x: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(base value per row, contributions per row x spec feature, explained class index per row or None)."""
        classes = None
        if self.task == "multiclass":
            classes = np.asarray([self.classes.index(c) for c in self.pipeline.predict(x)])
        if self._tree is not None:
            return (*self._tree_contributions(x, classes), classes)
        return (*self._sampled(x, classes), classes)

    def _tree_contributions(self, x: pd.DataFrame, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        transformed = np.asarray(self.pipeline[:-1].transform(x), dtype="float64")
        values = np.asarray(self._tree.shap_values(transformed, check_additivity=False))
        expected = np.ravel(np.asarray(self._tree.expected_value, dtype="float64"))
        rows = np.arange(len(x))
        if values.ndim == 3:  # one slice per class (forests, multiclass boosting): (rows, columns, classes)
            pick = classes if classes is not None else np.full(len(x), values.shape[2] - 1)
            values, base = values[rows, :, pick], expected[pick]
        else:
            base = np.full(len(x), expected[-1] if len(expected) else 0.0)
        return base, values @ self._map

    def _output(self, x: pd.DataFrame, classes: np.ndarray | None) -> np.ndarray:
        if self.task == "regression":
            return np.asarray(self.pipeline.predict(x), dtype="float64")
        proba = np.clip(np.asarray(self.pipeline.predict_proba(x), dtype="float64"), 1e-12, 1 - 1e-12)
        if self.task == "binary":
            return np.log(proba[:, 1]) - np.log(proba[:, 0])
        return np.log(proba[np.arange(len(x)), classes])

    def _sampled(self, x: pd.DataFrame, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Shapley values by sampled feature orders (antithetic pairs), every row against the background rows.

        For an order, features switch one by one from the background's values to the row's; each feature gets
        the mean change of the output at its switch. Per order the changes add up to f(row) - mean f(background).
        """
        rng = np.random.default_rng(self.seed)
        n_features, background = len(self.features), self.background
        half = max(1, SAMPLED_PERMUTATIONS // 2)
        orders = [rng.permutation(n_features) for _ in range(half)]
        orders += [order[::-1] for order in orders]
        # switched[s, f]: feature f holds the row's value at step s (of n_features + 1 steps per order)
        switched = np.zeros((len(orders) * (n_features + 1), n_features), dtype=bool)
        for o, order in enumerate(orders):
            for step in range(1, n_features + 1):
                switched[o * (n_features + 1) + step, order[:step]] = True
        k = len(background)
        repeat = np.repeat(switched, k, axis=0)  # each state applied to every background row
        base_values, contributions = np.zeros(len(x)), np.zeros((len(x), n_features))
        for r in range(len(x)):
            frame = {}
            for f, feature in enumerate(self.features):
                column = np.tile(background[feature].to_numpy(dtype=object), len(switched))
                column[repeat[:, f]] = x[feature].iloc[r]
                frame[feature] = column
            states = pd.DataFrame(frame).astype({c: x[c].dtype for c in self.features})
            row_class = None if classes is None else np.full(len(states), classes[r])
            out = self._output(states, row_class).reshape(len(switched), k).mean(axis=1)
            out = out.reshape(len(orders), n_features + 1)
            steps = np.diff(out, axis=1)
            for o, order in enumerate(orders):
                contributions[r, order] += steps[o]
            contributions[r] /= len(orders)
            base_values[r] = out[0, 0]
        return base_values, contributions

    def explain(self, x: pd.DataFrame, top_k: int = TOP_K) -> list[RowExplanation]:
        """Each row's explanation: its top-k contributions (by size) with the row's values."""
        base, contributions, classes = self.contributions(x)
        explained = []
        for r in range(len(x)):
            order = np.argsort(-np.abs(contributions[r]), kind="stable")
            top = [Contribution(self.features[f], _plain(x[self.features[f]].iloc[r]), float(contributions[r, f]))
                   for f in order[:top_k]]
            rest = float(contributions[r, order[top_k:]].sum())
            explained.append(RowExplanation(self.output_name(None if classes is None else int(classes[r])),
                                            float(base[r]), float(base[r] + contributions[r].sum()), top, rest))
        return explained


def explain_prediction(explainer: Explainer, record: Mapping[str, Any], top_k: int = TOP_K) -> RowExplanation:
    """The contributions behind one prediction (a record of spec feature -> value, as the model takes it)."""
    frame = pd.DataFrame([{f: record.get(f) for f in explainer.features}])
    return explainer.explain(_typed(frame, explainer.pipeline), top_k)[0]


def _typed(frame: pd.DataFrame, pipeline: Any) -> pd.DataFrame:
    """Numeric columns as float (None -> NaN), as ``split_xy`` gives them to the model."""
    numeric: list[str] = []
    for name, _, columns in pipeline.named_steps["preprocess"].transformers_:
        if name == "numeric":
            numeric = list(columns)
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def global_importance(pipeline: Any, x: pd.DataFrame, y_metric: np.ndarray, task: str, metric: str,
                      max_rows: int = EXPLAIN_ROWS, seed: int = 0, method: str | None = None,
                      threshold: float = DECISION_THRESHOLD) -> Importance:
    """Importance of each spec feature on (a fixed sample of) evaluation rows: TreeSHAP for trees, else permutation.

    ``method`` forces one (TREE_SHAP or PERMUTATION), for comparisons; ``threshold`` is the spec's
    ``evaluation.decision_threshold`` (a metric like f1 decides at it).
    """
    sample = _sample(len(x), max_rows, seed)
    x, y = x.iloc[sample].reset_index(drop=True), np.asarray(y_metric)[sample]
    features = list(x.columns)
    if method is None:
        method = TREE_SHAP if is_tree_model(pipeline.named_steps["estimator"]) else PERMUTATION
    if method == TREE_SHAP:
        explainer = Explainer(pipeline, task, features, seed=seed)
        if explainer.method == TREE_SHAP:
            _, contributions, _ = explainer.contributions(x)
            values = np.abs(contributions).mean(axis=0)
            unit = f"mean |SHAP value| on the {explainer.output_name()} scale"
            return Importance(TREE_SHAP, unit, len(x), _table(features, values))
    return permutation_importance(pipeline, x, y, task, metric, seed, threshold=threshold)


def permutation_importance(pipeline: Any, x: pd.DataFrame, y_metric: np.ndarray, task: str, metric: str,
                           seed: int = 0, repeats: int = PERMUTATION_REPEATS, threshold: float = DECISION_THRESHOLD) -> Importance:
    """How much ``metric`` worsens when one feature's values are shuffled (raw columns: one-hot groups move together)."""
    from sklearn.inspection import permutation_importance as sklearn_permutation

    from mlplatform.lib.metrics import metric_value
    from mlplatform.lib.training import predict

    sign = -1.0 if is_lower_better(metric) else 1.0

    def score(model: Any, frame: pd.DataFrame, y: np.ndarray) -> float:
        value = metric_value(metric, y, predict(model, frame, task, threshold).score, threshold)
        return sign * value if math.isfinite(value) else 0.0

    result = sklearn_permutation(pipeline, x, y_metric, scoring=score, n_repeats=repeats, random_state=seed)
    notes = [] if len(np.unique(y_metric)) > 1 or task == "regression" else \
        [f"the sample holds a single class: {metric} is undefined, importances are 0"]
    return Importance(PERMUTATION, f"mean drop of {metric} when shuffled ({repeats} repeats)", len(x),
                      _table(list(x.columns), result.importances_mean, result.importances_std), notes)


def _table(features: list[str], values: np.ndarray, std: np.ndarray | None = None) -> pd.DataFrame:
    values = np.asarray(values, dtype="float64")
    total = np.clip(values, 0, None).sum()
    table = pd.DataFrame({"feature": features, "importance": values,
                          "share": np.clip(values, 0, None) / total if total > 0 else 0.0})
    if std is not None:
        table["std"] = np.asarray(std, dtype="float64")
    return table.sort_values(["importance", "feature"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _sample(n: int, max_rows: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False)) if n > max_rows else np.arange(n)


def background_rows(x_train: pd.DataFrame, rows: int = BACKGROUND_ROWS, seed: int = 0) -> pd.DataFrame:
    """A fixed sample of training rows: the reference a non-tree version's per-prediction Shapley values are against."""
    return x_train.iloc[_sample(len(x_train), rows, seed)].reset_index(drop=True)


def importance_plot(importance: Importance, title: str, k: int = 15) -> bytes:
    """A horizontal bar per feature (the k most important), most important at the top."""
    from mlplatform.lib.plots import bar_plot

    shown = importance.table.head(k)
    return bar_plot(list(shown["feature"]), list(shown["importance"]), importance.unit, title)


def _class_text(value: Any) -> str:
    """A class as people write it: ``1`` for a float 1.0 or numpy scalar, text as it is."""
    value = _plain(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
