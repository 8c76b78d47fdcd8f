"""Small PNG plots for evaluation reports and the backtest (matplotlib, headless)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mlplatform.lib.decision import DECISION_THRESHOLD, predicted_positive  # noqa: E402


def _png(figure, margins: dict[str, float] | None = None) -> bytes:
    """PNG bytes of the figure; fixed ``margins`` (subplots_adjust) instead of tight_layout for the per-week plots.

    tight_layout renders the figure once more to measure its labels: half the cost of a weekly plot.
    """
    buffer = io.BytesIO()
    if margins is None:
        figure.tight_layout()
    else:
        figure.subplots_adjust(**margins)
    figure.savefig(buffer, format="png", dpi=72)
    plt.close(figure)
    return buffer.getvalue()


MAX_POINTS = 2000
"""Scatter plots show a fixed random sample: 2,000 points read the same as 100,000 and draw 50x faster."""


def _sample(n: int) -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False)) if n > MAX_POINTS else np.arange(n)


def regression_plots(y: np.ndarray, predicted: np.ndarray, title: str) -> dict[str, bytes]:
    """Predicted vs actual and the residuals, side by side in one image (one render per week)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(7, 3.2))
    shown = _sample(len(y))
    left.scatter(y[shown], predicted[shown], s=6, alpha=0.5)
    low, high = float(min(y.min(), predicted.min())), float(max(y.max(), predicted.max()))
    left.plot([low, high], [low, high], color="grey", linewidth=1)
    left.set(xlabel="actual", ylabel="predicted", title=f"{title}: predicted vs actual")
    right.hist(y - predicted, bins=30)
    right.set(xlabel="actual - predicted", ylabel="rows", title="residuals")
    margins = {"left": 0.1, "right": 0.98, "bottom": 0.15, "top": 0.9, "wspace": 0.3}
    return {"predicted_vs_actual_and_residuals.png": _png(figure, margins)}


SINGLE_MARGINS = {"left": 0.17, "right": 0.96, "bottom": 0.15, "top": 0.9}


def classification_plots(y: np.ndarray, score: np.ndarray, task: str, title: str,
                         threshold: float = DECISION_THRESHOLD) -> dict[str, bytes]:
    plots = {}
    if task == "binary":
        order = np.argsort(-score, kind="mergesort")
        hits = y[order]
        tpr = np.r_[0, np.cumsum(hits)] / max(hits.sum(), 1)
        fpr = np.r_[0, np.cumsum(1 - hits)] / max((1 - hits).sum(), 1)
        figure, axis = plt.subplots(figsize=(4, 3.2))
        axis.plot(fpr, tpr)
        axis.plot([0, 1], [0, 1], color="grey", linewidth=1)
        axis.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: ROC")
        plots["roc.png"] = _png(figure, SINGLE_MARGINS)
        bins = np.clip((score * 10).astype(int), 0, 9)
        predicted_mean = [score[bins == b].mean() for b in range(10) if np.any(bins == b)]
        observed = [y[bins == b].mean() for b in range(10) if np.any(bins == b)]
        figure, axis = plt.subplots(figsize=(4, 3.2))
        axis.plot(predicted_mean, observed, marker="o")
        axis.plot([0, 1], [0, 1], color="grey", linewidth=1)
        axis.set(xlabel="predicted probability", ylabel="observed rate", title=f"{title}: calibration")
        plots["calibration.png"] = _png(figure, SINGLE_MARGINS)
        predicted = predicted_positive(score, threshold).astype(int)  # the confusion matrix at the spec's threshold
        truth = y.astype(int)
        labels = [0, 1]
    else:
        predicted, truth = score.astype(int), y.astype(int)
        labels = sorted(set(truth.tolist()) | set(predicted.tolist()))
    matrix = np.array([[np.sum((truth == a) & (predicted == b)) for b in labels] for a in labels])
    figure, axis = plt.subplots(figsize=(3.6, 3.2))
    axis.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, str(count), ha="center", va="center")
    axis.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="actual",
             title=f"{title}: confusion")
    plots["confusion_matrix.png"] = _png(figure, SINGLE_MARGINS)
    return plots


