"""Fairness on live traffic: the spec's fairness measures on the predictions each version made in production.

Requests may carry the spec's sensitive attributes (``fairness.sensitive``) beside the features; the service never
scores them (:class:`mlplatform.serving.schema.RecordSchema` keeps them out of the model's inputs) and logs them as
``sensitive.<name>`` (:data:`mlplatform.lib.prediction_log.SENSITIVE_PREFIX`). Where a request did not carry one,
the value may come from the outcomes (a labels file or table, or the features table, holding the column).

Per version, role (champion, canary, shadow) and sensitive attribute, with the offline gate's definitions
(:mod:`mlplatform.lib.fairness`, docs/fairness.md):

- label-free, from the predictions alone: the parity difference of the task (binary: demographic parity difference,
  the largest gap in selection rate; multiclass: the largest selection-rate gap over classes; regression: the
  relative gap of group mean predictions), held to ``max_demographic_parity_difference``; binary also reports the
  selection-rate ratio (smallest over largest rate; no limit);
- label-based, on the predictions whose outcome is known (binary): the equalized odds difference, held to
  ``max_equalized_odds_difference`` when the spec sets it.

A prediction without a value for an attribute is left out of that attribute (a client that does not send it is
not a group). Groups with fewer than ``fairness.min_group_rows`` predictions are shown but do not decide; an attribute
with fewer than two deciding groups is not judged ("too few live predictions").

:func:`promotion_refusal` is what promotion asks under ``rollout.require_live_fairness`` or a policy's
``require_live_fairness``. Pure functions over frames; no Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.lib.decision import DECISION_THRESHOLD, predicted_positive
from mlplatform.lib.fairness import _parity_name, group_labels
from mlplatform.lib.prediction_log import SENSITIVE_PREFIX

ALL_ROLES = "all"
"""The role of a version's measures over every prediction it made (what promotion judges)."""
SELECTION_RATE_RATIO = "selection-rate ratio"
EQUALIZED_ODDS = "equalized odds difference"
LIVE_FAIRNESS_TABLE = "live_fairness"
"""``<model>.live_fairness``: the report's measures by week, version, role, attribute and measure."""


@dataclass
class LiveMeasure:
    """One fairness measure of one version's live predictions, on one sensitive attribute."""

    version: str
    role: str
    attribute: str  # the sensitive column, "<column> (banded)" when the spec bands it
    measure: str
    value: float | None  # None: fewer than two groups large enough to compare
    limit: float | None  # None: reported, not enforced
    rows: int  # predictions with a value for the attribute (with a known outcome, for a label-based measure)
    groups: dict[str, int]  # group -> predictions
    min_group_rows: int
    labelled: bool = False  # the measure needs outcomes
    without_value: int = 0  # predictions that carried no value for the attribute
    notes: list[str] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return self.value is not None

    @property
    def passed(self) -> bool | None:
        """False when above its limit; None when not judged or not enforced."""
        if not self.judged or self.limit is None:
            return None
        return bool(self.value <= self.limit)

    @property
    def groups_text(self) -> str:
        return ", ".join(f"{g} {n:,}" for g, n in self.groups.items()) or "none"

    def verdict_text(self) -> str:
        """The measure in a sentence: value, predictions, limit and verdict, or why it is not judged."""
        predictions = "labelled live predictions" if self.labelled else "live predictions"
        if not self.judged:
            return (f"too few {predictions} to judge {self.measure} on {self.attribute}: {self.rows:,} with a value "
                    f"({self.groups_text}); at least {self.min_group_rows} in each of two groups are needed "
                    "(fairness.min_group_rows)")
        facts = f"{self.measure} on {self.attribute} is {self.value:.3f} on {self.rows:,} {predictions}"
        if self.limit is None:
            return f"{facts} (reported, no limit)"
        side = "above" if not self.passed else "within"
        return f"{facts}, {side} the limit {self.limit:g} ({self.groups_text})"

    def row(self, week: str | None = None) -> dict[str, Any]:
        """The measure as a row of ``<model>.live_fairness``."""
        return {**({"week": pd.Timestamp(week)} if week is not None else {}), "version": self.version,
                "role": self.role, "attribute": self.attribute, "measure": self.measure,
                "value": math.nan if self.value is None else float(self.value),
                "max_allowed": math.nan if self.limit is None else float(self.limit), "judged": self.judged,
                "passed": self.passed, "labelled": self.labelled, "rows": int(self.rows),
                "groups": self.groups_text, "without_value": int(self.without_value)}


