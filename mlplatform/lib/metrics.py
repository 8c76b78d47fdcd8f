"""Metrics per task, vectorised so bootstrap intervals and paired comparisons stay cheap.

Every metric here takes ``(y, score)`` arrays where ``score`` is the regression
prediction, the positive-class probability (binary) or the predicted label index
(multiclass), plus a 2-D index array of bootstrap resamples, and returns one
value per resample. One implementation serves the point estimate (a single
resample of all rows), the confidence interval and the champion comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from scipy.stats import rankdata

from mlplatform.lib.decision import DECISION_THRESHOLD, predicted_positive
from mlplatform.specs.tasks import METRICS_BY_TASK, is_lower_better
from mlplatform.specs.team_metrics import TeamMetric, registered

EPS = 1e-15
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _rmse(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((y[idx] - s[idx]) ** 2, axis=1))


def _mae(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.mean(np.abs(y[idx] - s[idx]), axis=1)


def _r2(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    yy = y[idx]
    residual = np.sum((yy - s[idx]) ** 2, axis=1)
    total = np.sum((yy - yy.mean(axis=1, keepdims=True)) ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), 0.0)


def _log_loss(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    p = np.clip(s[idx], EPS, 1 - EPS)
    yy = y[idx]
    return -np.mean(yy * np.log(p) + (1 - yy) * np.log(1 - p), axis=1)


def _brier(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.mean((s[idx] - y[idx]) ** 2, axis=1)


def _roc_auc(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC with average ranks for ties; NaN when a resample has one class only."""
    scores, labels = s[idx], y[idx]
    ranks = rankdata(scores, axis=1, method="average")
    n = scores.shape[1]
    positives = labels.sum(axis=1)
    negatives = n - positives
    rank_sum = np.sum(ranks * labels, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def _pr_auc(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average precision as scikit-learn defines it: precision at each distinct threshold, weighted by recall gained."""
    scores, labels = s[idx], y[idx]
    order = np.argsort(-scores, axis=1, kind="mergesort")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    hits = np.take_along_axis(labels, order, axis=1)
    n = scores.shape[1]
    precision = np.cumsum(hits, axis=1) / np.arange(1, n + 1)
    # Tied scores form one threshold: every row of a tie group uses the precision at the group's end.
    group_end = np.ones_like(sorted_scores, dtype=bool)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    end_index = np.where(group_end, np.arange(n), n)
    end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(precision, end_index, axis=1)
    positives = hits.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.sum(precision_at_end * hits, axis=1) / positives
    return np.where(positives > 0, ap, np.nan)


def _f1(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    predicted, labels = predicted_positive(s[idx], threshold).astype(float), y[idx]
    tp = np.sum(predicted * labels, axis=1)
    fp = np.sum(predicted * (1 - labels), axis=1)
    fn = np.sum((1 - predicted) * labels, axis=1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)


def _accuracy(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.mean(y[idx] == s[idx], axis=1)


def _macro_f1(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Macro F1 over the classes present in the true labels or predictions of all rows."""
    labels, predicted = y[idx], s[idx]
    classes = np.unique(np.concatenate([y, s]))
    scores = []
    for cls in classes:
        t, p = labels == cls, predicted == cls
        tp = np.sum(t & p, axis=1)
        denominator = np.sum(t, axis=1) + np.sum(p, axis=1)
        scores.append(np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0))
    return np.mean(scores, axis=0)


METRIC_FUNCTIONS: dict[str, Metric] = {
    "rmse": _rmse, "mae": _mae, "r2": _r2,
    "roc_auc": _roc_auc, "pr_auc": _pr_auc, "f1": _f1, "log_loss": _log_loss, "brier": _brier,
    "accuracy": _accuracy, "macro_f1": _macro_f1,
}


def metric_function(metric: str, threshold: float = DECISION_THRESHOLD) -> Metric:
    """The metric's vectorised function; a metric that needs a decision (f1) decides at ``threshold``. A team's own
    metric (registered when its spec loaded, :mod:`mlplatform.specs.team_metrics`) is called once per resample."""
    function = METRIC_FUNCTIONS.get(metric)
    if function is None:
        team = registered(metric)
        if team is None:
            raise KeyError(f"unknown metric {metric!r}: not built in, and no loaded spec defines it under `metrics`")
        return partial(_team_metric, team=team, threshold=threshold)
    return partial(function, threshold=threshold) if metric == "f1" else function


def _team_metric(y: np.ndarray, s: np.ndarray, idx: np.ndarray, team: TeamMetric,
                 threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """A team's ``function(y_true, y_pred)`` on every resample; a binary model's y_pred is its decision at
    ``threshold`` unless the metric reads probabilities."""
    predicted = s
    if team.task == "binary" and not team.needs_probabilities:
        predicted = predicted_positive(s, threshold).astype("float64")
    return np.array([float(team.function(y[rows], predicted[rows])) for rows in idx], dtype="float64")


def _sum_columns(metric: str, y: np.ndarray, s: np.ndarray,
                 threshold: float = DECISION_THRESHOLD) -> np.ndarray | None:
    """Per-row columns whose sums over a resample determine the metric; None when it needs the rows' order (AUCs).

    A bootstrap then counts how often each row was drawn and multiplies, instead of gathering
    every resampled row of y and score for every metric (measured in docs/benchmarks.md).
    """
    if metric in ("rmse", "brier"):
        return ((y - s) ** 2)[:, None]
    if metric == "mae":
        return np.abs(y - s)[:, None]
    if metric == "r2":
        return np.column_stack([(y - s) ** 2, y, y * y])
    if metric == "log_loss":
        p = np.clip(s, EPS, 1 - EPS)
        return (-(y * np.log(p) + (1 - y) * np.log(1 - p)))[:, None]
    if metric == "accuracy":
        return (y == s).astype(float)[:, None]
    if metric == "f1":
        predicted = predicted_positive(s, threshold).astype(float)
        return np.column_stack([predicted * y, predicted * (1 - y), (1 - predicted) * y])
    return None


def _from_sums(metric: str, sums: np.ndarray, n_rows: int) -> np.ndarray:
    """The metric per resample from the column sums of :func:`_sum_columns` (one row of ``sums`` per resample)."""
    if metric == "rmse":
        return np.sqrt(sums[:, 0] / n_rows)
    if metric == "r2":
        residual, total = sums[:, 0], sums[:, 2] - sums[:, 1] ** 2 / n_rows
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), 0.0)
    if metric == "f1":
        tp, fp, fn = sums[:, 0], sums[:, 1], sums[:, 2]
        denominator = 2 * tp + fp + fn
        return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)
    return sums[:, 0] / n_rows


