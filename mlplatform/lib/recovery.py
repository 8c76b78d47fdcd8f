"""Recovering from a concept change: the level to return to, the window of the new regime, and when it is over.

A ``live_degradation`` failure says the outcomes broke at week C (the inputs may look the same: concept drift).
Reacting once is not enough: a model whose window still holds the old rule learns a mixture, evaluates at a lower
level, and from then on would be judged against that lower level. So a confirmed decay starts a **recovery**:

- the **level to return to** is recorded: the live metric of the last healthy champion (the mean of its judged,
  passing weeks, the newest :data:`LEVEL_WEEKS`), or the degraded version's own evaluation when production never
  judged a healthy week. Every version trained after C is judged against that level (limit: the level moved by
  ``max_degradation`` of itself), so a decayed level never becomes the new normal;
- every model trained for a week after C trains on the **new regime** only: its window starts at C and grows
  week by week up to ``training_window_weeks`` (:func:`training_start`);
- while the judged champion's live metric is not back within the limit, each judged week requests a retrain
  (whatever ``automation.retrain`` says); the first judged week back within it ends the recovery.

Pure functions over the rows of ``<model>.recovery`` (one row per judged week that started, continued or ended a
recovery); the production step (``defs/production_assets.py``) writes them and the model step reads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd

from mlplatform.lib.live import degradation_limit
from mlplatform.specs.tasks import is_lower_better

STARTED = "recovery_started"
RETRAIN = "recovery_retrain"
ENDED = "recovery_ended"
EVENTS = (STARTED, RETRAIN, ENDED)
"""The row kinds of ``<model>.recovery``, named as the audit events the production step writes with them."""

LEVEL_WEEKS = 4
"""The pre-change level is the mean of at most this many of the last healthy champion's judged weeks."""


@dataclass(frozen=True)
class RecoveryRow:
    """One judged week of a recovery: it started it, asked for another retrain, or ended it."""

    week: str  # the judged week (ISO Monday)
    event: str  # one of EVENTS
    change_week: str  # the first week whose outcomes broke (C)
    metric: str
    level: float  # the pre-change level
    limit: float  # the level moved by max_degradation of itself
    version: str  # the champion judged that week
    live: float  # its live metric that week
    retrain_week: str | None  # the model week a retrain was requested for (None: none)
    note: str  # where the level came from, or why the recovery ended

    def record(self) -> dict[str, Any]:
        """The row as ``<model>.recovery`` stores it (weeks as timestamps)."""
        row = asdict(self)
        for key in ("week", "change_week", "retrain_week"):
            row[key] = pd.Timestamp(row[key]) if row[key] else pd.NaT
        return row


def rows_from_table(frame: pd.DataFrame) -> list[RecoveryRow]:
    """The stored rows back as :class:`RecoveryRow` (weeks as ISO dates)."""
    def day(value: Any) -> str | None:
        return None if value is None or pd.isna(value) else pd.Timestamp(value).date().isoformat()

    return [RecoveryRow(day(r["week"]), str(r["event"]), day(r["change_week"]), str(r["metric"]), float(r["level"]),
                        float(r["limit"]), str(r["version"]), float(r["live"]), day(r["retrain_week"]), str(r["note"]))
            for r in frame.to_dict("records")]


def read_rows(connection: Any, model: str) -> list[RecoveryRow]:
    """``<model>.recovery`` on an open warehouse connection (none yet: an empty list)."""
    from mlplatform import names
    from mlplatform.lib.warehouse import table_name

    exists = connection.execute("select count(*) from information_schema.tables where table_schema = ? and "
                                "table_name = ?", [model, names.RECOVERY_TABLE]).fetchall()[0][0]
    if not exists:
        return []
    return rows_from_table(connection.execute(f"select * from {table_name(model, names.RECOVERY_TABLE)} "
                                              "order by week").fetchdf())