def required_by(spec: Any) -> str | None:
    """What makes promotion wait for live fairness: the spec's key or its policy (None: nothing does)."""
    if spec.rollout.require_live_fairness:
        return "rollout.require_live_fairness"
    if getattr(spec.policy_rules, "require_live_fairness", False):
        return f"policy {spec.policy!r}" if spec.policy else "the policy file's default policy"
    return None


def sensitive_frame(logged: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The logged ``sensitive.<name>`` columns under their own names (missing columns as all-null)."""
    return pd.DataFrame({c: (logged[SENSITIVE_PREFIX + c].astype(object) if SENSITIVE_PREFIX + c in logged.columns
                             else pd.Series([None] * len(logged), index=logged.index, dtype=object))
                         for c in columns}, index=logged.index)


def attach_outcome_values(logged: pd.DataFrame, outcomes: pd.DataFrame | None, columns: Sequence[str],
                          join_key: str = "join_key") -> pd.DataFrame:
    """Fill the sensitive values a request did not carry from the outcomes holding those columns (matched on the
    outcome join key, as live performance matches them); the logged value wins where both exist."""
    from mlplatform.lib.outcomes import log_join_keys

    carried = [c for c in columns if outcomes is not None and c in outcomes.columns]
    if not carried or logged.empty:
        return logged
    known = outcomes.dropna(subset=[join_key]).drop_duplicates(join_key, keep="last").set_index(join_key)
    keys = log_join_keys(logged)
    logged = logged.copy()
    for column in carried:
        from_outcomes = keys.map(known[column].astype(object).where(known[column].notna(), None).map(
            lambda v: None if v is None else _text(v)))
        name = SENSITIVE_PREFIX + column
        present = logged[name] if name in logged.columns else pd.Series([None] * len(logged), index=logged.index)
        logged[name] = present.astype(object).where(present.notna(), from_outcomes)
    return logged


def _text(value: Any) -> str:
    from mlplatform.lib.validation import category_text

    return category_text(value.item() if hasattr(value, "item") else value)


def measure(task: str, fairness: Any, rows: pd.DataFrame, version: str, role: str,
            threshold: float = DECISION_THRESHOLD, labelled: pd.DataFrame | None = None,
            metric: str | None = None) -> list[LiveMeasure]:
    """The spec's fairness measures on one version's live predictions (``rows``: log rows with ``score``,
    ``label`` and the ``sensitive.<name>`` columns); ``labelled``: those of them whose outcome is known
    (column ``y``, as :func:`mlplatform.lib.outcomes.match_labels` gives them), for the label-based measure."""
    out = []
    values = sensitive_frame(rows, fairness.sensitive)
    for column in fairness.sensitive:
        present = values[column].notna()
        groups = group_labels(values.loc[present, [column]], [column], fairness.bands)
        attribute, labels = next(iter(groups.items()))
        labels = labels.to_numpy(dtype=object)
        subset = rows.loc[present]
        sizes = _sizes(labels)
        without = int((~present).sum())
        parity = _parity(task, subset, labels, fairness.min_group_rows, threshold)
        out.append(LiveMeasure(version, role, attribute, _parity_name(task), parity,
                               fairness.max_demographic_parity_difference, len(subset), sizes,
                               fairness.min_group_rows, without_value=without))
        if task == "binary":
            out.append(LiveMeasure(version, role, attribute, SELECTION_RATE_RATIO,
                                   _selection_ratio(subset, labels, fairness.min_group_rows, threshold), None,
                                   len(subset), sizes, fairness.min_group_rows, without_value=without))
            if labelled is not None:
                out.append(_equalized_odds(fairness, labelled, column, version, role, threshold, metric))
    return out


def _sizes(labels: np.ndarray) -> dict[str, int]:
    from mlplatform.lib.fairness import _group_order

    names, counts = np.unique(labels.astype(str), return_counts=True)
    return {str(g): int(n) for g, n in sorted(zip(names, counts, strict=True), key=lambda p: _group_order(p[0]))}


def _deciding(labels: np.ndarray, min_group_rows: int) -> list[str]:
    return [g for g, n in _sizes(labels).items() if n >= min_group_rows]


def _parity(task: str, rows: pd.DataFrame, labels: np.ndarray, min_group_rows: int, threshold: float) -> float | None:
    """The offline gate's parity difference of the task (docs/fairness.md), from the predictions alone."""
    deciding = _deciding(labels, min_group_rows)
    if len(deciding) < 2:
        return None
    masks = {g: labels.astype(str) == g for g in deciding}
    if task == "binary":
        selected = predicted_positive(rows["score"].to_numpy(dtype="float64"), threshold)
        rates = [float(selected[m].mean()) for m in masks.values()]
        return max(rates) - min(rates)
    if task == "multiclass":
        predicted = rows["label"].astype(str).to_numpy()
        gaps = []
        for cls in np.unique(predicted):
            rates = [float((predicted[m] == cls).mean()) for m in masks.values()]
            gaps.append(max(rates) - min(rates))
        return max(gaps)
    score = rows["score"].to_numpy(dtype="float64")
    means = [float(score[m].mean()) for m in masks.values()]
    overall = abs(float(score[np.any(list(masks.values()), axis=0)].mean()))
    return (max(means) - min(means)) / overall if overall > 0 else math.inf


def _selection_ratio(rows: pd.DataFrame, labels: np.ndarray, min_group_rows: int, threshold: float) -> float | None:
    deciding = _deciding(labels, min_group_rows)
    if len(deciding) < 2:
        return None
    selected = predicted_positive(rows["score"].to_numpy(dtype="float64"), threshold)
    rates = [float(selected[labels.astype(str) == g].mean()) for g in deciding]
    return min(rates) / max(rates) if max(rates) > 0 else 1.0


def _equalized_odds(fairness: Any, labelled: pd.DataFrame, column: str, version: str, role: str, threshold: float,
                    metric: str | None) -> LiveMeasure:
    """The equalized odds difference on the labelled predictions (fairlearn, as the offline gate computes it)."""
    from mlplatform.lib.fairness import fairness_report
    from mlplatform.lib.live import encoded

    values = sensitive_frame(labelled, [column])[column]
    present = values.notna()
    rows = labelled.loc[present]
    groups = group_labels(values[present].to_frame(), [column], fairness.bands)
    attribute, labels = next(iter(groups.items()))
    limit = fairness.max_equalized_odds_difference
    if rows.empty:
        return LiveMeasure(version, role, attribute, EQUALIZED_ODDS, None, limit, 0, {}, fairness.min_group_rows,
                           labelled=True, without_value=int((~present).sum()))
    y, score = encoded("binary", rows)
    report = fairness_report("binary", y, score, {attribute: labels}, metric or "accuracy", math.inf, limit,
                             fairness.min_group_rows, threshold)
    result = report.attributes[0]
    return LiveMeasure(version, role, attribute, EQUALIZED_ODDS, result.equalized_odds_difference, limit, len(rows),
                       _sizes(labels.to_numpy(dtype=object)), fairness.min_group_rows, labelled=True,
                       without_value=int((~present).sum()), notes=list(result.notes))


def live_fairness(task: str, fairness: Any, logged: pd.DataFrame, threshold: float = DECISION_THRESHOLD,
                  matched: pd.DataFrame | None = None, metric: str | None = None) -> list[LiveMeasure]:
    """Every version and role in ``logged`` (the report's week): its measures; label-based ones on ``matched``."""
    out = []
    if logged.empty:
        return out
    for (version, role), rows in logged.groupby(["version", "role"], sort=True):
        labelled = None
        if matched is not None and task == "binary" and len(matched):
            labelled = matched[(matched["version"].astype(str) == str(version)) & (matched["role"] == role)]
        out += measure(task, fairness, rows, str(version), str(role), threshold, labelled, metric)
    return out


# --- promotion ---------------------------------------------------------------------------------------------------

@dataclass
class LiveFairnessVerdict:
    """What live fairness says of promoting a version: the failing or unjudged measures, in sentences."""

    model: str
    version: str
    required_by: str
    measures: list[LiveMeasure]
    problems: list[str]

    @property
    def refused(self) -> bool:
        return bool(self.problems)

    def reason(self) -> str:
        return (f"{self.model} v{self.version}: live fairness fails: {'; '.join(self.problems)}; promotion requires "
                f"live fairness ({self.required_by})")

    def audit_event(self, actor: str, week: str | None = None) -> Any:
        """The ``promotion_refused`` audit event of this refusal (any promotion path records it)."""
        from mlplatform.lib.audit import AuditEvent

        return AuditEvent(self.model, "promotion_refused", actor, self.reason(), version=self.version, week=week,
                          passed=False, details=self.details())

    def details(self) -> dict[str, Any]:
        return {"check": "live_fairness", "required_by": self.required_by,
                "measures": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                              for k, v in m.row().items()} for m in self.measures]}


