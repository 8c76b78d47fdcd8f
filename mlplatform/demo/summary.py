"""What the demo's history did, in a terminal: data gates per model, then the last weeks' metric, gates and aliases.

Read from the warehouse the runs wrote (read-only, waiting while another process writes), so the table shows what
the platform recorded, not what the runner remembers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlplatform import names
from mlplatform.demo.runner import ModelRunResult, weeks_text
from mlplatform.lib.warehouse import connect_when_free, table_name, warehouse_exists

READ_WAIT_SECONDS = 120.0
"""How long the summary waits while another process (a run started from the UI) writes to the warehouse."""


def week_table(warehouse_path: Path, model: str, first: str, last: str) -> pd.DataFrame:
    """The evaluated weeks of one model in [first, last], from the warehouse the pipeline wrote."""
    if not warehouse_exists(warehouse_path):
        return pd.DataFrame()
    with connect_when_free(warehouse_path, READ_WAIT_SECONDS, read_only=True) as connection:
        found = connection.execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [model, names.EVALUATIONS_TABLE],
        ).fetchall()[0][0]
        if not found:
            return pd.DataFrame()
        return connection.execute(
            f"select * from {table_name(model, names.EVALUATIONS_TABLE)} where week between ? and ? order by week",
            [first, last]
        ).fetchdf()


def drift_weeks(warehouse_path: Path, model: str, first: str, last: str) -> list[str] | None:
    """Weeks whose drift check failed (share above the spec's limit), from the drift table."""
    if not warehouse_exists(warehouse_path):
        return None
    with connect_when_free(warehouse_path, READ_WAIT_SECONDS, read_only=True) as connection:
        found = connection.execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [model, names.DRIFT_TABLE]
        ).fetchall()[0][0]
        if not found:
            return None
        rows = connection.execute(
            f"select distinct week from {table_name(model, names.DRIFT_TABLE)} where week between ? and ? "
            "and not check_passed order by week",
            [first, last],
        ).fetchall()
    return [f"{week:%Y-%m-%d}" for (week,) in rows]


NOT_DATA_CHECKS = ("model.", "drift.", f"{names.LIVE_PERFORMANCE}.")
"""Checks the summary shows elsewhere than on its data line."""


def summary_table(results: list[ModelRunResult], warehouse_path: Path, champions: dict[str, str | None],
                  max_weeks: int = 8) -> str:
    """What happened, in a terminal: data gates per model, then the last weeks' metric, gates and aliases."""
    from mlplatform.lib.gates import FAIRNESS, GATES
    from mlplatform.lib.lifecycle import gate_column

    lines = []
    for r in results:
        data_checks = ", ".join(f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in r.checks.items()
                                if not name.startswith(NOT_DATA_CHECKS)) or "none ran"
        lines.append(f"== {r.model}: weeks {r.first_week}..{r.last_week}, run {'succeeded' if r.success else 'FAILED'}")
        if r.skipped_weeks:
            lines.append(f"   skipped {len(r.skipped_weeks)} weeks without rows in the source: "
                         f"{weeks_text(r.skipped_weeks)}")
        lines.append(f"   data: {r.rows.get('raw', 0)} raw rows, {r.rows.get('features', 0)} feature rows; {data_checks}")
        for name, ok in r.checks.items():
            if not ok and not name.startswith(NOT_DATA_CHECKS):
                lines.append(f"   {name} failed: {r.check_summaries.get(name, '')}")
        drifted = drift_weeks(warehouse_path, r.model, r.first_week, r.last_week)
        if drifted is not None:
            lines.append(f"   drift check failed on {len(drifted)} weeks: {', '.join(drifted[:12])}"
                         + (" ..." if len(drifted) > 12 else "") if drifted else "   drift check passed every week")
        if r.halted:
            lines.append(f"   training halted by the training-data gate on {len(r.halted)} weeks: {', '.join(r.halted[:12])}"
                         + (" ..." if len(r.halted) > 12 else ""))
        if r.retrains:
            ok = sum(1 for *_, success in r.retrains if success)
            lines.append(f"   retrain sensor: {len(r.retrains)} retrain runs requested, {ok} succeeded: "
                         + ", ".join(f"{d}->{w}" for d, w, _ in r.retrains[:8]) + (" ..." if len(r.retrains) > 8 else ""))
        weeks = week_table(warehouse_path, r.model, r.first_week, r.last_week)
        if weeks.empty:
            lines.append("   no week trained")
            continue
        metric = weeks["metric"].iloc[0]
        # fairness shows for a model whose spec has the gate (its evaluations table then has the column)
        shown_gates = [*GATES, *([FAIRNESS] if gate_column(FAIRNESS) in weeks.columns else [])]
        passed_all = weeks[[gate_column(g) for g in shown_gates]].fillna(True).astype(bool).all(axis=1)
        lines.append(f"   {len(weeks)} weeks trained; {int(passed_all.sum())} passed every gate; "
                     f"champion now: {'v' + champions[r.model] if champions.get(r.model) else 'none'}")
        shown = weeks.tail(max_weeks)
        if len(weeks) > max_weeks:
            lines.append(f"   (last {max_weeks} weeks; all weeks: {r.model}/backtest in the UI)")
        header = f"   {'week':<10} {'rows':>6} {'version':>7} {metric:>9}  " + " ".join(f"{g:<18}" for g in shown_gates) + " aliases"
        lines.append(header)
        for row in shown.itertuples():
            gates = " ".join(f"{_verdict(getattr(row, gate_column(g))):<18}" for g in shown_gates)
            lines.append(f"   {row.week:%Y-%m-%d} {row.eval_rows:>6} {'v' + row.model_version:>7} {row.value:>9.4g}  "
                         f"{gates} {row.aliases_set or '-'}")
    return "\n".join(lines)


def _verdict(passed: object) -> str:
    """PASS/FAIL; '-' for a week evaluated before the model had that gate (the column is null there)."""
    return "-" if pd.isna(passed) else ("PASS" if passed else "FAIL")