def backtest_plot(weeks: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
                  metric: str, threshold: float | None, title: str) -> bytes:
    figure, axis = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(weeks))
    axis.plot(x, values, marker=".", label=metric)
    axis.fill_between(x, lows, highs, alpha=0.2, label="95% CI")
    if threshold is not None:
        axis.axhline(threshold, color="red", linewidth=1, linestyle="--", label="gate threshold")
    step = max(1, len(weeks) // 8)
    axis.set_xticks(x[::step], [w[:10] for w in weeks][::step], rotation=30, ha="right", fontsize=7)
    axis.set(ylabel=metric, title=f"{title}: walk-forward backtest")
    axis.legend(fontsize=7)
    return _png(figure)


def drift_plot(columns: Sequence[str], scores: Sequence[float], methods: Sequence[str], drifted: Sequence[bool],
               title: str) -> bytes:
    """One bar per feature: its drift score, red when drifted (p-values and distances are labelled by method)."""
    figure, axis = plt.subplots(figsize=(6, 0.35 * len(columns) + 1.2))
    y = np.arange(len(columns))
    axis.barh(y, scores, color=["tab:red" if d else "tab:blue" for d in drifted])
    axis.set_yticks(y, [f"{c} ({m})" for c, m in zip(columns, methods, strict=True)], fontsize=7)
    axis.set(xlabel="score (p-value or distance)", title=title)
    return _png(figure)


def live_plot(weeks: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
              references: Sequence[float], limits: Sequence[float], metric: str, title: str,
              levels: Sequence[float] | None = None) -> bytes:
    """The champion's live metric per week with its interval, against its own evaluation and the rollback limit;
    ``levels``: the pre-change level a recovery from a concept change holds the champion to (NaN: none that week)."""
    figure, axis = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(weeks))
    axis.plot(x, values, marker="o", label=f"live {metric}")
    axis.fill_between(x, lows, highs, alpha=0.2, label="95% CI")
    axis.plot(x, references, color="gray", linestyle=":", marker=".", label="its evaluation")
    if levels is not None and np.isfinite(np.asarray(levels, dtype="float64")).any():
        axis.plot(x, np.asarray(levels, dtype="float64"), color="green", linewidth=1.5, marker="_",
                  label="pre-change level")
    axis.plot(x, limits, color="red", linewidth=1, linestyle="--", label="rollback limit")
    step = max(1, len(weeks) // 8)
    axis.set_xticks(x[::step], [w[:10] for w in weeks][::step], rotation=30, ha="right", fontsize=7)
    axis.set(ylabel=metric, title=f"{title}: live performance of the champion")
    axis.legend(fontsize=7)
    return _png(figure)

def bar_plot(labels: Sequence[str], values: Sequence[float], xlabel: str, title: str) -> bytes:
    """One horizontal bar per label, the first at the top (feature importance), drawn with Pillow.

    Drawn directly rather than through matplotlib: a matplotlib figure of 15 labelled bars cost ~80 ms of CPU
    per version, this ~5 ms, and every trained version draws one. Same font (matplotlib's DejaVu Sans).
    """
    from PIL import Image, ImageDraw, ImageFont

    font_file = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
    small, large = ImageFont.truetype(font_file, 11), ImageFont.truetype(font_file, 13)
    row, top, width = 20, 34, 560
    label_width = int(max([small.getlength(str(label)) for label in labels] + [40])) + 16
    bar_area = width - label_width - 70
    height = top + row * len(labels) + 34
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), title, font=large, fill="black")
    finite = [float(v) for v in values if np.isfinite(v)]
    biggest = max([abs(v) for v in finite] + [1e-12])
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + index * row
        draw.text((label_width - 8 - small.getlength(str(label)), y + 3), str(label), font=small, fill="black")
        length = int(bar_area * max(float(value), 0.0) / biggest) if np.isfinite(value) else 0
        draw.rectangle((label_width, y + 3, label_width + max(length, 1), y + row - 3), fill=(31, 119, 180))
        draw.text((label_width + length + 5, y + 3), f"{value:.3g}", font=small, fill=(80, 80, 80))
    draw.line((label_width, top, label_width, top + row * len(labels)), fill=(120, 120, 120))
    draw.text((label_width, height - 22), xlabel, font=small, fill=(60, 60, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