def judge_version(model: str, task: str, fairness: Any, logged: pd.DataFrame, version: str, required: str,
                  threshold: float = DECISION_THRESHOLD,
                  stored_labelled: Sequence[LiveMeasure] = ()) -> LiveFairnessVerdict:
    """Whether ``version`` may be promoted: every enforced label-free measure judged and within its limit over all
    the live predictions it made (every role), and no enforced label-based measure of the latest report failing.

    A label-based measure not judged yet (outcomes arrive later) does not hold promotion back; a failing one does.
    """
    rows = logged[logged["version"].astype(str) == str(version)] if not logged.empty else logged
    measures = measure(task, fairness, rows, str(version), ALL_ROLES, threshold) if not rows.empty else []
    problems = []
    if rows.empty:
        problems.append(f"no live predictions of v{version} yet (it must serve as canary or shadow first, with the "
                        f"sensitive columns {', '.join(fairness.sensitive)} sent with the requests)")
    for m in measures:
        if m.limit is None:
            continue
        if not m.judged or not m.passed:
            problems.append(m.verdict_text())
    for m in stored_labelled:
        if m.limit is not None and m.judged and not m.passed:
            problems.append(m.verdict_text() + f" (report of {m.role} traffic)")
    return LiveFairnessVerdict(model, str(version), required, [*measures, *stored_labelled], problems)