def recovery_events(row: RecoveryRow, window_weeks: int) -> list[tuple[str, str, bool | None, dict[str, Any]]]:
    """The audit events of a recovery row, as (event, summary, passed, details): a start is also the first retrain
    on the new regime."""
    numbers = {"metric": row.metric, "change_week": row.change_week, "pre_change_level": row.level,
               "limit": row.limit, "live": row.live, "share_of_level": share_of_level(row.metric, row.live, row.level),
               "retrain_week": row.retrain_week}
    retrain = (RETRAIN, f"retrain for {row.retrain_week} {window_text(row.change_week, row.retrain_week, window_weeks)}: "
                        f"v{row.version} live {row.metric} {row.live:.4g}, limit {row.limit:.4g} of the pre-change level "
                        f"{row.level:.4g}", False, {**numbers, "window": window_text(row.change_week, row.retrain_week,
                                                                                      window_weeks)})
    if row.event == STARTED:
        return [(STARTED, f"concept change confirmed on week {row.change_week}: v{row.version} live {row.metric} "
                          f"{row.live:.4g}; back to the pre-change level {row.level:.4g} (limit {row.limit:.4g}), the "
                          f"{row.note}", False, {**numbers, "level_from": row.note}), retrain]
    if row.event == RETRAIN:
        return [retrain]
    return [(ENDED, row.note, True, numbers)]


@dataclass(frozen=True)
class RecoveryState:
    """The latest recovery started before a week: its change week, level and limit, and whether it is still on."""

    change_week: str
    metric: str
    level: float
    limit: float
    active: bool
    started: RecoveryRow


def state_before(rows: Sequence[RecoveryRow], week: str) -> RecoveryState | None:
    """The latest recovery whose start was judged before ``week`` (a re-run of a week recomputes its own row)."""
    started, active = None, False
    for row in sorted(rows, key=lambda r: (r.week, EVENTS.index(r.event))):
        if row.week >= week:
            break
        if row.event == STARTED:
            started, active = row, True
        elif row.event == ENDED:
            active = False
    if started is None:
        return None
    return RecoveryState(started.change_week, started.metric, started.level, started.limit, active, started)


def within_limit(metric: str, value: float, limit: float) -> bool:
    """Whether a live value is on the good side of a limit (at or above it for a score, at or below for an error)."""
    return value <= limit if is_lower_better(metric) else value >= limit


def share_of_level(metric: str, value: float, level: float) -> float:
    """How close a live value is to the level, as a share (1.0: at the level; > 1: better; errors inverted)."""
    if not level or not value or math.isnan(value) or math.isnan(level):
        return math.nan
    return level / value if is_lower_better(metric) else value / level


@dataclass(frozen=True)
class Level:
    value: float
    note: str


def pre_change_level(history: pd.DataFrame, week: str, fallback: float, fallback_version: str) -> Level:
    """The level to return to: the last healthy champion's live metric before ``week``.

    ``history``: the judged champion rows of ``<model>.live_performance`` (week, version, value, passed). The last
    healthy champion is the version of the newest passing judged week before ``week``; its level is the mean of its
    newest :data:`LEVEL_WEEKS` passing weeks. Without any, ``fallback`` (the degraded version's own evaluation).
    """
    if len(history):
        weeks = pd.to_datetime(history["week"])
        healthy = history[(weeks < pd.Timestamp(week)) & history["passed"].fillna(False).astype(bool)
                          & history["value"].notna()].assign(week=lambda f: pd.to_datetime(f["week"]))
        if len(healthy):
            healthy = healthy.sort_values("week")
            version = str(healthy["version"].iloc[-1])
            mine = healthy[healthy["version"].astype(str) == version].tail(LEVEL_WEEKS)
            first, last = mine["week"].iloc[0], mine["week"].iloc[-1]
            span = f"week {last:%Y-%m-%d}" if len(mine) == 1 else f"weeks {first:%Y-%m-%d}..{last:%Y-%m-%d}"
            return Level(float(mine["value"].mean()), f"live metric of the last healthy champion v{version} ({span})")
    return Level(float(fallback), f"v{fallback_version}'s own evaluation (no healthy live week before the change)")


@dataclass(frozen=True)
class Reference:
    """What a judged champion is held to in a week: its own evaluation, or a recovery's pre-change level."""

    value: float | None
    against: str  # how the check's reason names it: "at its evaluation", "as the pre-change level (change ...)"
    state: RecoveryState | None  # the recovery the week is in (active) or after (ended), if any