MAX_RESAMPLE_CELLS = 4_000_000
"""Resampled rows held at once (resamples x rows): bounds memory to ~100 MB whatever the week's size."""


def resample_batches(n_rows: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples (rows drawn with replacement) in batches; fixed seed, so reports are reproducible."""
    rng = np.random.default_rng(seed)
    per_batch = max(1, min(n_resamples, MAX_RESAMPLE_CELLS // max(n_rows, 1)))
    for start in range(0, n_resamples, per_batch):
        yield rng.integers(0, n_rows, size=(min(per_batch, n_resamples - start), n_rows), dtype=np.int32)


def draw_counts(idx: np.ndarray, n_rows: int) -> np.ndarray:
    """How often each row was drawn in each resample (resamples x rows), as floats ready to multiply."""
    offsets = np.arange(idx.shape[0], dtype=np.int64)[:, None] * n_rows
    flat = np.bincount((idx + offsets).ravel(), minlength=idx.shape[0] * n_rows)
    return flat.reshape(idx.shape[0], n_rows).astype(np.float64)


def resampled_metric(metric: str, y: np.ndarray, s: np.ndarray, idx: np.ndarray, counts: np.ndarray | None,
                     columns: np.ndarray | None, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """The metric on every resample of ``idx``, from the resamples' column sums when it is a function of sums.

    With ``counts`` (resamples x rows, :func:`draw_counts`) the sums are one matrix product, cheapest when several metrics share the
    resamples; without, each column is gathered (cheapest for one or two columns).
    """
    if columns is None:
        return metric_function(metric, threshold)(y, s, idx)
    if counts is not None:
        return _from_sums(metric, counts @ columns, len(y))
    sums = np.stack([columns[:, j][idx].sum(axis=1) for j in range(columns.shape[1])], axis=1)
    return _from_sums(metric, sums, len(y))


@dataclass(frozen=True)
class MetricEstimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def metric_value(metric: str, y: np.ndarray, score: np.ndarray, threshold: float = DECISION_THRESHOLD) -> float:
    return float(metric_function(metric, threshold)(y, score, np.arange(len(y))[None, :])[0])


def evaluate(task: str, y: np.ndarray, score: np.ndarray, n_resamples: int = 300, seed: int = 0,
             confidence: float = 0.95, threshold: float = DECISION_THRESHOLD,
             extra: Sequence[str] = ()) -> dict[str, MetricEstimate]:
    """Every metric of the task, and the team metrics named in ``extra`` (a spec's ``metrics``), with a percentile
    bootstrap interval (all metrics on the same resamples); a binary decision (f1) is made at ``threshold`` (the
    spec's ``evaluation.decision_threshold``)."""
    metrics = tuple(dict.fromkeys((*METRICS_BY_TASK[task], *extra)))
    columns = {metric: _sum_columns(metric, y, score, threshold) for metric in metrics}
    samples: dict[str, list[np.ndarray]] = {metric: [] for metric in metrics}
    for idx in resample_batches(len(y), n_resamples, seed):
        counts = draw_counts(idx, len(y))
        for metric in metrics:
            samples[metric].append(resampled_metric(metric, y, score, idx, counts, columns[metric], threshold))
    tail = (1 - confidence) / 2 * 100
    estimates = {}
    for metric in metrics:
        values = np.concatenate(samples[metric])
        values = values[np.isfinite(values)]
        low, high = (np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan))
        estimates[metric] = MetricEstimate(metric_value(metric, y, score, threshold), float(low), float(high))
    return estimates


def bootstrap_values(metric: str, y: np.ndarray, score: np.ndarray, n_resamples: int = 1000,
                     seed: int = 0, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """The metric on ``n_resamples`` bootstrap resamples of the rows (for intervals of differences between groups)."""
    columns = _sum_columns(metric, y, score, threshold)
    return np.concatenate([resampled_metric(metric, y, score, idx, None, columns, threshold)
                           for idx in resample_batches(len(y), n_resamples, seed)])


@dataclass(frozen=True)
class PairedComparison:
    """Challenger vs champion on the same rows; ``worse_by`` > 0 means the challenger is worse."""

    metric: str
    challenger: float
    champion: float
    difference: float
    difference_low: float
    difference_high: float
    p_value: float
    n_rows: int
    differences: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The bootstrap differences (challenger - champion): the champion gate tests its own hypothesis on them."""


def paired_bootstrap(metric: str, y: np.ndarray, challenger_score: np.ndarray, champion_score: np.ndarray,
                     n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                     threshold: float = DECISION_THRESHOLD) -> PairedComparison:
    """Paired bootstrap of the metric difference (challenger - champion) on the same resampled rows.

    ``p_value`` is the bootstrap probability that the challenger is *not* worse than the champion
    (one-sided): a small value means the challenger is significantly worse.
    """
    columns = (_sum_columns(metric, y, challenger_score, threshold), _sum_columns(metric, y, champion_score, threshold))
    chunks = []
    for idx in resample_batches(len(y), n_resamples, seed):
        chunks.append(resampled_metric(metric, y, challenger_score, idx, None, columns[0], threshold)
                      - resampled_metric(metric, y, champion_score, idx, None, columns[1], threshold))
    differences = np.concatenate(chunks)
    differences = differences[np.isfinite(differences)]
    challenger = metric_value(metric, y, challenger_score, threshold)
    champion = metric_value(metric, y, champion_score, threshold)
    sign = 1.0 if is_lower_better(metric) else -1.0
    worse = sign * differences  # > 0: challenger worse
    if len(worse) == 0:
        p_value = 1.0
    else:
        p_value = float(np.mean(worse <= 0))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail]) if len(differences) else (np.nan, np.nan)
    return PairedComparison(metric, challenger, champion, challenger - champion, float(low), float(high),
                            p_value, len(y), differences)
