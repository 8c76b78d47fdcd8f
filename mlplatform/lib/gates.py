"""Model gates: pure decisions over metrics and predictions, with the reason a person reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlplatform.specs.tasks import is_lower_better

if TYPE_CHECKING:  # type hints only: lib.drift, lib.metrics and lib.fairness pull scipy into every code-location load
    from mlplatform.lib.drift import DriftReport
    from mlplatform.lib.fairness import FairnessReport
    from mlplatform.lib.metrics import PairedComparison

THRESHOLD = "absolute_threshold"
CHAMPION = "beat_champion"
SANITY = "prediction_sanity"
TRAINING_DATA = "training_data_drift"
FAIRNESS = "fairness"
GATES = (THRESHOLD, CHAMPION, SANITY)
"""The gates every model has; ``fairness`` joins them for a model whose spec has a ``fairness`` section."""


@dataclass
class GateOutcome:
    name: str
    passed: bool
    reason: str
    facts: dict[str, Any] = field(default_factory=dict)


def threshold_gate(metric: str, value: float, threshold: float | None) -> GateOutcome:
    """Errors must stay at or below the bar; scores at or above it. No bar in the spec: passes, says so."""
    if threshold is None:
        return GateOutcome(THRESHOLD, True, f"no threshold set for {metric}", {metric: value})
    lower = is_lower_better(metric)
    passed = bool(np.isfinite(value)) and (value <= threshold if lower else value >= threshold)
    relation = "<=" if lower else ">="
    verdict = "meets" if passed else "misses"
    return GateOutcome(THRESHOLD, passed, f"{metric} {value:.4g} {verdict} the bar {relation} {threshold:g}",
                       {metric: value, "threshold": threshold, "direction": "max" if lower else "min"})


NON_INFERIORITY = "non_inferiority"
SUPERIORITY = "superiority"
CHAMPION_TESTS = (NON_INFERIORITY, SUPERIORITY)
"""What ``gates.beat_champion.test`` may say: fail only a challenger significantly worse (by more than the margin),
or pass only one significantly better (by more than the margin)."""


def champion_test_description(test: str, margin: float, alpha: float) -> str:
    """The chosen champion test in words, for the check's description and the model card."""
    how = "paired bootstrap of the primary metric's difference on the same rows, one-sided"
    if test == SUPERIORITY:
        return ("superiority test: deploy only a challenger significantly better than the champion of week W"
                + (f" by more than {margin:g}" if margin else "") + f" ({how}, alpha={alpha:g}); an equal one fails")
    return ("non-inferiority test: fail only a challenger significantly worse than the champion of week W"
            + (f" by more than the margin {margin:g}" if margin else "") + f" ({how}, alpha={alpha:g})")


def champion_test_p_value(comparison: PairedComparison, test: str = NON_INFERIORITY, margin: float = 0.0) -> float:
    """The one-sided bootstrap p-value of ``test`` on the paired differences; below alpha the test decides.

    non_inferiority: the share of resamples where the challenger is worse by at most ``margin`` (small: it is
    significantly worse by more than the margin; margin 0 is :func:`~mlplatform.lib.metrics.paired_bootstrap`'s own
    p-value). superiority: the share where it is not better by more than ``margin`` (small: significantly better).
    """
    if test not in CHAMPION_TESTS:
        raise ValueError(f"gates.beat_champion.test: found {test!r}; allowed: {', '.join(CHAMPION_TESTS)}")
    if comparison.differences is None:
        if test == NON_INFERIORITY and margin == 0:
            return comparison.p_value
        raise ValueError(f"the {test} test with margin {margin:g} needs the bootstrap differences of the comparison")
    worse = (1.0 if is_lower_better(comparison.metric) else -1.0) * np.asarray(comparison.differences, dtype=float)
    if len(worse) == 0:
        return 1.0
    return float(np.mean(worse <= margin) if test == NON_INFERIORITY else np.mean(worse >= -margin))


def champion_gate(comparison: PairedComparison | None, alpha: float, champion_version: str | None,
                  week: str | None = None, test: str = NON_INFERIORITY, margin: float = 0.0) -> GateOutcome:
    """The challenger against the champion of week W on the same rows, by the spec's test.

    non_inferiority (default) fails only a challenger significantly worse by more than ``margin`` (in the primary
    metric's units); superiority passes only one significantly better by more than ``margin``.
    """
    named = {"test": test, "margin": margin}
    if comparison is None:
        reason = ("first model: no champion to compare with" if week is None
                  else f"first model for week {week}: no champion trained for this week or before to compare with")
        return GateOutcome(CHAMPION, True, reason, {"champion_version": None, **named})
    p_value = champion_test_p_value(comparison, test, margin)
    significant = p_value < alpha
    by_margin = f" by more than the margin {margin:g}" if margin else ""
    if test == NON_INFERIORITY:
        passed = not significant
        verdict = (f"significantly worse{by_margin}" if significant
                   else f"not significantly worse{by_margin} at alpha={alpha}")
    else:
        passed = significant
        verdict = (f"significantly better{by_margin} at alpha={alpha}" if significant
                   else f"not significantly better{by_margin} at alpha={alpha}; the superiority test deploys only a "
                   "significantly better challenger")
    p_text = f"{p_value:.3g}" if p_value > 0 else "<0.001"
    test_text = test.replace("_", "-") + " test" + (f", margin {margin:g}" if margin else "")
    reason = (
        f"{comparison.metric}: challenger {comparison.challenger:.4g} vs champion v{champion_version} "
        f"{comparison.champion:.4g}, difference {comparison.difference:+.4g} "
        f"(95% CI {comparison.difference_low:+.4g}..{comparison.difference_high:+.4g}), p={p_text} "
        f"({test_text}); {verdict}"
    )
    return GateOutcome(CHAMPION, passed, reason, {
        "metric": comparison.metric, "challenger": comparison.challenger, "champion": comparison.champion,
        "champion_version": champion_version, "difference": comparison.difference,
        "difference_ci_low": comparison.difference_low, "difference_ci_high": comparison.difference_high,
        "p_value": p_value, "alpha": alpha, "rows": comparison.n_rows, **named,
    })


