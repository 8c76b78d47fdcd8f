"""Production performance judged: what the logged predictions, joined with their outcomes, say of each version.

Pure functions, no Dagster: the ``<model>_production`` step (``defs/production_assets.py``) reads the log, the
labels (:mod:`mlplatform.lib.outcomes` reads and joins them) and the registry, then asks this module what the
week says:

- :func:`live_estimates`: the primary metric per version and role, with a bootstrap interval;
- :func:`judge_degradation`: did the champion fall below its own evaluation by more than the allowed share, beyond
  noise;
- :func:`judge_canary`: is the canary significantly worse than the champion on the same week's traffic;
- :func:`shadow_comparison`: challenger vs champion on the very same requests;
- :func:`judge_rollback`: whether the earlier champion a rollback would restore does significantly better on the
  rows the degraded champion answered (the decay sensor carries the decision out).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.lib.metrics import (
    DECISION_THRESHOLD,
    MetricEstimate,
    PairedComparison,
    bootstrap_values,
    evaluate,
    metric_value,
    paired_bootstrap,
)
from mlplatform.lib.outcomes import JOIN_KEY, LABEL, json_ready, log_join_keys
from mlplatform.lib.routing import BATCH_ROLE, CANARY_ROLE, CHAMPION_ROLE, SHADOW_ROLE
from mlplatform.specs.tasks import is_lower_better

PREVIOUS_CHAMPION_ROLE = "previous_champion"
"""Live-table rows of the previous champion, scored offline on the rows the degraded champion answered."""
SEED = 0


# --- scoring logged rows -----------------------------------------------------------------------------------------

def class_text(values: pd.Series | np.ndarray) -> np.ndarray:
    """Classes as the service logs them (``str`` of the value; integral floats written as integers)."""
    out = []
    for value in np.asarray(values, dtype=object):
        if isinstance(value, float | np.floating) and float(value).is_integer():
            value = int(value)
        out.append(str(json_ready(value)))
    return np.asarray(out, dtype=object)


def classes_of(probabilities: pd.Series) -> list[str] | None:
    """A classifier's classes in its own order, from a logged ``probabilities`` JSON object."""
    for text in probabilities.dropna():
        return list(json.loads(text))
    return None


def encoded(task: str, rows: pd.DataFrame, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Outcome and score in the metric's encoding (as ``lib.training.encode_target`` / ``predict`` define it)."""
    score = rows["score"].to_numpy(dtype="float64")
    if task == "regression":
        return pd.to_numeric(rows[LABEL], errors="coerce").to_numpy(dtype="float64"), score
    classes = list(classes) if classes is not None else classes_of(rows["probabilities"])
    y_text = class_text(rows[LABEL])
    if not classes:
        raise ValueError("no class probabilities were logged for these predictions")
    if task == "binary":
        return (y_text == classes[1]).astype("float64"), score
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(c, -1) for c in y_text], dtype="float64"), score


# --- live metrics and verdicts -----------------------------------------------------------------------------------

@dataclass
class LiveEstimate:
    """One version in one role, in one week: its primary metric on the labelled rows it scored."""

    version: str
    role: str
    rows: int
    metric: str
    estimate: MetricEstimate | None  # None: too few rows, or one class only (a metric like ROC AUC is undefined)

    def row(self, week: str) -> dict[str, Any]:
        e = self.estimate
        return {"week": pd.Timestamp(week), "version": self.version, "role": self.role, "rows": self.rows,
                "metric": self.metric, "value": e.value if e else math.nan, "ci_low": e.low if e else math.nan,
                "ci_high": e.high if e else math.nan}


def estimate(task: str, metric: str, y: np.ndarray, score: np.ndarray, seed: int = SEED,
             threshold: float = DECISION_THRESHOLD) -> MetricEstimate | None:
    """The metric with a 95 % percentile bootstrap interval (a binary decision at ``threshold``, the spec's
    ``evaluation.decision_threshold``); None where it is undefined on these rows."""
    if len(y) == 0:
        return None
    found = evaluate(task, y, score, seed=seed, threshold=threshold, extra=(metric,))[metric]  # (a team metric too)
    return found if np.isfinite(found.value) else None


