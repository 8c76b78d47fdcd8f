"""Metrics per task, vectorised so bootstrap intervals and paired comparisons stay cheap.

Every metric here takes ``(y, score)`` arrays where ``score`` is the regression
prediction, the positive-class probability (binary) or the predicted label index
(multiclass), plus a 2-D index array of bootstrap resamples, and returns one
value per resample. One implementation serves the point estimate (a single
resample of all rows), the confidence interval and the champion comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from mlplatform.lib.tasks import METRICS_BY_TASK, is_lower_better

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


def _f1(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    predicted, labels = (s[idx] >= 0.5).astype(float), y[idx]
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


def _row_losses(metric: str, y: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """Per-row terms whose mean is the metric (rmse: mean before the root); None when not decomposable."""
    if metric in ("rmse", "brier"):
        return (y - s) ** 2
    if metric == "mae":
        return np.abs(y - s)
    if metric == "log_loss":
        p = np.clip(s, EPS, 1 - EPS)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if metric == "accuracy":
        return (y == s).astype(float)
    return None


@dataclass(frozen=True)
class MetricEstimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def resample_indices(n_rows: int, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap resamples (rows drawn with replacement); fixed seed, so reports are reproducible."""
    return np.random.default_rng(seed).integers(0, n_rows, size=(n_resamples, n_rows), dtype=np.int32)


def metric_value(metric: str, y: np.ndarray, score: np.ndarray) -> float:
    return float(METRIC_FUNCTIONS[metric](y, score, np.arange(len(y))[None, :])[0])


def evaluate(task: str, y: np.ndarray, score: np.ndarray, n_resamples: int = 300, seed: int = 0,
             confidence: float = 0.95) -> dict[str, MetricEstimate]:
    """Every metric of the task with a percentile bootstrap interval."""
    idx = resample_indices(len(y), n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    estimates = {}
    for metric in METRICS_BY_TASK[task]:
        point = metric_value(metric, y, score)
        losses = _row_losses(metric, y, score)
        if losses is not None:  # one gather of per-row terms instead of y and score
            samples = losses[idx].mean(axis=1)
            samples = np.sqrt(samples) if metric == "rmse" else samples
        else:
            samples = METRIC_FUNCTIONS[metric](y, score, idx)
        samples = samples[np.isfinite(samples)]
        low, high = (np.percentile(samples, [tail, 100 - tail]) if len(samples) else (np.nan, np.nan))
        estimates[metric] = MetricEstimate(point, float(low), float(high))
    return estimates


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


def paired_bootstrap(metric: str, y: np.ndarray, challenger_score: np.ndarray, champion_score: np.ndarray,
                     n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> PairedComparison:
    """Paired bootstrap of the metric difference (challenger - champion) on the same resampled rows.

    ``p_value`` is the bootstrap probability that the challenger is *not* worse than the champion
    (one-sided): a small value means the challenger is significantly worse.
    """
    fn = METRIC_FUNCTIONS[metric]
    losses = (_row_losses(metric, y, challenger_score), _row_losses(metric, y, champion_score))
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, n_resamples, 200):  # bounded memory: 200 x n indices at a time
        idx = rng.integers(0, len(y), size=(min(200, n_resamples - start), len(y)), dtype=np.int32)
        if losses[0] is not None:
            # Decomposable metrics: gather the per-row terms once per model instead of y and scores.
            a, b = losses[0][idx].mean(axis=1), losses[1][idx].mean(axis=1)
            chunks.append(np.sqrt(a) - np.sqrt(b) if metric == "rmse" else a - b)
        else:
            chunks.append(fn(y, challenger_score, idx) - fn(y, champion_score, idx))
    differences = np.concatenate(chunks)
    differences = differences[np.isfinite(differences)]
    challenger = metric_value(metric, y, challenger_score)
    champion = metric_value(metric, y, champion_score)
    sign = 1.0 if is_lower_better(metric) else -1.0
    worse = sign * differences  # > 0: challenger worse
    if len(worse) == 0:
        p_value = 1.0
    else:
        p_value = float(np.mean(worse <= 0))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail]) if len(differences) else (np.nan, np.nan)
    return PairedComparison(metric, challenger, champion, challenger - champion, float(low), float(high),
                            p_value, len(y))
