"""The README's commands, run as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlplatform.cli import main
from mlplatform.lib.settings import REPO_DIR
from mlplatform_tests.conftest import TOY_SPEC, toy_rows


def test_validate_lists_problems_and_exits_nonzero(home, spec_dir, capsys):
    spec_dir({"toy.yaml": TOY_SPEC.replace("target: y", "target: yy")}, {"toy.csv": toy_rows()})
    assert main(["validate"]) == 1
    assert "target: found 'yy', which is not a column of source toy.csv" in capsys.readouterr().err


def test_validate_ok(home, spec_dir, capsys):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    assert main(["validate"]) == 0
    assert "ok  toy" in capsys.readouterr().out


def readme_commands() -> tuple[str, str]:
    """The two commands of the README's "Two commands" block: the main job and the test command."""
    text = (REPO_DIR / "README.md").read_text()
    block = text.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert len(commands) == 2, commands
    return commands[0], commands[1]


def test_readme_names_the_two_commands_ci_runs():
    demo, test = readme_commands()
    assert demo == "python3 dev.py demo" and test == "python3 dev.py test"
    ci = [line.strip() for line in (REPO_DIR / ".ci" / "run").read_text().splitlines()]
    assert test in ci  # CI runs exactly the README's test command
    # ...then the services stage: the same command, restricted to the `services` tests, which must not skip there.
    assert ci[-1] == f"MLPLATFORM_REQUIRE_SERVICES=1 {test} -m services -n 0"
    assert ci.index(test) < len(ci) - 1


