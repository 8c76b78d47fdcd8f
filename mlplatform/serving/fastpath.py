"""A numpy twin of the pipeline's preprocessing, so a small request does not pay pandas + ColumnTransformer.

``build_pipeline`` makes ColumnTransformer(numeric: median SimpleImputer, categorical: constant SimpleImputer ->
OneHotEncoder(handle_unknown="ignore")). Through pandas that costs ~1-5 ms a call whatever the row count; the same
arithmetic on plain lists costs microseconds. The twin is only used when the fitted pipeline has exactly that
structure AND it reproduces the pipeline's own transform bit for bit on a probe of every known category, an unknown
one, nulls and assorted numbers; otherwise the pipeline is used as it is. The estimator always does its own work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MISSING_CATEGORY = "(missing)"


@dataclass(frozen=True)
class FastPreprocess:
    numeric: tuple[str, ...]
    medians: tuple[float, ...]
    categorical: tuple[str, ...]
    positions: tuple[dict[Any, int], ...]  # per categorical column: category -> column offset in its one-hot block
    offsets: tuple[int, ...]
    width: int

    def probe_rows(self) -> list[dict[str, Any]]:
        return _probe_rows(self)

    def transform(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        out = np.zeros((len(rows), self.width), dtype="float64")
        for i, row in enumerate(rows):
            line = out[i]
            for j, (column, median) in enumerate(zip(self.numeric, self.medians, strict=True)):
                value = row[column]
                line[j] = median if value is None or value != value else value
            for column, positions, offset in zip(self.categorical, self.positions, self.offsets, strict=True):
                value = row[column]
                position = positions.get(MISSING_CATEGORY if value is None else value)
                if position is not None:
                    line[offset + position] = 1.0
        return out


def compile_preprocess(pipeline: Any, numeric: Sequence[str], categorical: Sequence[str]) -> FastPreprocess | None:
    """The twin of ``pipeline``'s preprocessing, or None when it has another structure or disagrees on the probe."""
    try:
        fast = _build(pipeline, list(numeric), list(categorical))
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return None
    if fast is None:
        return None
    probe = _probe_rows(fast)
    frame = pd.DataFrame({**{c: np.array([r[c] if r[c] is not None else np.nan for r in probe], "float64")
                             for c in fast.numeric},
                          **{c: np.array([r[c] for r in probe], dtype=object) for c in fast.categorical}})
    try:
        expected = np.asarray(pipeline.named_steps["preprocess"].transform(frame), dtype="float64")
    except Exception:  # noqa: BLE001 - if the pipeline cannot even transform the probe, do not second-guess it
        return None
    got = fast.transform(probe)
    if expected.shape != got.shape or not np.array_equal(expected, got, equal_nan=True):
        return None
    return fast


def _build(pipeline: Any, numeric: list[str], categorical: list[str]) -> FastPreprocess | None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if not isinstance(pipeline, Pipeline) or [name for name, _ in pipeline.steps] != ["preprocess", "estimator"]:
        return None
    preprocess = pipeline.named_steps["preprocess"]
    if not isinstance(preprocess, ColumnTransformer) or preprocess.sparse_output_:
        return None
    medians: tuple[float, ...] = ()
    positions: list[dict[Any, int]] = []
    offsets: list[int] = []
    seen = set()
    for name, transformer, columns in preprocess.transformers_:
        if name == "remainder":
            if transformer != "drop":
                return None
            continue
        seen.add(name)
        if name == "numeric":
            if list(columns) != numeric or not isinstance(transformer, SimpleImputer) \
                    or transformer.strategy != "median" or transformer.add_indicator:
                return None
            statistics = [float(s) for s in transformer.statistics_]
            if any(math.isnan(s) for s in statistics):  # an all-null training column is dropped from the output
                return None
            medians = tuple(statistics)
        elif name == "categorical":
            if list(columns) != categorical or not isinstance(transformer, Pipeline):
                return None
            impute, encode = transformer.named_steps.get("impute"), transformer.named_steps.get("encode")
            if not isinstance(impute, SimpleImputer) or impute.strategy != "constant" \
                    or impute.fill_value != MISSING_CATEGORY or impute.add_indicator \
                    or not isinstance(encode, OneHotEncoder) or encode.handle_unknown != "ignore" \
                    or encode.drop is not None or encode.min_frequency is not None \
                    or encode.max_categories is not None or len(transformer.steps) != 2:
                return None
            offset = len(numeric)
            for categories in encode.categories_:
                if any(not isinstance(c, str) for c in categories):
                    return None
                positions.append({c: k for k, c in enumerate(categories)})
                offsets.append(offset)
                offset += len(categories)
        else:
            return None
    if (numeric and "numeric" not in seen) or (categorical and "categorical" not in seen):
        return None
    width = len(numeric) + sum(len(p) for p in positions)
    return FastPreprocess(tuple(numeric), medians, tuple(categorical), tuple(positions), tuple(offsets), width)


def _probe_rows(fast: FastPreprocess) -> list[dict[str, Any]]:
    """Every known category, an unknown one and a null per categorical; nulls, zero, negatives and big numbers."""
    numbers = [None, 0.0, -3.5, 1.25, 1e9, float("nan")]
    longest = max([len(p) for p in fast.positions] + [len(numbers)]) + 2
    rows = []
    for i in range(longest):
        row: dict[str, Any] = {}
        for j, column in enumerate(fast.numeric):
            row[column] = numbers[(i + j) % len(numbers)]
        for column, positions in zip(fast.categorical, fast.positions, strict=True):
            choices = [*positions, None, "(an unknown category)"]
            row[column] = choices[i % len(choices)]
        rows.append(row)
    return rows