def stored_labelled_measures(connection: Any, model: str, version: str) -> list[LiveMeasure]:
    """The label-based measures of ``version`` in the newest week of ``<model>.live_fairness`` that judged one."""
    from mlplatform.lib.warehouse import table_name

    exists = connection.execute("select count(*) from information_schema.tables where table_schema = ? and "
                                "table_name = ?", [model, LIVE_FAIRNESS_TABLE]).fetchall()[0][0]
    if not exists:
        return []
    table = table_name(model, LIVE_FAIRNESS_TABLE)
    rows = connection.execute(
        f"select week, role, attribute, measure, value, max_allowed, rows from {table} where version = ? and labelled "
        f"and judged and week = (select max(week) from {table} where version = ? and labelled and judged)",
        [str(version), str(version)]).fetchall()
    return [LiveMeasure(str(version), f"{role}, week {week:%Y-%m-%d}", attribute, name, float(value),
                        None if limit is None or math.isnan(limit) else float(limit), int(n), {}, 0, labelled=True)
            for week, role, attribute, name, value, limit, n in rows]


def promotion_refusal(spec: Any, home: Path) -> Callable[[Any, str], LiveFairnessVerdict | None] | None:
    """The check promotion runs under live fairness (None when the spec and its policy do not require it):
    ``check(connection, version)`` gives the verdict on the version's live predictions from the prediction log
    (and the label-based measures of the stored report), or None when it may be promoted."""
    from mlplatform.lib.prediction_log import read_prediction_log

    required = required_by(spec)
    if required is None or spec.fairness is None:
        return None

    def check(connection: Any, version: str) -> LiveFairnessVerdict | None:
        logged = read_prediction_log(home, spec.name)
        stored = stored_labelled_measures(connection, spec.name, version) if connection is not None else []
        verdict = judge_version(spec.name, spec.task, spec.fairness, logged, version, required,
                                spec.decision_threshold, stored)
        return verdict if verdict.refused else None

    return check