def reference_for(state: RecoveryState | None, version_week: str | None, own_evaluation: float | None) -> Reference:
    """During a recovery, and for every version trained for a week after its change, the pre-change level;
    otherwise the version's own evaluation."""
    if state is not None and (state.active or (version_week is not None and version_week > state.change_week)):
        return Reference(state.level, f"as the pre-change level (change {state.change_week})", state)
    return Reference(own_evaluation, "at its evaluation", state)


def training_start(rows: Sequence[RecoveryRow], model_week: str, window_weeks: int) -> date | None:
    """Where the model of ``model_week`` starts training when a change came before it: the change week, or the
    normal start once the window no longer reaches back past it. None: the spec's normal window.

    The model of week M trains on the weeks before M; the change week C must be before M (C itself is the first week
    of the new regime), and the window never reaches back past C: it grows week by week to ``window_weeks``.
    """
    state = state_before(rows, model_week)
    if state is None:
        return None
    change, model = date.fromisoformat(state.change_week), date.fromisoformat(model_week)
    normal = model - timedelta(weeks=window_weeks)
    if change >= model or change <= normal:
        return None
    return change


@dataclass(frozen=True)
class WeekDecision:
    """What a judged week means for recovery: the row to store (None: nothing) and whether to ask for a retrain."""

    row: RecoveryRow | None
    retrain: bool
    summary: str  # a few words for the check's metadata and the demo (empty: no recovery in play)


def decide_week(state: RecoveryState | None, week: str, metric: str, max_degradation: float, judged: bool,
                passed: bool, version: str | None, live: float | None, level: Level | None,
                retrain_week: str | None, window_weeks: int) -> WeekDecision:
    """Start, continue or end a recovery from week W's verdict on the champion.

    - no recovery on: a failed check starts one (level: ``level``) and its retrain is the first on the new regime;
    - a recovery on: a judged week whose live metric is back within the limit ends it; any other judged week asks
      for another retrain; an unjudged week (too few outcomes) changes nothing.
    """
    active = state is not None and state.active
    if not judged or version is None or live is None or math.isnan(live):
        return WeekDecision(None, False, f"recovery from {state.change_week} goes on (week not judged)" if active else "")
    if not active:
        if passed or level is None:
            return WeekDecision(None, False, "")
        limit = degradation_limit(metric, level.value, max_degradation)
        row = RecoveryRow(week, STARTED, week, metric, level.value, limit, version, live, retrain_week, level.note)
        return WeekDecision(row, True, f"recovery started: back to {metric} {level.value:.4g} "
                                       f"(limit {limit:.4g}), {level.note}")
    assert state is not None
    if within_limit(metric, live, state.limit):
        weeks = (date.fromisoformat(week) - date.fromisoformat(state.change_week)).days // 7
        note = (f"v{version} live {metric} {live:.4g} is back within the limit {state.limit:.4g} of the pre-change level "
                f"{state.level:.4g} ({share_of_level(metric, live, state.level):.1%} of it), {weeks} week(s) after the "
                f"change of {state.change_week}")
        row = RecoveryRow(week, ENDED, state.change_week, metric, state.level, state.limit, version, live, None, note)
        return WeekDecision(row, False, f"recovery ended: {note}")
    window = window_text(state.change_week, retrain_week, window_weeks)
    note = (f"v{version} live {metric} {live:.4g} is still past the limit {state.limit:.4g} of the pre-change level "
            f"{state.level:.4g}: retrain for {retrain_week} {window}")
    row = RecoveryRow(week, RETRAIN, state.change_week, metric, state.level, state.limit, version, live, retrain_week,
                      note)
    return WeekDecision(row, True, f"recovery goes on: {note}")


def window_text(change_week: str, model_week: str | None, window_weeks: int) -> str:
    """The new-regime window a retrain for ``model_week`` gets, in words."""
    if model_week is None:
        return ""
    start = training_start([RecoveryRow(change_week, STARTED, change_week, "", 0.0, 0.0, "", 0.0, None, "")],
                           model_week, window_weeks)
    if start is None:
        return f"on the spec's {window_weeks}-week window"
    weeks = (date.fromisoformat(model_week) - start).days // 7
    return f"on {start.isoformat()}..{model_week} ({weeks} of {window_weeks} weeks, the new regime only)"


def as_datetime(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())
