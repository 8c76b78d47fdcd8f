"""Recovery from a concept change, lived week by week through the real service, for several training windows.

Data: :func:`mlplatform.demo.synthetic.churn_weeks`, inputs drawn from one distribution every week, the outcome
rule flipping from A to B at a known week (``--change``); a control dataset keeps rule A throughout. Each scenario
is a binary model (LogisticRegression, ``approval: auto``, ``automation.retrain: on_drift``) with
``training_window_weeks`` = 1, 4 or 8: its history runs as one pipeline run, then each production week is lived as
the demo lives it (:func:`mlplatform.demo.production.run_production`, shape ``week_by_week``): the week's rows
through the REST service (a subprocess), the weekly job (data, drift, live performance), the sensors' ticks and the
runs they request, and the service hot-swapping the champion.

Per window it prints the pre-change level (the live ROC AUC of the last healthy champion, as the platform recorded
it), the champion's live ROC AUC per lived week, the weeks from the change until it is back to at least 95 % of the
level, the share of the level reached in the last week, and the recovery's audit events. The control prints how
many recoveries started and how many retrains were requested over its lived weeks (target: 0).

    .venv/bin/python benchmarks/recovery.py                       # windows 1 4 8, control over 20 lived weeks
    .venv/bin/python benchmarks/recovery.py --windows 4 --control-weeks 0
    .venv/bin/python benchmarks/recovery.py --windows 4 --rows 60 --max-degradation 0.03 --after 5 --control-weeks 0

Each scenario runs in its own process and temporary home (MLPLATFORM_HOME, MLPLATFORM_SPECS, DAGSTER_HOME).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START = date(2024, 1, 1)
BACK_SHARE = 0.95


def spec_text(end: date, window: int, max_degradation: float) -> str:
    return textwrap.dedent(f"""
        name: churn
        task: binary
        source:
          path: churn.csv
          timestamp: signup_time
        target: churned
        features:
          numeric: [tenure_months, monthly_charges, support_calls, usage_hours]
          categorical: [contract]
        columns:
          churned: {{categories: [0, 1]}}
          contract: {{categories: [month-to-month, one-year, two-year]}}
        partitions:
          start: {START.isoformat()}
          end: {end.isoformat()}
          training_window_weeks: {window}
        estimator:
          class: sklearn.linear_model.LogisticRegression
          params: {{max_iter: 1000}}
        gates:
          metric: roc_auc
          threshold: 0.7
        automation:
          retrain: on_drift
          weekly_schedule: false
        rollout:
          approval: auto
          rollback: {{max_degradation: {max_degradation}}}
        """)


def week(index: int) -> str:
    return (START + timedelta(weeks=index)).isoformat()


def scenario(window: int, history: int, lived: int, change: int | None, rows: int, max_degradation: float) -> dict:
    """One model lived through its production weeks, in this process (the caller set up the environment)."""
    from mlplatform.demo.synthetic import churn_weeks

    total = history + lived
    rules = ["A" if change is None or i < change else "B" for i in range(total)]
    folder = Path(os.environ["MLPLATFORM_SPECS"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "churn.yaml").write_text(spec_text(START + timedelta(weeks=total), window, max_degradation))
    churn_weeks(START, rules, rows_per_week=rows).to_csv(folder / "churn.csv", index=False)

    from dagster import DagsterInstance, RunsFilter

    from mlplatform import names
    from mlplatform.definitions import build_definitions
    from mlplatform.defs.instance import prepare_dagster_home
    from mlplatform.demo.plan import ProductionWeeks
    from mlplatform.demo.production import run_production
    from mlplatform.demo.runner import run_job, specs_by_name
    from mlplatform.lib.settings import load_settings
    from mlplatform.lib.tracking import Tracker
    from mlplatform.lib.warehouse import connect_when_free
    settings = load_settings()
    prepare_dagster_home(settings)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    defs, instance = build_definitions(), DagsterInstance.get()
    began = time.monotonic()
    if not run_job(defs, instance, names.pipeline_job("churn"), week(0), week(history - 1)).success:
        raise RuntimeError("the history run failed")
    history_seconds = time.monotonic() - began
    champion = Tracker.for_settings(settings).alias_version("churn", "champion")
    began = time.monotonic()
    [summary] = run_production(settings, [specs_by_name()["churn"]], {"churn": champion},
                               {"churn": week(history - 1)}, {"churn": ProductionWeeks(lived)})
    lived_seconds = time.monotonic() - began
    with connect_when_free(settings.warehouse_path, 60, read_only=True) as connection:
        live = connection.execute("select strftime(week, '%Y-%m-%d'), version, value from churn.live_performance "
                                  "where role = 'champion' and judged order by week").fetchall()
        tables = {name for (name,) in connection.execute(
            "select table_name from information_schema.tables where table_schema = 'churn'").fetchall()}
        recovery = connection.execute("select strftime(week, '%Y-%m-%d'), event, level, note from churn.recovery "
                                      "order by week").fetchall() if "recovery" in tables else []
        events = connection.execute("select event, week, summary from audit.events where model = 'churn' and event in "
                                    "('recovery_started', 'recovery_retrain', 'recovery_ended', 'performance_alert') "
                                    "order by seq").fetchall()
    retrains = instance.get_runs(RunsFilter(job_name=names.retrain_job("churn"),
                                            tags={names.TRIGGER_TAG: names.DECAY_TRIGGER}))
    return {"window": window, "change": week(change) if change is not None else None, "live": live,
            "recovery": recovery, "events": events, "retrains": sorted(r.tags.get(names.DECAY_WEEK_TAG, "")
                                                                       for r in retrains),
            "actions": [(w.week, w.served_by, "; ".join(w.actions)) for w in summary.story],
            "history_seconds": history_seconds, "lived_seconds": lived_seconds}


def run_isolated(window: int, history: int, lived: int, change: int | None, rows: int, max_degradation: float) -> dict:
    """:func:`scenario` in a child process with a fresh temporary home."""
    with tempfile.TemporaryDirectory(prefix=f"recovery-w{window}-") as tmp:
        env = {**os.environ, "MLPLATFORM_HOME": str(Path(tmp) / "home"), "MLPLATFORM_SPECS": str(Path(tmp) / "specs")}
        env.pop("DAGSTER_HOME", None)
        arguments = json.dumps([window, history, lived, change, rows, max_degradation])
        done = subprocess.run([sys.executable, __file__, "--child", arguments], env=env, cwd=tmp, capture_output=True,
                              text=True)
        if done.returncode:
            raise RuntimeError(f"scenario window {window} failed:\n{done.stderr[-4000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def report_change(result: dict) -> list[str]:
    change = result["change"]
    level = next((lvl for _, event, lvl, _ in result["recovery"] if event == "recovery_started"), None)
    lines = [f"== training_window_weeks {result['window']}: rule A -> B on {change}; history "
             f"{result['history_seconds']:.0f} s, lived weeks {result['lived_seconds']:.0f} s"]
    back = None
    for w, version, value in result["live"]:
        share = f"{value / level:.1%} of the level" if level and w >= change else ""
        lines.append(f"   {w}  v{version:<3} live roc_auc {value:.3f}  {share}")
        if level and w > change and back is None and value >= BACK_SHARE * level:
            back = (date.fromisoformat(w) - date.fromisoformat(change)).days // 7
    last = result["live"][-1][2] if result["live"] else float("nan")
    lines.append(f"   pre-change level {level:.3f}" if level is not None else "   no recovery started")
    lines.append(f"   weeks from the change to >= {BACK_SHARE:.0%} of the level: {back if back is not None else 'not back'}"
                 f"; level reached in the last lived week: {last:.3f}"
                 + (f" ({last / level:.1%})" if level else ""))
    lines.append(f"   retrains requested by the decay sensor (week judged): {', '.join(result['retrains']) or 'none'}")
    lines += [f"   lived {w}: served by v{v}: {actions or '-'}" for w, v, actions in result["actions"]]
    for event, w, summary in result["events"]:
        lines.append(f"   audit {event} {w}: {summary[:150]}")
    return lines


def report_control(result: dict) -> list[str]:
    started = [e for e in result["events"] if e[0] == "recovery_started"]
    values = [v for _, _, v in result["live"]]
    return [f"== control: no change over {len(result['live'])} lived weeks (window {result['window']}); history "
            f"{result['history_seconds']:.0f} s, lived weeks {result['lived_seconds']:.0f} s",
            f"   live roc_auc min {min(values):.3f} mean {sum(values) / len(values):.3f} max {max(values):.3f}",
            f"   false recoveries (recovery_started): {len(started)}; decay retrains: {len(result['retrains'])}; "
            f"performance alerts: {sum(1 for e in result['events'] if e[0] == 'performance_alert')}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--history", type=int, default=9, help="weeks run as history (at least the largest window + 1)")
    parser.add_argument("--before", type=int, default=1, help="lived weeks before the change (healthy)")
    parser.add_argument("--after", type=int, default=4, help="lived weeks from the change on")
    parser.add_argument("--rows", type=int, default=400, help="rows per week")
    parser.add_argument("--max-degradation", type=float, default=0.10, help="rollout.rollback.max_degradation")
    parser.add_argument("--control-weeks", type=int, default=20, help="lived weeks of the control (0: no control)")
    parser.add_argument("--control-window", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(scenario(*json.loads(args.child)), default=str))
        return
    for window in args.windows:
        change = args.history + args.before
        print("\n".join(report_change(run_isolated(window, args.history, args.before + args.after, change, args.rows,
                                                         args.max_degradation))),
              flush=True)
    if args.control_weeks:
        history = args.control_window + 1
        print("\n".join(report_control(run_isolated(args.control_window, history, args.control_weeks, None,
                                                    args.rows, args.max_degradation))), flush=True)


if __name__ == "__main__":
    main()
