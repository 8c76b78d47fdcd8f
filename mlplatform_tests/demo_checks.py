"""Properties of what the demo printed and left behind, held against the stores themselves.

Each check would catch a wrong result without copying a number from the program's output: the summary agrees with
the warehouse, every verdict agrees with its numbers and its limit, every alias the registry holds has its audit row,
and production was measured on weeks the serving version never trained on.
"""

from __future__ import annotations

import math
import re
from datetime import date, timedelta

import duckdb
import pandas as pd

from mlplatform.lib.gates import FAIRNESS, GATES
from mlplatform.lib.lifecycle import gate_column
from mlplatform.specs import ModelSpec
from mlplatform.specs.tasks import is_lower_better

VERDICTS = {"PASS": True, "FAIL": False, "-": None}


def blocks(out: str, suffix: str) -> dict[str, str]:
    """The summary's block per model: from ``== <model>: `` (history, suffix "") or ``== <model> in production: ``
    (suffix " in production") to the next ``==`` line."""
    found = {}
    for match in re.finditer(rf"^== (\w+){suffix}: (.*?)(?=^==|^\s*$)", out, re.M | re.S):
        found[match.group(1)] = match.group(2)
    return found


def assert_history_summary_agrees(block: str, evaluations: pd.DataFrame, champion: str | None) -> None:
    """Weeks trained, weeks that passed every shown gate, the champion, and every shown row, as the warehouse has them."""
    counted = re.search(r"(\d+) weeks trained; (\d+) passed every gate; champion now: (\S+)", block)
    assert counted, block
    lines = block.splitlines()
    [header] = [line.split() for line in lines if line.split()[:3] == ["week", "rows", "version"]]
    gates = header[4:-1]
    assert set(gates) == {*GATES, *([FAIRNESS] if gate_column(FAIRNESS) in evaluations else [])}, header
    passed_all = evaluations[[gate_column(g) for g in gates]].fillna(True).astype(bool).all(axis=1)
    assert (int(counted.group(1)), int(counted.group(2))) == (len(evaluations), int(passed_all.sum()))
    assert counted.group(3) == (f"v{champion}" if champion else "none")
    weeks = evaluations["week"].dt.strftime("%Y-%m-%d")
    shown = [line.split() for line in lines if re.match(r"\s+\d{4}-\d{2}-\d{2} ", line)]
    assert shown and len(shown) <= len(evaluations)
    for week, rows, version, value, *rest in shown:  # a retrained week has a row per version
        [row] = [r for _, r in evaluations[(weeks == week) & (evaluations["model_version"] == version[1:])].iterrows()]
        verdicts, aliases = rest[:len(gates)], rest[len(gates)]
        assert int(rows) == row["eval_rows"]
        assert math.isclose(float(value), row["value"], rel_tol=1e-3)
        for gate, verdict in zip(gates, verdicts, strict=True):
            stored = row[gate_column(gate)]
            assert VERDICTS[verdict] == (None if pd.isna(stored) else bool(stored)), (week, gate)
        assert aliases == (row["aliases_set"] or "-")


def assert_threshold_verdicts_follow_the_spec(evaluations: pd.DataFrame, spec: ModelSpec) -> None:
    """Every week's absolute_threshold verdict is its metric value against the spec's bar, in the metric's direction."""
    column = gate_column(GATES[0])
    bar, lower = spec.gates.threshold, is_lower_better(spec.primary_metric)
    for row in evaluations.itertuples():
        expected = bar is None or (row.value <= bar if lower else row.value >= bar)
        assert bool(getattr(row, column)) == expected, (row.week, row.value, bar)


def assert_every_alias_has_its_audit_row(connection: duckdb.DuckDBPyConnection, tracker, model: str) -> None:
    """The registry's champion and challenger are the latest audited move of each; every alias a week set is audited."""
    moves = connection.execute("select alias, version, changed_at from audit.alias_changes where model = ? "
                               "order by changed_at", [model]).fetchdf()
    for alias in ("champion", "challenger"):
        audited = moves[moves["alias"] == alias]
        latest = None if audited.empty or pd.isna(audited["version"].iloc[-1]) else str(audited["version"].iloc[-1])
        assert tracker.alias_version(model, alias) == latest, (model, alias)
    pairs = set(zip(moves["alias"], moves["version"].astype(str), strict=True))
    for week, version, aliases in connection.execute(
            f'select week, model_version, aliases_set from "{model}".evaluations').fetchall():
        for alias in filter(None, (aliases or "").split(",")):
            assert (alias, str(version)) in pairs, (model, week, alias, version)


def training_end(tracker, model: str, version: str) -> date:
    """The end (exclusive) of the window the version was trained on, as its MLflow run recorded it."""
    run_id = tracker.client.get_model_version(model, version).run_id
    return date.fromisoformat(tracker.client.get_run(run_id).data.params["train_end"])


def assert_production_weeks_are_unseen(connection: duckdb.DuckDBPyConnection, tracker, model: str,
                                       first: str, last: str) -> None:
    """Every version measured live in [first, last] was trained on a window that ended before the week it served:
    live numbers are out of sample. (A version the decay sensor retrains for week W is evaluated on W itself, the
    week it then serves: its training window still ends before W.)"""
    measured = connection.execute(f'select week, version from "{model}".live_performance where week between ? and ?',
                                  [first, last]).fetchall()
    assert measured, (model, first, last)
    for week, version in measured:
        served = pd.Timestamp(week).date()
        assert training_end(tracker, model, str(version)) <= served, (model, version, served)


def assert_production_counts_add_up(block: str, connection: duckdb.DuckDBPyConnection, spec: ModelSpec) -> None:
    """Rows sent = rows answered = the prediction log's rows (by version and role) = the weeks' feature rows."""
    sent = re.search(r"weeks (\S+)\.\.(\S+) through the REST service: (\d+) rows sent, (\d+) answered; "
                     r"prediction log: (.*?)(?: \(|$)", block, re.M)
    assert sent, block
    first, last, rows_sent, answered, logged = sent.groups()
    logged_rows = sum(int(n) for n in re.findall(r"v\d+ \w+ (\d+)", logged))
    end = date.fromisoformat(last) + timedelta(weeks=1)
    time_column = spec.time_column.replace('"', '""')
    [(features,)] = connection.execute(f'select count(*) from "{spec.name}".features where "{time_column}" >= ? '
                                       f'and "{time_column}" < ?', [first, end.isoformat()]).fetchall()
    assert int(rows_sent) == int(answered) == logged_rows == features > 0, block


def assert_degradation_verdicts_follow_their_numbers(details: list[dict], metric: str) -> None:
    """A judged live_degradation check fails exactly when the live value and its whole interval are past the limit;
    the limit is the reference (the version's evaluation, or during a recovery from a concept change the pre-change
    level) moved by max_degradation of itself, in the metric's worse direction."""
    judged = [d for d in details if d["judged"]]
    assert judged
    lower = is_lower_better(metric)
    for d in details:
        if not d["judged"]:
            assert d["passed"] is True
            continue
        reference = d.get("reference_value", d["evaluation"])
        shift = d["max_degradation"] * abs(reference)
        assert math.isclose(d["limit"], reference + (shift if lower else -shift), rel_tol=1e-9)
        beyond = (d["live"] > d["limit"] and d["live_ci_low"] > d["limit"]) if lower else \
            (d["live"] < d["limit"] and d["live_ci_high"] < d["limit"])
        assert d["passed"] is (not beyond), d