def live_estimates(task: str, metric: str, matched: pd.DataFrame, seed: int = SEED,
                   threshold: float = DECISION_THRESHOLD) -> list[LiveEstimate]:
    """Per version and role (champion, canary, shadow), the metric on that version's labelled predictions."""
    out = []
    for (version, role), rows in matched.groupby(["version", "role"], sort=True):
        y, score = encoded(task, rows)
        out.append(LiveEstimate(str(version), str(role), len(rows), metric,
                                estimate(task, metric, y, score, seed, threshold)))
    return out


def judged_champion(estimates: Sequence[LiveEstimate], current_champion: str | None) -> LiveEstimate | None:
    """The champion the week is judged on: the current champion if it answered that week, else the busiest one.

    A model scored only in batches (``scoring.batch``, no served traffic that week) is judged on its batch rows."""
    champions = ([e for e in estimates if e.role == CHAMPION_ROLE]
                 or [e for e in estimates if e.role == BATCH_ROLE])
    if not champions:
        return None
    for e in champions:
        if e.version == current_champion:
            return e
    return max(champions, key=lambda e: (e.rows, int(e.version) if e.version.isdigit() else 0))


@dataclass
class DegradationVerdict:
    passed: bool
    judged: bool
    version: str | None
    live: MetricEstimate | None
    reference: float | None  # the version's own evaluation metric
    limit: float | None
    relative_drop: float | None
    reason: str


def relative_drop(metric: str, reference: float, live: float) -> float:
    """How much worse live is than the reference, as a share of the reference (> 0: worse)."""
    worse = (live - reference) if is_lower_better(metric) else (reference - live)
    return worse / abs(reference) if reference else math.inf * np.sign(worse)


def degradation_limit(metric: str, reference: float, max_degradation: float) -> float:
    """The live value past which a version has degraded: its evaluation moved by ``max_degradation`` of itself
    (down for a score, up for an error)."""
    shift = max_degradation * abs(reference)
    return reference + shift if is_lower_better(metric) else reference - shift


def judge_degradation(metric: str, version: str | None, live: MetricEstimate | None, rows: int,
                      reference: float | None, max_degradation: float, min_rows: int,
                      against: str = "at its evaluation") -> DegradationVerdict:
    """Fails only when the live metric is past the limit *and* its interval excludes the limit: noise never fails it.

    The limit is the reference moved by ``max_degradation`` of itself (down for a metric where higher is better, up
    otherwise). The reference is the version's own evaluation, or after a confirmed concept change the pre-change
    level (:func:`mlplatform.lib.recovery.reference_for`); ``against`` names it in the reason.
    """
    if version is None:
        return DegradationVerdict(True, False, None, None, reference, None, None, "no labelled champion predictions")
    if reference is None or not np.isfinite(reference):
        return DegradationVerdict(True, False, version, live, None, None, None,
                                  f"v{version} has no evaluation to compare with; not judged")
    if live is None or rows < min_rows:
        return DegradationVerdict(True, False, version, live, reference, None, None,
                                  f"v{version}: {rows} labelled predictions (at least {min_rows} are judged); not judged")
    lower = is_lower_better(metric)
    limit = degradation_limit(metric, reference, max_degradation)
    drop = relative_drop(metric, reference, live.value)
    beyond = (live.value > limit and live.low > limit) if lower else (live.value < limit and live.high < limit)
    interval = f"[{live.low:.4g}, {live.high:.4g}]"
    facts = (f"v{version} live {metric} {live.value:.4g} {interval} on {rows} labelled rows vs {reference:.4g} {against} "
             f"({drop:+.1%}); limit {limit:.4g} (max_degradation {max_degradation:g})")
    if beyond:
        return DegradationVerdict(False, True, version, live, reference, limit, drop, f"degraded: {facts}")
    why = "within the limit" if (live.value <= limit if lower else live.value >= limit) else "the interval reaches the limit (noise)"
    return DegradationVerdict(True, True, version, live, reference, limit, drop, f"{why}: {facts}")


