"""Fairness of a model's predictions across groups of a sensitive attribute, with fairlearn.

The gate asks one question per sensitive attribute: do the groups get the model's outcome at
rates (or, for regression, at levels) that differ by more than the spec allows? Each attribute is
judged on its own (not the intersection of attributes): intersections of a 1,000-row dataset
leave groups too small to say anything. Groups smaller than ``min_group_rows`` are reported
but left out of the differences: a rate measured on a handful of rows would fail or pass the
gate by chance.

Quantities per task (docs/fairness.md):

- binary: "selected" = predicted the positive class (the second of the sorted classes, when its
  probability is at least the spec's ``evaluation.decision_threshold``, default 0.5). Per group:
  selection rate, true and false positive rates and the primary metric. Parity = fairlearn's
  ``demographic_parity_difference`` (largest gap in selection rate); equalized odds =
  ``equalized_odds_difference`` (largest gap in TPR or FPR), over the groups that hold both classes.
- multiclass: the selection rate of every class per group; parity = the largest gap over classes.
- regression: mean prediction and mean absolute error per group; parity = (largest - smallest
  group mean prediction) / |mean prediction of all deciding rows|, a relative gap.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlplatform.lib.decision import DECISION_THRESHOLD, predicted_positive
from mlplatform.lib.metrics import metric_value

MISSING_GROUP = "(missing)"


@dataclass
class AttributeFairness:
    """One sensitive attribute's groups and the differences between them."""

    attribute: str
    table: pd.DataFrame  # one row per group: group, rows, decides, then the task's quantities
    parity_difference: float | None  # None: fewer than two groups large enough to compare
    equalized_odds_difference: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class FairnessReport:
    task: str
    attributes: list[AttributeFairness]
    max_parity_difference: float
    max_equalized_odds_difference: float | None
    min_group_rows: int
    problems: list[str]  # one line per difference above its limit; empty when the gate passes

    @property
    def passed(self) -> bool:
        return not self.problems


def band_labels(values: pd.Series, edges: Sequence[float]) -> pd.Series:
    """Numbers into labelled bands: edges [25, 35] give ``<25``, ``25-35`` (25 included, 35 not), ``>=35``."""
    numbers = pd.to_numeric(values, errors="coerce")
    edges = sorted(float(e) for e in edges)
    names = [f"<{_num(edges[0])}"] + [f"{_num(lo)}-{_num(hi)}" for lo, hi in zip(edges, edges[1:], strict=False)]
    names.append(f">={_num(edges[-1])}")
    index = np.searchsorted(np.asarray(edges), numbers.to_numpy(dtype=float), side="right")
    labels = pd.Series([names[i] for i in index], index=values.index, dtype=object)
    labels[numbers.isna().to_numpy()] = MISSING_GROUP
    return labels


def group_labels(rows: pd.DataFrame, sensitive: Sequence[str],
                 bands: Mapping[str, Sequence[float]] | None = None) -> dict[str, pd.Series]:
    """Each sensitive attribute's group per row, as text: banded when the spec gives bands, missing as a group."""
    bands = bands or {}
    groups = {}
    for column in sensitive:
        if column in bands:
            groups[f"{column} (banded)"] = band_labels(rows[column], bands[column])
        else:
            values = rows[column]
            groups[column] = values.astype(object).where(values.notna(), MISSING_GROUP).map(str)
    return groups


def fairness_report(task: str, y_true: np.ndarray, score: np.ndarray, groups: Mapping[str, pd.Series], metric: str,
                    max_parity_difference: float, max_equalized_odds_difference: float | None = None,
                    min_group_rows: int = 20, threshold: float = DECISION_THRESHOLD) -> FairnessReport:
    """Per-group quantities and differences of one week's predictions; the gate's verdict is ``passed``.

    ``y_true`` and ``score`` are in the metric encoding of :mod:`mlplatform.lib.training`: binary 0/1
    and the positive class's probability (selected when at least ``threshold``); multiclass class indices;
    regression the values.
    """
    y_true = np.asarray(y_true, dtype=float)
    score = np.asarray(score, dtype=float)
    attributes, problems = [], []
    for attribute, labels in groups.items():
        labels = np.asarray(labels, dtype=object)
        result = _attribute(task, y_true, score, labels, attribute, metric, min_group_rows, threshold)
        attributes.append(result)
        if result.parity_difference is not None and result.parity_difference > max_parity_difference:
            problems.append(f"{attribute}: {_parity_name(task)} {result.parity_difference:.3f} above "
                            f"{max_parity_difference:g}")
        eo = result.equalized_odds_difference
        if max_equalized_odds_difference is not None and eo is not None and eo > max_equalized_odds_difference:
            problems.append(f"{attribute}: equalized odds difference {eo:.3f} above {max_equalized_odds_difference:g}")
    return FairnessReport(task, attributes, max_parity_difference, max_equalized_odds_difference, min_group_rows,
                          problems)


