"""One canary analysis, read and carried out: what the hourly sensor's job, ``mlplatform canary`` and ``promote`` use.

:mod:`mlplatform.lib.rollout_analysis` judges; this module reads the window of the prediction log it judges (error
rows included), and turns a verdict into the one audited move it calls for, through :mod:`mlplatform.lib.promotion`:

- ``stop``: ``challenger`` is removed from the canary (``rollout.analysis.automatic_stop``), the numbers in the
  audit's reason; the service stops sending it traffic at its next poll.
- ``promote``: the next step of ``rollout.ramp`` (a share tag on the version, audited as ``canary_step``); after
  the last step, under ``approval: auto`` with ``auto_promote: canary``, ``champion`` moves to the canary (audited
  as ``canary_promoted``). Under ``approval: manual`` nothing moves: a person promotes with the evidence shown.
- ``continue``: nothing moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.lib import approvals, promotion
from mlplatform.lib.aliases import CHALLENGER, CHAMPION
from mlplatform.lib.prediction_log import read_prediction_log, utc_now
from mlplatform.lib.promotion import CANARY_SHARE_TAG, CANARY_SINCE_TAG, AliasChange
from mlplatform.lib.rollout_analysis import PROMOTE, STOP, AnalysisSettings, CanaryAnalysis, analyse, next_share
from mlplatform.lib.routing import CANARY_ROLE, CHAMPION_ROLE

ANALYSIS_ACTOR = "canary analysis"


@dataclass(frozen=True)
class CanaryState:
    """Who is canary and champion now, at which share, since when (from the registry)."""

    champion: str | None
    challenger: str | None
    share: float
    since: datetime | None


def canary_state(tracker: Any, spec: Any) -> CanaryState:
    """The aliases and the challenger's share tags (no tag: the spec's ``canary_percent``, since unknown)."""
    champion = tracker.alias_version(spec.name, CHAMPION)
    challenger = tracker.alias_version(spec.name, CHALLENGER)
    share, since = float(spec.rollout.canary_percent), None
    if challenger is not None and challenger != champion:
        tags = tracker.version_tags(spec.name, challenger)
        if CANARY_SHARE_TAG in tags:
            try:
                share = float(tags[CANARY_SHARE_TAG])
            except ValueError:
                pass
        if CANARY_SINCE_TAG in tags:
            try:
                since = datetime.fromisoformat(tags[CANARY_SINCE_TAG])
            except ValueError:
                pass
    return CanaryState(champion, challenger, share, since)


def run_analysis(home: Path, spec: Any, tracker: Any, now: datetime | None = None,
                 outcomes: pd.DataFrame | None = None, warehouse_path: Path | None = None,
                 wait_seconds: float = 30.0) -> tuple[CanaryState, CanaryAnalysis]:
    """Judge the current canary on the last ``rollout.analysis.window_minutes`` of the log (never before its share
    began). ``warehouse_path``: where ``labels.table`` is read (without it, a table's outcomes are not read)."""
    now = now or utc_now()
    state = canary_state(tracker, spec)
    settings = spec.rollout.analysis
    start = now - timedelta(minutes=settings.window_minutes)
    if state.since is not None and state.since > start:
        start = state.since
    if state.challenger is None or state.challenger == state.champion:
        logged = read_prediction_log(home, spec.name, start, now, expand_inputs=False, errors=True).iloc[:0]
    else:
        logged = read_prediction_log(home, spec.name, start, now, roles=[CHAMPION_ROLE, CANARY_ROLE],
                                     expand_inputs=False, errors=True)
    if outcomes is None and not logged.empty:
        outcomes = live_outcomes(spec, logged, start, now, warehouse_path, wait_seconds)
    business = settings.business_metric.name if settings.business_metric is not None else "outcome rate"
    analysis = analyse(spec.task, logged, state.challenger, state.champion, state.since, now,
                       AnalysisSettings.of(settings), outcomes, business_name=business)
    return state, analysis


def live_outcomes(spec: Any, logged: pd.DataFrame, start: datetime, end: datetime,
                  warehouse_path: Path | None = None, wait_seconds: float = 30.0) -> pd.DataFrame | None:
    """With ``rollout.analysis.business_metric`` and ``labels.path`` or ``labels.table`` (read from the warehouse at
    ``warehouse_path``; a table not built yet gives no outcomes): each logged prediction of the window whose
    outcome arrived (matched on the entity key, else the record id, as the weekly labels are), as ``request_id``,
    ``record_index`` and ``outcome`` (1: the target equals ``positive``). None when the spec asks for none."""
    from mlplatform.lib.outcomes import JOIN_KEY, LABEL, file_outcomes, log_join_keys, table_outcomes
    from mlplatform.lib.source import Window
    from mlplatform.lib.warehouse import connect_when_free

    metric = spec.rollout.analysis.business_metric
    if metric is None or spec.labels is None or (spec.labels.path is None and warehouse_path is None):
        return None
    if spec.labels.path is not None:
        arrived = file_outcomes(spec, Window(start, end))
    else:
        with connect_when_free(warehouse_path, wait_seconds, read_only=True) as connection:
            arrived = table_outcomes(spec, connection, Window(start, end), missing_ok=True)
    labels = arrived.dropna(subset=[JOIN_KEY]).drop_duplicates(JOIN_KEY, keep="last")
    keyed = logged.assign(**{JOIN_KEY: log_join_keys(logged)}).dropna(subset=[JOIN_KEY])
    joined = keyed.merge(labels[[JOIN_KEY, LABEL]], on=JOIN_KEY, how="inner")
    positive = str(metric.positive)
    return pd.DataFrame({"request_id": joined["request_id"], "record_index": joined["record_index"],
                         "outcome": [int(_as_text(v) == positive) for v in joined[LABEL]]})


def _as_text(value: Any) -> str:
    """A label as text, integral floats as integers (a CSV's 1 and 1.0 are the same click)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def change_for(spec: Any, tracker: Any, state: CanaryState, analysis: CanaryAnalysis, actor: str,
               apply_stop: bool | None = None) -> AliasChange | None:
    """The one audited move a verdict calls for (None: nothing moves). Guards: a change is made only while the
    judged version is still the challenger (a later decision is never undone by an older analysis)."""
    version = analysis.canary_version
    if version is None or version != state.challenger or version == state.champion:
        return None
    evidence = analysis.summary()
    if analysis.decision == STOP:
        stop = spec.rollout.analysis.automatic_stop if apply_stop is None else apply_stop
        return promotion.canary_stop_change(tracker, spec.name, version, actor, evidence) if stop else None
    if analysis.decision != PROMOTE:
        return None
    step = next_share(spec.rollout.ramp, state.share)
    if step is not None:
        return promotion.canary_share_change(tracker, spec.name, version, step, actor,
                                             f"good canary at {state.share:g}%: {evidence}")
    if spec.rollout.approval == "auto" and spec.rollout.auto_promote == "canary":
        return promotion.canary_promotion_change(tracker, spec.name, version, actor, evidence)
    return None


@dataclass(frozen=True)
class CanaryRun:
    """One analysis and what it changed (None: nothing)."""

    state: CanaryState
    analysis: CanaryAnalysis
    change: AliasChange | None

    def text(self) -> str:
        lines = [self.analysis.text()]
        if self.change is None:
            lines.append("no change" + (" (approval: manual: a person promotes, `mlplatform promote`)"
                                        if self.analysis.decision == PROMOTE else ""))
        else:
            lines.append(f"change: {self.change.kind} {self.change.alias}: v{self.change.previous_version or '-'} -> "
                         f"v{self.change.version or '-'} by {self.change.actor}")
        return "\n".join(lines)


def analyse_and_act(home: Path, warehouse_path: Path, spec: Any, tracker: Any, wait_seconds: float,
                    actor: str = ANALYSIS_ACTOR, now: datetime | None = None, act: bool = True,
                    outcomes: pd.DataFrame | None = None) -> CanaryRun:
    """Run one analysis and (with ``act``) carry out its verdict as one audited unit (:func:`approvals.move_champion`:
    stores checked, warehouse opened, audit row and registry move committed together)."""
    state, analysis = run_analysis(home, spec, tracker, now, outcomes, warehouse_path, wait_seconds)
    if not act:
        return CanaryRun(state, analysis, None)
    wanted = change_for(spec, tracker, state, analysis, actor)
    if wanted is None:
        return CanaryRun(state, analysis, None)
    made = approvals.move_champion(home, warehouse_path, tracker, wait_seconds,
                                   lambda connection, registry: change_for(spec, registry, state, analysis, actor))
    return CanaryRun(state, analysis, made)