@dataclass
class Difference:
    """``a - b`` of one metric with a 95 % bootstrap interval, and whether ``a`` is significantly worse or better."""

    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    rows_a: int
    rows_b: int

    @property
    def a_worse(self) -> bool:
        return self.low > 0 if is_lower_better(self.metric) else self.high < 0

    @property
    def a_better(self) -> bool:
        return self.high < 0 if is_lower_better(self.metric) else self.low > 0

    def text(self, a: str, b: str) -> str:
        return (f"{a} {self.metric} {self.a:.4g} ({self.rows_a} rows) vs {b} {self.b:.4g} ({self.rows_b} rows): "
                f"difference {self.difference:+.4g} [{self.low:+.4g}, {self.high:+.4g}]")


def from_paired(comparison: PairedComparison) -> Difference:
    return Difference(comparison.metric, comparison.challenger, comparison.champion, comparison.difference,
                      comparison.difference_low, comparison.difference_high, comparison.n_rows, comparison.n_rows)


def unpaired_difference(metric: str, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                        n_resamples: int = 1000, seed: int = SEED, threshold: float = DECISION_THRESHOLD) -> Difference:
    """Two groups of different rows (canary and champion traffic): each resampled on its own, the differences paired
    resample by resample."""
    values_a = bootstrap_values(metric, a[0], a[1], n_resamples, seed, threshold)
    values_b = bootstrap_values(metric, b[0], b[1], n_resamples, seed + 1, threshold)
    differences = values_a - values_b
    differences = differences[np.isfinite(differences)]
    point_a, point_b = metric_value(metric, *a, threshold), metric_value(metric, *b, threshold)
    low, high = np.percentile(differences, [2.5, 97.5]) if len(differences) else (math.nan, math.nan)
    return Difference(metric, float(point_a), float(point_b), float(point_a - point_b), float(low), float(high),
                      len(a[0]), len(b[0]))


@dataclass
class CanaryVerdict:
    passed: bool
    judged: bool
    version: str | None
    difference: Difference | None
    reason: str


def judge_canary(task: str, metric: str, matched: pd.DataFrame, challenger: str | None, min_rows: int,
                 seed: int = SEED, threshold: float = DECISION_THRESHOLD) -> CanaryVerdict:
    """The canary (role ``canary``, the challenger) against the champion on the same week's labelled traffic."""
    canary = matched[matched["role"] == CANARY_ROLE]
    if challenger is not None:
        canary = canary[canary["version"] == challenger]
    if canary.empty:
        return CanaryVerdict(True, False, None, None, "no labelled canary traffic this week")
    version = str(canary["version"].iloc[-1])
    canary = canary[canary["version"] == version]
    champion = matched[matched["role"] == CHAMPION_ROLE]
    if len(canary) < min_rows or len(champion) < min_rows:
        return CanaryVerdict(True, False, version, None, f"canary v{version}: {len(canary)} labelled rows, champion "
                             f"{len(champion)} (at least {min_rows} each are judged); not judged")
    classes = classes_of(champion["probabilities"]) if task != "regression" else None
    difference = unpaired_difference(metric, encoded(task, canary, classes), encoded(task, champion, classes),
                                     seed=seed, threshold=threshold)
    text = difference.text(f"canary v{version}", "champion")
    if difference.a_worse:
        return CanaryVerdict(False, True, version, difference, f"significantly worse: {text}")
    return CanaryVerdict(True, True, version, difference, f"{'better' if difference.a_better else 'not worse'}: {text}")


@dataclass
class ShadowComparison:
    """The challenger scored in the shadow of the champion, request by request."""

    champion: str
    shadow: str
    pairs: int
    agreement: float  # classification: same class; regression: within 10 % of the champion's value
    mean_abs_difference: float
    labelled: Difference | None  # shadow - champion on the pairs whose outcome is known

    def row(self, week: str) -> dict[str, Any]:
        d = self.labelled
        return {"week": pd.Timestamp(week), "champion_version": self.champion, "shadow_version": self.shadow,
                "pairs": self.pairs, "agreement": self.agreement, "mean_abs_difference": self.mean_abs_difference,
                "labelled_pairs": d.rows_a if d else 0, "metric": d.metric if d else None,
                "shadow_value": d.a if d else math.nan, "champion_value": d.b if d else math.nan,
                "difference": d.difference if d else math.nan, "ci_low": d.low if d else math.nan,
                "ci_high": d.high if d else math.nan}


