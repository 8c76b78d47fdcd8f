"""``mlplatform check``: would this change pass the gates? Train in memory and judge it against the champion.

For a team's CI: on a pull request, each selected model is trained on a fixed recent window (the spec's training
window before its newest complete week, rows as the data stands now) and judged by every gate the weekly step
runs (training data, threshold, sanity, fairness, beat the current champion on the same week's rows). Nothing is
registered, promoted or written to the stores: the training is the weekly step's (:func:`lifecycle.train_week`),
the rows come the way ``mlplatform reproduce`` rebuilds them (:func:`reproduce.current_rows`), and the gate list is
:func:`lifecycle.gate_outcomes`, so a change that passes here passes there on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from mlplatform.lib import gates as gate_lib
from mlplatform.lib.aliases import CHAMPION
from mlplatform.lib.lifecycle import TrainedWeek, TrainingHalted, gate_outcomes, train_week
from mlplatform.lib.model_import import NoEvaluationWeek, newest_week, week_features
from mlplatform.lib.tracking import Tracker
from mlplatform.specs import ModelSpec


@dataclass
class ModelCheck:
    """One model's verdict: the week it was trained for, every gate's outcome, or why it could not be trained."""

    model: str
    week: str | None = None
    train_window: str = ""
    train_rows: int = 0
    champion_version: str | None = None
    gates: list[gate_lib.GateOutcome] = field(default_factory=list)
    problem: str | None = None  # could not train or evaluate at all (a failure too)

    @property
    def passed(self) -> bool:
        return self.problem is None and all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]

    def lines(self) -> list[str]:
        if self.problem is not None:
            return [f"FAIL  {self.model}: {self.problem}"]
        against = f"champion v{self.champion_version}" if self.champion_version else "no champion yet"
        head = (f"{'ok  ' if self.passed else 'FAIL'}  {self.model}: week {self.week}, trained on {self.train_window} "
                f"({self.train_rows} rows), against {against}: "
                + (f"{len(self.gates)} gates passed" if self.passed
                   else f"failed gate(s): {', '.join(self.failed_gates)}"))
        return [head] + [f"        {'pass' if g.passed else 'FAIL'}  {g.name}: {g.reason}" for g in self.gates]


def check_model(spec: ModelSpec, tracker: Tracker, warehouse: Path, today: date) -> ModelCheck:
    """Train ``spec``'s model for its newest complete week in memory and run every gate against the champion."""
    result = ModelCheck(spec.name)
    try:
        result.week = newest_week(spec, today)
        features = week_features(spec, result.week, warehouse)
    except NoEvaluationWeek as error:
        result.problem = str(error)
        return result
    try:
        trained = train_week(spec, features, datetime.fromisoformat(result.week))
    except Exception as error:  # noqa: BLE001 - the team's code or params failed to fit: that is the finding
        result.problem = f"training for week {result.week} failed: {type(error).__name__}: {error}"
        return result
    if isinstance(trained, TrainingHalted):
        result.gates = [trained.gate]
        return result
    if not isinstance(trained, TrainedWeek):
        result.problem = trained  # why the week could not be trained (no rows, a single class)
        return result
    window = trained.train_window
    result.train_window = f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}"
    result.train_rows = trained.train_rows
    result.champion_version = tracker.alias_version(spec.name, CHAMPION)
    try:
        result.gates = gate_outcomes(spec, trained, tracker, result.champion_version)
    except Exception as error:  # noqa: BLE001 - e.g. the champion does not take the changed spec's columns
        result.problem = (f"the champion v{result.champion_version} could not be compared on week {result.week}'s "
                          f"rows ({type(error).__name__}: {error})")
    return result


def report(checks: list[ModelCheck]) -> list[str]:
    """The short report CI prints: one line per model, its gates under it, and the verdict."""
    failed = [c for c in checks if not c.passed]
    lines = [line for check in checks for line in check.lines()]
    lines.append(f"check: {len(checks) - len(failed)} of {len(checks)} model(s) passed every gate"
                 + (f"; FAILED: {', '.join(c.model for c in failed)}" if failed else "")
                 + " (nothing was registered or promoted)")
    return lines