@dataclass(frozen=True)
class FlatTrees:
    """A fitted HistGradientBoosting ensemble as flat arrays, traversed for every tree at once.

    scikit-learn calls each tree's predictor from Python (~25 us a tree here: 2.5 ms for car_loan's 100 trees,
    whatever the row count). Walking all trees together costs a few numpy operations per tree level. The sum is
    taken in scikit-learn's order (baseline, then tree by tree, with a sequential cumulative sum), so the raw
    predictions are the same numbers, bit for bit; :func:`compile_trees` checks that before it is used.
    """

    estimator: Any
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    tree_class: np.ndarray
    depth: int
    # The walk's arrays: a leaf splits on feature 0 and both its children are itself, so rows that reached a leaf
    # stay there while the others go on (no leaf test per step); children[2 * node + goes_right].
    split_feature: np.ndarray = None  # type: ignore[assignment]
    split_threshold: np.ndarray = None  # type: ignore[assignment]
    missing_right: np.ndarray = None  # type: ignore[assignment]
    children: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        nodes = np.arange(len(self.is_leaf))
        leaf = self.is_leaf
        object.__setattr__(self, "split_feature", np.where(leaf, 0, self.feature))
        object.__setattr__(self, "split_threshold", np.where(leaf, np.inf, self.threshold))
        object.__setattr__(self, "missing_right", ~self.missing_left & ~leaf)
        children = np.empty(2 * len(nodes), dtype=np.intp)
        children[0::2] = np.where(leaf, nodes, self.left)
        children[1::2] = np.where(leaf, nodes, self.right)
        object.__setattr__(self, "children", children)

    def raw_predict(self, x: np.ndarray) -> np.ndarray:
        rows, width = x.shape
        current = np.tile(self.roots, (rows, 1))
        flat = np.ascontiguousarray(x, dtype="float64").ravel()
        offsets = (np.arange(rows) * width)[:, None]
        with_missing = bool(np.isnan(flat).any())
        # A leaf's two children are itself (see compile_trees), so every row takes ``depth`` steps, no leaf checks.
        for _ in range(self.depth - 1):
            values = flat[offsets + self.split_feature[current]]
            right = values > self.split_threshold[current]  # NaN compares False: fixed just below
            if with_missing:
                right |= np.isnan(values) & self.missing_right[current]
            current = self.children[2 * current + right]
        leaf_values = self.value[current]
        baseline = self.estimator._baseline_prediction
        raw = np.empty((rows, baseline.shape[1]), dtype=baseline.dtype, order="F")
        for k in range(baseline.shape[1]):
            steps = np.concatenate([np.full((rows, 1), baseline[0, k]), leaf_values[:, self.tree_class == k]], axis=1)
            raw[:, k] = np.cumsum(steps, axis=1)[:, -1]
        return raw

    def predict(self, x: np.ndarray) -> np.ndarray:
        """What the estimator's ``predict`` (regression) or ``predict_proba`` (classification) returns."""
        raw = self.raw_predict(x)
        if hasattr(self.estimator, "classes_"):
            return self.estimator._loss.predict_proba(raw)
        return self.estimator._loss.link.inverse(raw.ravel())


def compile_trees(estimator: Any, probe: np.ndarray) -> FlatTrees | None:
    """The flat twin of a HistGradientBoosting estimator, or None (another estimator, categorical splits, or any
    difference from the estimator's own raw predictions on ``probe`` plus rows built on every split threshold)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if not isinstance(estimator, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        return None
    try:
        if getattr(estimator, "_preprocessor", None) is not None or probe.shape[1] != estimator.n_features_in_:
            return None
        parts, roots, classes, offset = [], [], [], 0
        for iteration in estimator._predictors:
            for k, predictor in enumerate(iteration):
                nodes = predictor.nodes
                if nodes["is_categorical"].any():
                    return None
                parts.append((nodes, offset))
                roots.append(offset)
                classes.append(k)
                offset += len(nodes)
        nodes = np.concatenate([n for n, _ in parts])
        shift = np.concatenate([np.full(len(n), o, dtype=np.intp) for n, o in parts])
        trees = FlatTrees(
            estimator=estimator,
            feature=nodes["feature_idx"].astype(np.intp),
            threshold=nodes["num_threshold"].astype("float64"),
            missing_left=nodes["missing_go_to_left"].astype(bool),
            left=nodes["left"].astype(np.intp) + shift,
            right=nodes["right"].astype(np.intp) + shift,
            is_leaf=nodes["is_leaf"].astype(bool),
            value=nodes["value"].astype("float64"),
            roots=np.asarray(roots, dtype=np.intp),
            tree_class=np.asarray(classes, dtype=np.intp),
            depth=int(nodes["depth"].max()) + 1,
        )
        check = np.vstack([probe, _threshold_rows(trees, probe.shape[1])])
        if not np.array_equal(trees.raw_predict(check), estimator._raw_predict(check)):
            return None
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return None
    return trees


def _threshold_rows(trees: FlatTrees, width: int, count: int = 64) -> np.ndarray:
    """Rows whose values sit exactly on split thresholds, just above them, or are missing."""
    rng = np.random.default_rng(0)
    splits = ~trees.is_leaf
    candidates = [np.unique(trees.threshold[splits & (trees.feature == j)]) for j in range(width)]
    rows = np.zeros((count, width))
    for j, thresholds in enumerate(candidates):
        pool = np.concatenate([thresholds, np.nextafter(thresholds, np.inf), [np.nan, 0.0, 1.0]])
        rows[:, j] = rng.choice(pool, size=count)
    return rows