REGRESSION_AGREEMENT = 0.10


def shadow_comparison(task: str, metric: str, logged: pd.DataFrame, labels: pd.DataFrame | None,
                      seed: int = SEED, threshold: float = DECISION_THRESHOLD) -> list[ShadowComparison]:
    """Shadow rows paired with the champion's answer to the same record of the same request."""
    shadow = logged[logged["role"] == SHADOW_ROLE]
    champion = logged[logged["role"] == CHAMPION_ROLE]
    if shadow.empty or champion.empty:
        return []
    pairs = shadow.merge(champion, on=["request_id", "record_index"], suffixes=("_shadow", "_champion"))
    out = []
    for (shadow_version, champion_version), group in pairs.groupby(["version_shadow", "version_champion"], sort=True):
        if task == "regression":
            base = group["score_champion"].abs().clip(lower=1e-9)
            agree = float(((group["score_shadow"] - group["score_champion"]).abs() <= REGRESSION_AGREEMENT * base).mean())
        else:
            agree = float((group["label_shadow"].astype(str) == group["label_champion"].astype(str)).mean())
        labelled = None
        if labels is not None and len(labels):
            keyed = group.assign(**{JOIN_KEY: log_join_keys(group.rename(columns={
                "entity_key_champion": "entity_key", "record_id_champion": "record_id"}))})
            known = keyed.merge(labels.drop_duplicates(JOIN_KEY, keep="last")[[JOIN_KEY, LABEL]], on=JOIN_KEY)
            if len(known) >= 2:
                champ_rows = known.rename(columns={"score_champion": "score", "probabilities_champion": "probabilities"})
                shadow_rows = known.rename(columns={"score_shadow": "score", "probabilities_shadow": "probabilities"})
                classes = classes_of(champ_rows["probabilities"]) if task != "regression" else None
                y, champion_score = encoded(task, champ_rows, classes)
                _, shadow_score = encoded(task, shadow_rows, classes)
                labelled = from_paired(paired_bootstrap(metric, y, shadow_score, champion_score, seed=seed,
                                                        threshold=threshold))
        out.append(ShadowComparison(str(champion_version), str(shadow_version), len(group), agree,
                                    float((group["score_shadow"] - group["score_champion"]).abs().mean()), labelled))
    return out


# --- whether to roll back ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RollbackDecision:
    """What a failed live_degradation check decides about a rollback, as fields: the check's metadata carries them
    (:meth:`metadata`), the decay sensor acts on ``rollback_to`` and the demo shows ``rollback_summary``."""

    target: str | None  # the version to roll back to; None: no rollback
    degraded: str | None  # the champion the check judged
    candidate: str | None  # the earlier champion considered (lib.promotion.rollback_target)
    comparison: Difference | None  # candidate - degraded on the rows the degraded champion answered
    summary: str  # the decision in a few words
    reason: str  # the decision with its evidence, in a sentence
    candidate_estimate: LiveEstimate | None = None  # the candidate's live-table row (role previous_champion)

    def metadata(self) -> dict[str, Any]:
        c = self.comparison
        return {"rollback_to": self.target or "", "rollback_candidate": self.candidate or "",
                "rollback_summary": self.summary, "rollback_evidence": self.reason,
                "rollback_difference": c.difference if c else math.nan,
                "rollback_ci_low": c.low if c else math.nan, "rollback_ci_high": c.high if c else math.nan}


NO_DEGRADATION = RollbackDecision(None, None, None, None, "-", "-")
"""The decision of a week whose champion did not degrade: nothing to roll back."""