def _attribute(task: str, y_true: np.ndarray, score: np.ndarray, labels: np.ndarray, attribute: str, metric: str,
               min_group_rows: int, threshold: float) -> AttributeFairness:
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    groups, sizes = np.unique(labels.astype(str), return_counts=True)
    labels = labels.astype(str)
    deciding = {g for g, n in zip(groups, sizes, strict=True) if n >= min_group_rows}
    small = sorted(set(groups) - deciding)
    notes = [f"groups with fewer than {min_group_rows} rows are shown but do not decide: {', '.join(small)}"] if small else []
    in_deciding = np.isin(labels, sorted(deciding))
    per_group_metric = {g: metric_value(metric, y_true[labels == g], score[labels == g], threshold) for g in groups}
    parity = eo = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rates of a group without positives or negatives: reported as they come
        if task == "binary":
            y_pred = predicted_positive(score, threshold).astype(int)
            frame = MetricFrame(metrics={"rows": count, "selection_rate": selection_rate,
                                         "true_positive_rate": true_positive_rate,
                                         "false_positive_rate": false_positive_rate},
                                y_true=y_true.astype(int), y_pred=y_pred, sensitive_features=labels).by_group
            if len(deciding) >= 2:
                parity = float(demographic_parity_difference(y_true[in_deciding].astype(int), y_pred[in_deciding],
                                                             sensitive_features=labels[in_deciding]))
                both = [g for g in deciding if 0 < y_true[labels == g].sum() < (labels == g).sum()]
                one_class = sorted(deciding - set(both))
                if one_class:
                    notes.append(f"groups holding a single class are left out of equalized odds: {', '.join(one_class)}")
                mask = np.isin(labels, both)
                if len(both) >= 2:
                    eo = float(equalized_odds_difference(y_true[mask].astype(int), y_pred[mask],
                                                         sensitive_features=labels[mask]))
        elif task == "multiclass":
            classes = np.unique(np.concatenate([y_true, score])).astype(int)
            metrics = {"rows": count} | {f"selection_rate[{c}]": _class_rate(c) for c in classes}
            frame = MetricFrame(metrics=metrics, y_true=y_true.astype(int), y_pred=score.astype(int),
                                sensitive_features=labels).by_group
            if len(deciding) >= 2:
                parity = max(float(demographic_parity_difference(
                    (y_true[in_deciding] == c).astype(int), (score[in_deciding] == c).astype(int),
                    sensitive_features=labels[in_deciding])) for c in classes)
        else:
            frame = MetricFrame(metrics={"rows": count, "mean_prediction": _mean_prediction,
                                         "mean_absolute_error": _mae},
                                y_true=y_true, y_pred=score, sensitive_features=labels).by_group
            if len(deciding) >= 2:
                means = frame.loc[sorted(deciding), "mean_prediction"].astype(float)
                overall = abs(float(np.mean(score[in_deciding])))
                parity = float((means.max() - means.min()) / overall) if overall > 0 else float("inf")
    if len(deciding) < 2:
        notes.append(f"fewer than two groups with at least {min_group_rows} rows: nothing to compare")
    table = frame.reset_index(names="group")
    table = table.iloc[sorted(range(len(table)), key=lambda i: _group_order(str(table["group"].iloc[i])))]
    table = table.reset_index(drop=True)
    table["rows"] = table["rows"].astype(int)
    table[metric] = [per_group_metric[g] for g in table["group"]]
    table.insert(2, "decides", [g in deciding for g in table["group"]])
    return AttributeFairness(attribute, table, parity, eo, notes)


def _class_rate(cls: int):
    def rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(np.mean(np.asarray(y_pred) == cls)) if len(y_pred) else float("nan")
    return rate


def _mean_prediction(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_pred))


def _mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred))))


def _parity_name(task: str) -> str:
    return {"binary": "demographic parity difference", "multiclass": "largest selection-rate gap over classes",
            "regression": "relative gap of group mean predictions"}[task]


def _group_order(group: str) -> tuple[float, str]:
    """Bands in numeric order (<25, 25-35, ..., >=50); other groups by name; the missing group last."""
    if group == MISSING_GROUP:
        return (float("inf"), group)
    for prefix, offset in (("<", -0.5), (">=", 0.5)):
        if group.startswith(prefix) and _is_number(group[len(prefix):]):
            return (float(group[len(prefix):]) + offset, "")
    low, dash, _ = group.partition("-")
    if dash and _is_number(low):
        return (float(low), "")
    return (float("-inf"), group)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _num(value: float) -> str:
    return f"{value:g}"


def markdown(report: FairnessReport) -> str:
    """The per-group tables of every attribute, as markdown (the gate's metadata in the UI, gates.json in MLflow)."""
    parts = []
    for item in report.attributes:
        header = list(item.table.columns)
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        for row in item.table.itertuples(index=False):
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        summary = f"**{item.attribute}**: {_parity_name(report.task)} {_opt(item.parity_difference)}"
        if report.task == "binary":
            summary += f", equalized odds difference {_opt(item.equalized_odds_difference)}"
        parts.append("\n".join([summary, "", *lines, *(f"\n_{note}_" for note in item.notes)]))
    return "\n\n".join(parts)


def _cell(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no (too few rows)"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