@pytest.mark.slow
def test_readme_main_command_runs_end_to_end_from_a_clean_home(tmp_path, monkeypatch):
    """The demo from a clean home, judged by properties held against the stores it left: what it printed agrees
    with the warehouse, the registry and the instance; every verdict agrees with its numbers; production ran on
    weeks the serving version never trained on; and each bundled example tells the story its data were made for."""
    env = {**os.environ, "MLPLATFORM_HOME": str(tmp_path / "state")}
    env.pop("MLPLATFORM_SPECS", None)
    demo, _ = readme_commands()
    result = subprocess.run(
        [sys.executable, *demo.split()[1:]], cwd=REPO_DIR, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    out = result.stdout
    state = tmp_path / "state"
    assert (state / "warehouse.duckdb").exists() and (state / "mlflow" / "mlflow.db").exists()
    assert (state / "dagster" / "dagster.yaml").exists()
    assert not (REPO_DIR / "mlruns").exists()
    assert "python3 dev.py ui" in out and "python3 dev.py mlflow-ui" in out
    monkeypatch.setenv("MLPLATFORM_HOME", str(state))
    monkeypatch.delenv("MLPLATFORM_SPECS", raising=False)
    assert_the_demo_agrees_with_its_stores(out, state)
    assert_one_retrain_per_drift_failure(state, "car_loan", after="2019-04-01")
    assert_concept_drift_is_caught_by_live_performance_alone(state, "churn_shift", flip="2024-03-18")
    assert_every_lifecycle_event_is_in_the_audit_trail(state)


def assert_the_demo_agrees_with_its_stores(out: str, state: Path) -> None:
    """Per model: the history summary, the thresholds, the audited aliases, and production's counts and weeks."""
    from datetime import date, timedelta

    import duckdb
    from dagster import AssetCheckKey, AssetKey, DagsterInstance

    from mlplatform import names
    from mlplatform.defs.check_history import check_executions
    from mlplatform.demo.plan import load_plan
    from mlplatform.demo.runner import specs_by_name
    from mlplatform.lib.settings import BUNDLED_SPECS_DIR, load_settings
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
    from mlplatform_tests import demo_checks

    specs, tracker = specs_by_name(), Tracker.for_settings(load_settings())
    plan = load_plan(BUNDLED_SPECS_DIR, specs)
    history, production = demo_checks.blocks(out, ""), demo_checks.blocks(out, " in production")
    assert set(history) == set(production) == set(specs)
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as connection, \
            DagsterInstance.from_config(str(state / "dagster")) as instance:
        for model, spec in specs.items():
            block = history[model]
            first, last = re.match(r"weeks (\S+)\.\.(\S+), run succeeded", block).groups()
            if spec.partitions.end is not None:  # the history stops where the planned production weeks begin
                held = plan[model].weeks if model in plan else 0
                assert date.fromisoformat(last) == spec.partitions.end - timedelta(weeks=1 + held), model
            raw, features = map(int, re.search(r"data: (\d+) raw rows, (\d+) feature rows", block).groups())
            assert raw == features > 0, model
            evaluations = connection.execute(f'select * from "{model}".evaluations where week between ? and ? '
                                             "order by week", [first, last]).fetchdf()
            champion = tracker.alias_version(model, CHAMPION)  # now, after production
            [then] = connection.execute(  # at the end of the history: its last audited champion move
                "select max_by(version, changed_at) from audit.alias_changes where model = ? and alias = 'champion' "
                "and week <= ?", [model, last]).fetchone()
            demo_checks.assert_history_summary_agrees(block, evaluations, then)
            demo_checks.assert_threshold_verdicts_follow_the_spec(evaluations, spec)
            demo_checks.assert_every_alias_has_its_audit_row(connection, tracker, model)
            halted = re.search(r"training halted by the training-data gate on (\d+) weeks: (.*)", block)
            if halted:  # a halted week trained no version
                weeks = halted.group(2).replace(" ...", "").split(", ")
                assert int(halted.group(1)) >= len(weeks) and not set(weeks) & set(
                    evaluations["week"].dt.strftime("%Y-%m-%d"))
            waits = f"{model} waits for a person (rollout.approval: manual)" in out
            assert waits == (champion is None and tracker.alias_version(model, CHALLENGER) is not None), model

            lived = production[model]
            if model not in plan:
                assert "not in the demo's production plan" in lived, lived
                continue
            assert champion is not None, f"{model} is in the production plan but has no champion"
            live_first, live_last = re.search(r"(?:lived|replayed) weeks (\S+)\.\.(\S+) through", lived).groups()
            assert date.fromisoformat(live_first) == date.fromisoformat(last) + timedelta(weeks=1)
            assert date.fromisoformat(live_last) == date.fromisoformat(live_first) + timedelta(
                weeks=plan[model].weeks - 1)
            demo_checks.assert_production_counts_add_up(lived, connection, spec)
            demo_checks.assert_production_weeks_are_unseen(connection, tracker, model, live_first, live_last)
            records = check_executions(instance, AssetCheckKey(AssetKey([model, names.LIVE_PERFORMANCE]),
                                                               names.LIVE_DEGRADATION_CHECK), 0)
            details = [{**r.details, "passed": r.passed} for r in records if live_first <= r.week <= live_last]
            assert {d["week"] for d in details} == {(date.fromisoformat(live_first) + timedelta(weeks=i)).isoformat()
                                                   for i in range(plan[model].weeks)}
            demo_checks.assert_degradation_verdicts_follow_their_numbers(details, spec.primary_metric)
            evaluated = dict(connection.execute(f'select model_version, value from "{model}".evaluations').fetchall())
            for d in details:
                if d["judged"]:  # the reference is the serving version's own evaluation
                    assert d["evaluation"] == pytest.approx(evaluated[d["version"]]), d


def assert_every_lifecycle_event_is_in_the_audit_trail(state: Path) -> None:
    """After the demo and a person's approval and rollback, the trail holds every event type a run can cause,
    and each model's chain verifies (a canary is stopped only in a canary scenario: test_production_loop.py; batch
    scoring in test_batch_scoring.py)."""
    import duckdb

    from mlplatform.cli import main
    from mlplatform.lib.audit import EVENT_TYPES, champion_history

    with duckdb.connect(str(state / "warehouse.duckdb")) as connection:
        earlier = champion_history(connection, "churn_shift")[1]  # the champion before the retrained one
    assert main(["promote", "car_loan", "--by", "ana", "--reason", "backtest reviewed"]) == 0
    assert main(["rollback", "churn_shift", "--to", earlier, "--by", "ana", "--reason", "audit drill"]) == 0
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as connection:
        found = {event for (event,) in connection.execute("select distinct event from audit.events").fetchall()}
    # no bundled spec scores in batch, and importing a model trained elsewhere is a person's act the demo has no file for
    # and no bundled spec has approvers or requires live fairness, so no approval is refused or waits; no retrain run
    # of the demo fails (a failed one is recorded by the alerts sensor: test_alerts.py)
    assert found == set(EVENT_TYPES) - {"canary_stopped", "canary_step", "canary_promoted", "batch_scored",
                                        "model_imported", "promotion_refused", "retrain_failed",
                                        "approval_refused", "approval_pending"}
    for model in ("bike_demand", "car_loan", "churn_shift", "german_credit"):
        assert main(["audit", model, "--verify"]) == 0


def assert_one_retrain_per_drift_failure(state: Path, model: str, after: str) -> None:
    """Read the demo's instance: one drift-triggered run per week whose drift check failed (the warehouse's drift
    table), all in the weeks the data drift in; a new sensor tick asks for nothing more."""
    import json

    from dagster import DagsterInstance, RunsFilter, SensorResult, build_sensor_context

    from mlplatform_tests.helpers import warehouse_query

    drifted = sorted(warehouse_query(state, f"select distinct strftime(week, '%Y-%m-%d') as week from {model}.drift "
                                            "where not check_passed")["week"])
    assert drifted and all(week >= after for week in drifted), drifted
    with DagsterInstance.from_config(str(state / "dagster")) as instance:
        runs = instance.get_runs(filters=RunsFilter(job_name=f"{model}_retrain", tags={"mlplatform/trigger": "drift"}))
        assert sorted(r.tags["mlplatform/drift_week"] for r in runs) == drifted
        assert len({r.tags["dagster/run_key"] for r in runs}) == len(drifted)
        assert all(r.is_success for r in runs)
        from mlplatform.definitions import build_definitions

        defs = build_definitions()
        cursor = json.loads((state / "dagster" / "demo_sensor_cursors.json").read_text())[f"{model}_retrain_on_drift"]
        tick = defs.resolve_sensor_def(f"{model}_retrain_on_drift")(
            build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
        assert isinstance(tick, SensorResult) and not tick.run_requests


def assert_concept_drift_is_caught_by_live_performance_alone(state: Path, model: str, flip: str) -> None:
    """The outcome rule flips on ``flip`` while the inputs keep their distribution: the drift check passes on every
    lived week, live performance falls on the flip week, and that failure requests exactly one retrain, whose
    version serves the weeks after and does better than the old one did on the flip week."""
    from dagster import DagsterInstance, RunsFilter

    from mlplatform import names
    from mlplatform_tests.helpers import warehouse_query

    lived = warehouse_query(state, f"select strftime(week, '%Y-%m-%d') as week, version, value from "
                                   f"{model}.live_performance where role = 'champion' order by week")
    drift = warehouse_query(state, f"select distinct strftime(week, '%Y-%m-%d') as week, check_passed from "
                                   f"{model}.drift where week >= '{lived['week'].min()}'")
    assert set(drift["week"]) == set(lived["week"]) and drift["check_passed"].all()
    with DagsterInstance.from_config(str(state / "dagster")) as instance:
        retrains = instance.get_runs(RunsFilter(job_name=names.retrain_job(model),
                                                tags={names.TRIGGER_TAG: names.DECAY_TRIGGER}))
    assert [run.tags[names.DECAY_WEEK_TAG] for run in retrains] == [flip] and retrains[0].is_success
    before, after = lived[lived["week"] < flip], lived[lived["week"] > flip]
    flipped = lived[lived["week"] == flip]
    assert flipped["value"].item() < min(before["value"].min(), after["value"].min())
    assert not set(after["version"]) & set(flipped["version"])  # the retrained version served after the flip


def test_spec_reference_in_docs_is_what_the_code_generates(capsys):
    """docs/spec-reference.md cannot drift from specs/schema.py: CI fails until it is regenerated."""
    from mlplatform.spec_reference import REFERENCE_PATH, render

    assert REFERENCE_PATH.read_text() == render(), "run `python3 dev.py spec-reference`"
    assert main(["spec-reference", "--check"]) == 0
    assert "| `gates.training_data.max_drifted_share` | float | `0.5` |" in render()


@pytest.mark.slow
def test_readme_test_command_runs_in_a_clean_clone(tmp_path):
    """The README's test command from a fresh `git clone` (reusing this venv, selecting two quick tests)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_DIR), str(clone)], check=True, timeout=120)
    _, test = readme_commands()
    env = {**os.environ, "MLPLATFORM_VENV": sys.prefix, "MLPLATFORM_HOME": str(tmp_path / "state")}
    env.pop("MLPLATFORM_SPECS", None)
    result = subprocess.run(
        [sys.executable, *test.split()[1:], "-n0", "-m", "not slow", "-k", "test_validate_ok or test_validate_lists"],
        cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 passed" in result.stdout
    assert str(clone) in result.stdout  # pytest ran the clone's tests (rootdir)


def _register_versions(gates: list[str]):
    """Real MLflow versions of a small fitted pipeline, one per entry, tagged with the gates' verdict."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    from mlplatform.lib.settings import load_settings
    from mlplatform.lib.tracking import Tracker

    settings = load_settings()
    rows = toy_rows()
    x, y = rows[["x1", "x2"]], rows["y"]
    tracker = Tracker.for_settings(settings)
    for week, verdict in enumerate(gates, start=1):
        pipeline = Pipeline([("estimator", LinearRegression())]).fit(x, y)
        tracker.log_trained_model("toy", f"toy-{week}", pipeline, x.head(5), {"seed": 0}, {"rmse": 0.1}, {},
                                  {}, {"gates": verdict, "week": f"2024-01-{week:02d}"})
    return settings, tracker


def _audit_rows(settings) -> list[tuple]:
    import duckdb

    from mlplatform.lib.audit import alias_history

    with duckdb.connect(str(settings.warehouse_path)) as connection:
        history = alias_history(connection, "toy")
    return list(history[["alias", "version", "previous_version", "actor", "reason"]].itertuples(index=False, name=None))


def test_promote_moves_the_champion_and_audits_who_and_why_refusing_failed_gates(home, capsys):
    settings, tracker = _register_versions(["passed", "failed"])
    assert main(["promote", "toy", "--by", "alice"]) == 1  # no challenger alias yet
    assert "has no challenger" in capsys.readouterr().err
    assert main(["promote", "toy", "--version", "1", "--by", " "]) == 1
    assert "needs the name of the person who approves" in capsys.readouterr().err

    assert main(["promote", "toy", "--version", "2", "--by", "alice"]) == 1
    assert "v2 did not pass every gate (gates=failed)" in capsys.readouterr().err
    assert tracker.alias_version("toy", "champion") is None

    assert main(["promote", "toy", "--version", "7", "--by", "alice"]) == 1
    assert "toy v7: no such registered model version" in capsys.readouterr().err

    tracker.set_alias("toy", "challenger", "1")  # as a version that passed every gate gets it
    assert main(["promote", "toy", "--by", "alice", "--reason", "reviewed the backtest"]) == 0  # the challenger
    assert "champion v- -> v1 (approved by alice)" in capsys.readouterr().out
    assert tracker.alias_version("toy", "champion") == "1"
    assert main(["promote", "toy", "--version", "1", "--by", "alice"]) == 0
    assert "already the champion; nothing changed" in capsys.readouterr().out

    assert main(["promote", "toy", "--version", "2", "--by", "bob", "--reason", "incident fix", "--force"]) == 0
    assert tracker.alias_version("toy", "champion") == "2"
    assert _audit_rows(settings) == [
        ("champion", "1", None, "alice", "reviewed the backtest"),
        ("champion", "2", "1", "bob", "incident fix [forced with --force: gates=failed]"),
    ]

    capsys.readouterr()
    for flags in ([], ["--aliases"]):  # a mistyped --since is named, not a traceback or a silently empty trail
        with pytest.raises(SystemExit) as refused:
            main(["audit", "toy", *flags, "--since", "garbage"])
        assert refused.value.code == 2 and "--since: found 'garbage'; give a date as YYYY-MM-DD" in \
            capsys.readouterr().err
        assert main(["audit", "toy", *flags, "--since", "2000-01-01"]) == 0
        assert "incident fix" in capsys.readouterr().out


def test_promote_while_a_run_holds_the_warehouse_changes_nothing_then_succeeds_once_free(home, capsys):
    settings, tracker = _register_versions(["passed"])
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(  # another process with the warehouse open, as a run writing a week has
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('open', flush=True); "
         "time.sleep(120)", str(settings.warehouse_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert main(["promote", "toy", "--version", "1", "--by", "alice", "--wait", "0.5"]) == 1
        err = capsys.readouterr().err
        assert "not promoted, nothing changed" in err and "stayed locked by another process for 0.5 s" in err
        assert tracker.alias_version("toy", "champion") is None
    finally:
        holder.kill()
        holder.wait()
    assert main(["promote", "toy", "--version", "1", "--by", "alice", "--wait", "30"]) == 0
    assert tracker.alias_version("toy", "champion") == "1"
    assert _audit_rows(settings) == [("champion", "1", None, "alice", "manual approval")]


def test_demo_checks_models_and_weeks_before_running_anything(home, spec_dir, capsys):
    from mlplatform.lib.settings import load_settings

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    refused = {
        ("--model", "toyy"): "no model named toyy; the specs define toy",
        ("--start", "2024/01/08"): "--start 2024/01/08: not a week of toy; expected YYYY-MM-DD, a Monday. "
                                   "toy's weeks are the Mondays 2024-01-01 .. 2024-01-15",
        ("--end", "2024-01-09"): "--end 2024-01-09: not a week of toy",
        ("--weeks", "0"): "--weeks 0: give 1 or more weeks",
        ("--start", "2024-01-15", "--end", "2024-01-08"): "--end 2024-01-08 is before --start 2024-01-15",
    }
    for arguments, message in refused.items():
        assert main(["demo", *arguments]) == 1, arguments
        err = capsys.readouterr().err
        assert message in err and "nothing was run" in err, err
    assert not load_settings().warehouse_path.exists()  # no run wrote anything


def test_demo_with_a_malformed_spec_lists_the_problems_instead_of_a_traceback(home, spec_dir, capsys):
    spec_dir({"toy.yaml": TOY_SPEC.replace("target: y", "target: yy")}, {"toy.csv": toy_rows()})
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "toy.yaml: target: found 'yy', which is not a column of source toy.csv" in err
    assert "nothing was run" in err


def test_week_range_counts_weeks_from_the_start_and_refuses_a_model_without_a_complete_week():
    from mlplatform.demo.runner import RunRequestError, week_range

    weeks = ["2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22"]
    assert week_range("toy", weeks, None, None, None) == ("2024-01-01", "2024-01-22")
    assert week_range("toy", weeks, "2024-01-08", None, 2) == ("2024-01-08", "2024-01-15")
    assert week_range("toy", weeks, "2024-01-15", None, 10) == ("2024-01-15", "2024-01-22")
    assert week_range("toy", weeks, None, "2024-01-08", None) == ("2024-01-01", "2024-01-08")
    with pytest.raises(RunRequestError, match="toy: no complete week to run yet"):
        week_range("toy", [], None, None, None)


def test_mlflow_ui_opens_the_store_the_platform_tracks_to(home, monkeypatch):
    from mlplatform.cli import mlflow_ui_command
    from mlplatform.lib.settings import load_settings

    settings = load_settings()
    command = mlflow_ui_command(settings, "127.0.0.1", 5001)
    assert command[-6:] == ["--backend-store-uri", f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}",
                            "--host", "127.0.0.1", "--port", "5001"]
    monkeypatch.setenv("MLPLATFORM_MLFLOW_TRACKING_URI", "postgresql://mlflow@db/mlflow")
    assert "postgresql://mlflow@db/mlflow" in mlflow_ui_command(load_settings(), "127.0.0.1", 5001)
    monkeypatch.setenv("MLPLATFORM_MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("MLPLATFORM_MLFLOW_UI_URL", "https://mlflow.example.com")
    assert mlflow_ui_command(load_settings(), "127.0.0.1", 5001) == (
        "models are tracked on the MLflow server http://mlflow.internal:5000 (MLPLATFORM_MLFLOW_TRACKING_URI): "
        "open its UI at https://mlflow.example.com")


def test_prepare_writes_an_instance_config_that_queues_runs_and_keeps_a_users_own(home, capsys):
    from mlplatform.lib.settings import load_settings

    assert main(["prepare"]) == 0
    config = load_settings().dagster_home / "dagster.yaml"
    assert "max_concurrent_runs: 1" in config.read_text()  # DuckDB takes one writer: runs queue
    assert f"DAGSTER_HOME={config.parent}" in capsys.readouterr().out
    config.write_text("telemetry:\n  enabled: false\n")
    assert main(["prepare"]) == 0
    assert config.read_text() == "telemetry:\n  enabled: false\n"