def sanity_gate(task: str, predicted: np.ndarray, allowed_range: tuple[float, float] | None = None,
                allowed_classes: list | None = None) -> GateOutcome:
    """Predictions are finite, inside the target's range or classes, and not all the same."""
    problems = []
    if task == "regression":
        values = np.asarray(predicted, dtype=float)
        non_finite = int(np.sum(~np.isfinite(values)))
        if non_finite:
            problems.append(f"{non_finite} predictions are not finite")
        finite = values[np.isfinite(values)]
        if allowed_range is not None and len(finite):
            low, high = allowed_range
            outside = int(np.sum((finite < low) | (finite > high)))
            if outside:
                problems.append(f"{outside} predictions outside [{low:.4g}, {high:.4g}]")
        distinct = len(np.unique(np.round(finite, 9)))
    else:
        values = np.asarray(predicted, dtype=object)
        if allowed_classes is not None:
            unknown = sorted({str(v) for v in values} - {str(c) for c in allowed_classes})
            if unknown:
                problems.append(f"predicted classes not in the target: {unknown}")
        distinct = len({str(v) for v in values})
    if len(values) and distinct <= 1:
        problems.append("every prediction is the same (constant model)")
    reason = "; ".join(problems) if problems else f"{len(values)} predictions finite, in range, {distinct} distinct values"
    return GateOutcome(SANITY, not problems, reason, {"rows": len(values), "distinct_predictions": distinct})


def prediction_range(y_train: np.ndarray, declared_min: float | None, declared_max: float | None,
                     slack: float = 0.25) -> tuple[float, float]:
    """The target's range (declared bounds, else the training target's), widened by ``slack`` x its span.

    The slack keeps a regressor's small overshoots (a -2 for a count) from failing the gate while a
    prediction far outside anything seen still does.
    """
    low = declared_min if declared_min is not None else float(np.nanmin(y_train))
    high = declared_max if declared_max is not None else float(np.nanmax(y_train))
    span = max(float(np.nanmax(y_train) - np.nanmin(y_train)) if len(y_train) else 0.0, high - low)
    return low - slack * span, high + slack * span


def training_data_gate(report: DriftReport | None, recent_label: str) -> GateOutcome:
    """The training window must resemble recent production inputs; a drifted window would teach a world that is gone."""
    if report is None:
        return GateOutcome(TRAINING_DATA, True, f"no recent production inputs to compare with ({recent_label})",
                           {"recent": recent_label})
    drifted = {c.column: c.brief() for c in report.drifted}
    verdict = "within" if report.passed else "above"
    reason = (f"{len(report.drifted)} of {len(report.counted)} features drifted between the training window and "
              f"{recent_label} (share {report.share:.2f}, {verdict} the limit {report.max_drifted_share:g}; "
              f"method {report.method})" + ("" if report.passed else f": {', '.join(drifted)}; training halted"))
    return GateOutcome(TRAINING_DATA, report.passed, reason, {
        "drifted_share": report.share, "max_drifted_share": report.max_drifted_share, "drifted": drifted,
        "method": report.method, "recent": recent_label, "training_rows": report.reference_rows,
        "recent_rows": report.current_rows,
    })


def fairness_gate(report: FairnessReport) -> GateOutcome:
    """Groups of a sensitive attribute must get the model's outcome at rates within the spec's limits."""
    limits = f"limit {report.max_parity_difference:g}" + (
        f", equalized odds {report.max_equalized_odds_difference:g}"
        if report.max_equalized_odds_difference is not None else "")
    if report.problems:
        reason = "; ".join(report.problems)
    else:
        measured = ", ".join(
            f"{a.attribute} {a.parity_difference:.3f}" if a.parity_difference is not None
            else f"{a.attribute} not compared (fewer than two groups of {report.min_group_rows}+ rows)"
            for a in report.attributes)
        reason = f"within the {limits}: {measured}"
    facts: dict[str, Any] = {"max_parity_difference": report.max_parity_difference,
                             "max_equalized_odds_difference": report.max_equalized_odds_difference,
                             "min_group_rows": report.min_group_rows}
    for item in report.attributes:
        facts[f"parity_difference[{item.attribute}]"] = item.parity_difference
        if report.task == "binary":
            facts[f"equalized_odds_difference[{item.attribute}]"] = item.equalized_odds_difference
    from mlplatform.lib.fairness import markdown

    facts["per_group"] = markdown(report)
    return GateOutcome(FAIRNESS, report.passed, reason, facts)