def judge_rollback(task: str, metric: str, matched: pd.DataFrame, degraded: str | None, champion_now: str | None,
                   candidate: str | None, passed_over: Sequence[str], feature_columns: Sequence[str],
                   rescore: Callable[[str, pd.DataFrame], np.ndarray], seed: int = SEED,
                   threshold: float = DECISION_THRESHOLD) -> RollbackDecision:
    """Roll back to ``candidate`` only when it scores significantly better than the degraded champion on the very
    rows that champion answered this week (paired bootstrap); else no rollback, with the reason.

    ``candidate`` is :func:`mlplatform.lib.promotion.rollback_target` of the degraded champion (``passed_over``: the
    earlier champions it skipped, with why); ``rescore(version, inputs)`` returns that version's scores of the rows.
    """
    def no(summary: str, reason: str, comparison: Difference | None = None,
           row: LiveEstimate | None = None) -> RollbackDecision:
        return RollbackDecision(None, degraded, candidate, comparison, f"no rollback, {summary}", reason, row)

    if degraded is None or degraded != champion_now:
        return no(f"v{degraded} is no longer the champion",
                  f"v{degraded} is no longer the champion (v{champion_now}); no rollback")
    if candidate is None:
        return no("no earlier champion may be restored",
                  f"no earlier champion may be restored ({'; '.join(passed_over) or 'none'}); no rollback")
    rows = matched[(matched["role"] == CHAMPION_ROLE) & (matched["version"] == degraded)]
    if rows.empty:  # a batch-scored champion: the rows it scored in batch
        rows = matched[(matched["role"] == BATCH_ROLE) & (matched["version"] == degraded)]
    missing = [c for c in feature_columns if c not in rows.columns]
    if missing:
        return no("the log lacks inputs", f"the log lacks inputs {missing}; cannot rescore v{candidate}; no rollback")
    classes = classes_of(rows["probabilities"]) if task != "regression" else None
    y, current_score = encoded(task, rows, classes)
    candidate_score = np.asarray(rescore(candidate, rows[list(feature_columns)]), dtype="float64")
    comparison = from_paired(paired_bootstrap(metric, y, candidate_score, current_score, seed=seed, threshold=threshold))
    text = comparison.text(f"previous champion v{candidate}", f"v{degraded}") + " on the same rows"
    row = LiveEstimate(candidate, PREVIOUS_CHAMPION_ROLE, len(rows), metric,
                       estimate(task, metric, y, candidate_score, seed, threshold))
    if comparison.a_better:
        return RollbackDecision(candidate, degraded, candidate, comparison, f"roll back to v{candidate}",
                                f"roll back: {text}", row)
    return no("not significantly better", f"no rollback, not significantly better: {text}", comparison, row)


# --- evidence for a person deciding a promotion ---------------------------------------------------------------------

def rollout_evidence(connection: Any, model: str, version: str) -> list[str]:
    """What production says of ``version`` as canary and in the shadow, week by week, for ``mlplatform promote``."""
    from mlplatform.lib.warehouse import table_name

    def exists(table: str) -> bool:
        return bool(connection.execute("select count(*) from information_schema.tables where table_schema = ? and "
                                       "table_name = ?", [model, table]).fetchall()[0][0])

    lines = []
    if exists("live_performance"):
        rows = connection.execute(
            f"select c.week, c.metric, c.rows, c.value, c.ci_low, c.ci_high, h.version, h.value "
            f"from {table_name(model, 'live_performance')} c left join {table_name(model, 'live_performance')} h "
            "on h.week = c.week and h.role = 'champion' where c.version = ? and c.role = 'canary' order by c.week",
            [str(version)]).fetchall()
        for week, metric, n, value, low, high, champion, champion_value in rows:
            against = f" vs champion v{champion} {champion_value:.4g}" if champion is not None else ""
            lines.append(f"canary week {week:%Y-%m-%d}: live {metric} {value:.4g} [{low:.4g}, {high:.4g}] on {n} "
                         f"labelled rows{against}")
    if exists("shadow"):
        rows = connection.execute(
            f"select week, champion_version, pairs, agreement, metric, difference, ci_low, ci_high "
            f"from {table_name(model, 'shadow')} where shadow_version = ? order by week", [str(version)]).fetchall()
        for week, champion, pairs, agreement, metric, difference, low, high in rows:
            labelled = (f"; {metric} shadow - champion {difference:+.4g} [{low:+.4g}, {high:+.4g}]"
                        if metric is not None and not math.isnan(difference) else "; no outcomes yet")
            lines.append(f"shadow week {week:%Y-%m-%d}: agrees with champion v{champion} on {agreement:.1%} of "
                         f"{pairs} requests{labelled}")
    return lines