def markdown_table(measures: Sequence[LiveMeasure]) -> str:
    """The measures as the asset metadata's table: one line per version, role, attribute and measure."""
    header = ["version", "role", "attribute", "measure", "value", "limit", "verdict", "predictions", "groups"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for m in measures:
        verdict = ("not judged (too few)" if not m.judged else "reported" if m.limit is None
                   else "pass" if m.passed else "FAIL")
        cells = [f"v{m.version}", m.role, m.attribute, m.measure, "-" if m.value is None else f"{m.value:.3f}",
                 "-" if m.limit is None else f"{m.limit:g}", verdict, f"{m.rows:,}", m.groups_text]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def failing(measures: Sequence[LiveMeasure]) -> list[LiveMeasure]:
    """The enforced measures above their limit."""
    return [m for m in measures if m.passed is False]



def hold_auto_champion(spec: Any, changes: Sequence[Any], note: str) -> tuple[list[Any], str, list[Any]]:
    """Under ``approval: auto`` a version that passed its gates would become champion at once, before it made a
    single live prediction: where live fairness is required, only ``challenger`` moves and the held promotion is
    audited (``promotion_refused``). A model's first champion is not held: nothing serves before it, so there is no
    live traffic it could be judged on. Returns (the changes kept, the alias note, the audit events to append)."""
    from mlplatform.lib.aliases import CHAMPION
    from mlplatform.lib.audit import AuditEvent

    required = required_by(spec)
    held = [c for c in changes if c.alias == CHAMPION and c.previous_version is not None] if required else []
    if not held:
        return list(changes), note, []
    change = held[0]
    text = (f"approval: auto, but v{change.version} becomes champion only once the fairness measures of its live "
            f"predictions pass ({required}); it has none yet: it serves as challenger (canary or shadow) first")
    event = AuditEvent(spec.name, "promotion_refused", change.actor, f"{spec.name} v{change.version}: {text}",
                       version=change.version, week=change.week, passed=False,
                       details={"check": "live_fairness", "required_by": required, "path": "approval: auto"})
    return [c for c in changes if c not in held], f"{note}; champion held: {text}", [event]


def evidence_lines(connection: Any, model: str, version: str) -> list[str]:
    """The weekly report's live fairness of ``version`` (``<model>.live_fairness``), for ``mlplatform promote``."""
    from mlplatform.lib.warehouse import table_name

    exists = connection.execute("select count(*) from information_schema.tables where table_schema = ? and "
                                "table_name = ?", [model, LIVE_FAIRNESS_TABLE]).fetchall()[0][0]
    if not exists:
        return []
    rows = connection.execute(
        f"select week, role, attribute, measure, value, max_allowed, judged, passed, rows from "
        f"{table_name(model, LIVE_FAIRNESS_TABLE)} where version = ? and max_allowed is not null and not "
        "isnan(max_allowed) order by week, role, attribute, measure", [str(version)]).fetchall()
    lines = []
    for week, role, attribute, name, value, limit, judged, passed, n in rows:
        verdict = (f"{value:.3f} on {n:,} predictions, limit {limit:g}: {'pass' if passed else 'FAIL'}" if judged
                   else f"not judged ({n:,} predictions with a value)")
        lines.append(f"live fairness week {week:%Y-%m-%d} ({role}): {name} on {attribute} {verdict}")
    return lines
