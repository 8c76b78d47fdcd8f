"""The warehouse on a real PostgreSQL 15 with many writers at once: the guarantees DuckDB's file lock gave for free
(one writer per model, an audit chain that cannot fork, audit rows and alias moves as one unit) hold explicitly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg2
import pytest

from mlplatform.cli import main
from mlplatform.lib.audit import AuditEvent, append_events, read_events, verify_chain
from mlplatform.lib.settings import export_warehouse_url
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.lib.warehouse import connect_when_free
from mlplatform_tests.conftest import TOY_SPEC, toy_rows

pytestmark = pytest.mark.services

_DATABASES = iter(range(1, 1000))


@pytest.fixture
def postgres_home(postgres_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home whose warehouse and MLflow store are fresh databases on the session's PostgreSQL (several processes
    write the registry at once: SQLite would make them take turns), set as a user sets them."""
    n = next(_DATABASES)
    warehouse = postgres_server.create_database(f"torture_warehouse_{n}")
    postgres_server.create_database(f"torture_mlflow_{n}")
    home = tmp_path / "home"
    home.mkdir()
    for name in ("MLPLATFORM_WAREHOUSE_URL", "MLPLATFORM_DBT_TARGET", "MLPLATFORM_PG_HOST", "MLPLATFORM_PG_PORT",
                 "MLPLATFORM_PG_USER", "MLPLATFORM_PG_PASSWORD", "MLPLATFORM_PG_DATABASE"):
        monkeypatch.setenv(name, "")
    export_warehouse_url(warehouse)
    monkeypatch.setenv("MLPLATFORM_HOME", str(home))
    monkeypatch.setenv("MLPLATFORM_MLFLOW_TRACKING_URI",
                       postgres_server.url(f"torture_mlflow_{n}", driver="postgresql+psycopg2"))
    monkeypatch.setenv("MLPLATFORM_MLFLOW_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.chdir(tmp_path)
    return home


def _tracker() -> Tracker:
    return Tracker(os.environ["MLPLATFORM_MLFLOW_TRACKING_URI"], Path(os.environ["MLPLATFORM_MLFLOW_ARTIFACTS"]))


def _spawn(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"worker failed ({process.returncode}):\n{out}\n{err[-4000:]}"
    return out


MOVER = """
import os, sys
from pathlib import Path
from mlplatform.lib import approvals
from mlplatform.lib.audit import AuditEvent, append_events
from mlplatform.lib.promotion import AliasChange
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.lib.warehouse import connect_when_free

worker, moves = sys.argv[1], int(sys.argv[2])
home = Path(os.environ["MLPLATFORM_HOME"])
tracker = Tracker(os.environ["MLPLATFORM_MLFLOW_TRACKING_URI"], Path(os.environ["MLPLATFORM_MLFLOW_ARTIFACTS"]))

def decide(connection, registry):
    current = registry.alias_version("torture", CHAMPION)
    target = str(int(current or 0) % 3 + 1)
    return AliasChange("torture", CHAMPION, target, current, f"worker {worker}", "torture", None, kind="approval")

with connect_when_free(home / "warehouse.duckdb", 60) as side:
    for i in range(moves):
        approvals.move_champion(home, home / "warehouse.duckdb", tracker, 60, decide)
        append_events(side, [AuditEvent("torture", "drift_alert", f"worker {worker}", f"append {i}")])
print("done")
"""


def test_four_processes_moving_one_models_champion_and_appending_its_audit_leave_one_intact_chain(
        postgres_home, capsys):
    tracker = _tracker()
    tracker.client.create_registered_model("torture")
    for _ in range(3):
        tracker.client.create_model_version("torture", source=str(postgres_home / "nothing"))
    workers, moves = 4, 50
    started = time.monotonic()
    processes = [_spawn(MOVER, str(n), str(moves)) for n in range(workers)]
    for process in processes:
        _finish(process)
    elapsed = time.monotonic() - started

    with connect_when_free(postgres_home / "warehouse.duckdb", 30) as connection:
        events = read_events(connection, "torture")
        alias_rows = connection.execute("select version from audit.alias_changes where model = 'torture' "
                                        "order by changed_at").fetchall()
    assert verify_chain(events) == []
    assert events["seq"].tolist() == list(range(1, 2 * workers * moves + 1))  # contiguous: no fork, no gap
    moved = events[events["event"] == "approval"]
    assert len(moved) == workers * moves == len(alias_rows)
    assert moved.iloc[-1]["version"] == alias_rows[-1][0] == tracker.alias_version("torture", CHAMPION)
    # every move starts from where the one before it (in the trail) left the alias: no two decided from one state
    previous = [None, *moved["version"].tolist()[:-1]]
    details = [__import__("json").loads(d)["previous_version"] for d in moved["details"]]
    assert details == previous
    assert (postgres_home / "audit_checkpoints").is_dir()  # the second anchor is written beside the server too
    assert main(["audit", "torture", "--verify"]) == 0
    assert f"intact ({2 * workers * moves} events" in capsys.readouterr().out
    print(f"torture: {workers} x {moves} moves + appends in {elapsed:.1f} s")


APPENDER = """
import os, sys, time
from pathlib import Path
from mlplatform.lib.audit import AuditEvent, append_events
from mlplatform.lib.warehouse import connect_when_free, lock_model

with connect_when_free(Path(os.environ["MLPLATFORM_HOME"]) / "warehouse.duckdb", 30) as connection:
    connection.begin()
    lock_model(connection, "killed")
    append_events(connection, [AuditEvent("killed", "gate", "run", f"gate {i}", passed=True) for i in range(3)])
    print("appended", flush=True)
    time.sleep(60)  # the rest of the unit (the alias moves) never comes: the process is killed here
    connection.commit()
"""


def test_a_process_killed_in_the_middle_of_an_audit_append_leaves_nothing_and_the_next_append_goes_on(
        postgres_home):
    warehouse = postgres_home / "warehouse.duckdb"
    with connect_when_free(warehouse, 30) as connection:
        append_events(connection, [AuditEvent("killed", "approval", "alice", "champion -> v1", version="1")])
    process = _spawn(APPENDER)
    assert process.stdout.readline().strip() == "appended"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    with connect_when_free(warehouse, 30) as connection:
        assert read_events(connection, "killed")["seq"].tolist() == [1]  # the killed unit rolled back whole
        connection.execute("set lock_timeout = '20s'")  # a lock the dead session still held would raise here
        append_events(connection, [AuditEvent("killed", "approval", "bob", "champion -> v2", version="2")])
        events = read_events(connection, "killed")
        held = connection.execute("select count(*) from pg_locks where locktype = 'advisory'").fetchone()[0]
    assert held == 0  # the dead process's lock went with its session, and ours with our transaction
    assert events["seq"].tolist() == [1, 2] and verify_chain(events) == []


def test_a_forged_second_event_with_a_taken_sequence_number_is_refused_by_the_constraint(postgres_home):
    with connect_when_free(postgres_home / "warehouse.duckdb", 30) as connection:
        append_events(connection, [AuditEvent("forged", "approval", "alice", "champion -> v1", version="1")])
        with pytest.raises(psycopg2.errors.UniqueViolation):
            connection.execute("insert into audit.events (model, seq, event, actor, summary, prev_hash, hash) "
                               "values ('forged', 1, 'approval', 'mallory', 'champion -> v9', 'x', 'y')")
        assert read_events(connection, "forged")["actor"].tolist() == ["alice"]


TWO_MODEL_SPEC = TOY_SPEC.replace("  end: 2024-01-22", "  end: 2024-01-29") + """
estimator:
  class: sklearn.linear_model.Ridge
gates:
  threshold: 1.0
rollout:
  approval: auto
"""

BACKFILL = """
import sys
from dagster import DagsterInstance
from mlplatform.definitions import build_definitions
from mlplatform_tests.helpers import run_weeks

with DagsterInstance.ephemeral() as instance:
    result = run_weeks(build_definitions(), sys.argv[1], instance, "2024-01-01", "2024-01-22")
print("ok" if result.success else "failed")
sys.exit(0 if result.success else 1)
"""

MULTIPROCESS_BACKFILL = """
import json, subprocess, sys
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

tags = {ASSET_PARTITION_RANGE_START_TAG: "2024-01-01", ASSET_PARTITION_RANGE_END_TAG: "2024-01-22"}
done = subprocess.run([sys.executable, "-m", "dagster", "job", "execute", "-m", "mlplatform.definitions",
                       "-j", sys.argv[1] + "_pipeline", "--tags", json.dumps(tags)], capture_output=True, text=True)
log = done.stdout + done.stderr
print(log[-4000:])
print("step processes:", log.count("STEP_WORKER_STARTED"), "run succeeded:", "RUN_SUCCESS" in log)
sys.exit(done.returncode)
"""

PROMOTE_LOOP = """
import os, sys, time
from pathlib import Path
from mlplatform.lib import approvals
from mlplatform.lib.promotion import AliasChange
from mlplatform.lib.tracking import CHAMPION, Tracker

home = Path(os.environ["MLPLATFORM_HOME"])
tracker = Tracker(os.environ["MLPLATFORM_MLFLOW_TRACKING_URI"], Path(os.environ["MLPLATFORM_MLFLOW_ARTIFACTS"]))
moves, deadline = 0, time.monotonic() + float(sys.argv[1])

def decide(connection, registry):
    current = registry.alias_version("toy_a", CHAMPION)
    if current is None:
        return None
    versions = sorted(int(v.version) for v in registry.client.search_model_versions("name = 'toy_a'"))
    target = str(versions[(versions.index(int(current)) + 1) % len(versions)])
    if target == current:
        return None
    return AliasChange("toy_a", CHAMPION, target, current, "promote loop", "loop", None, kind="approval")

while time.monotonic() < deadline and not Path(sys.argv[2]).exists():
    moves += approvals.move_champion(home, home / "warehouse.duckdb", tracker, 60, decide) is not None
    time.sleep(0.05)
print(moves)
"""


def test_two_models_backfilled_at_once_one_in_worker_processes_with_a_promote_loop_keep_every_week_once_and_audited(
        postgres_home, tmp_path, capsys, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    for name in ("toy_a", "toy_b"):
        (specs / f"{name}.yaml").write_text(textwrap.dedent(TWO_MODEL_SPEC).replace("name: toy", f"name: {name}"))
    toy_rows(weeks=4).to_csv(specs / "toy.csv", index=False)
    monkeypatch.setenv("MLPLATFORM_SPECS", str(specs))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    stop = tmp_path / "stop"
    dagster_home = tmp_path / "dagster_home"  # the multiprocess executor needs a persistent instance
    dagster_home.mkdir()
    backfills = [_spawn(BACKFILL, "toy_a"),  # in one process, as the embedded default runs
                 _spawn(MULTIPROCESS_BACKFILL, "toy_b",  # each step its own process, as PostgreSQL allows
                        env={"MLPLATFORM_EXECUTOR": "multiprocess", "DAGSTER_HOME": str(dagster_home)})]
    loop = _spawn(PROMOTE_LOOP, "200", str(stop))
    try:
        outputs = [_finish(process) for process in backfills]
    finally:
        stop.touch()
    summary = outputs[1].strip().splitlines()[-1]
    assert summary.startswith("step processes:") and summary.endswith("run succeeded: True"), outputs[1]
    assert int(summary.split()[2]) >= 5, summary  # raw, features, model, drift, ... each in a process of its own
    loop_moves = int(_finish(loop).strip().splitlines()[-1])

    tracker = _tracker()
    with connect_when_free(postgres_home / "warehouse.duckdb", 30) as connection:
        for model in ("toy_a", "toy_b"):
            weeks = connection.execute(f"select week, count(*) from {model}.evaluations group by week").fetchall()
            assert sorted(str(w)[:10] for w, _ in weeks) == ["2024-01-08", "2024-01-15", "2024-01-22"]
            assert {n for _, n in weeks} == {1}
            per_week = connection.execute(f"select count(*), count(distinct id) from {model}.features").fetchone()
            assert per_week[0] == per_week[1] == 160  # every week's rows exactly once
            predicted = connection.execute(f"select count(*), count(distinct (week, id)) from {model}.predictions"
                                           ).fetchone()
            assert predicted[0] == predicted[1]
            events = read_events(connection, model)
            assert verify_chain(events) == [] and events["seq"].tolist() == list(range(1, len(events) + 1))
            moves = events[events["event"].isin(["alias_change", "approval"])]
            rows = connection.execute("select count(*) from audit.alias_changes where model = ?", [model]).fetchone()
            assert len(moves) == rows[0]  # every alias move has its audit row and its event
            champion = moves[moves["details"].str.contains('"alias": "champion"')].iloc[-1]["version"]
            assert champion == tracker.alias_version(model, CHAMPION)
        looped = connection.execute("select count(*) from audit.events where model = 'toy_a' and "
                                    "actor = 'promote loop'").fetchone()[0]
    assert looped == loop_moves
    for model in ("toy_a", "toy_b"):
        assert main(["audit", model, "--verify"]) == 0
    assert capsys.readouterr().out.count("intact") == 2


def test_a_pg_connection_refused_names_the_url_without_its_password(monkeypatch):
    from mlplatform.lib.warehouse import WarehouseBusy

    monkeypatch.setenv("MLPLATFORM_WAREHOUSE_URL", "postgresql://u:secret@127.0.0.1:1/nowhere")
    with pytest.raises(WarehouseBusy) as refused:
        connect_when_free(Path("unused"), 0.2)
    assert "secret" not in str(refused.value) and "u:***@127.0.0.1:1/nowhere" in str(refused.value)


def test_backup_on_postgresql_copies_the_local_stores_and_says_how_to_dump_the_warehouse(postgres_home, tmp_path,
                                                                                          capsys):
    with connect_when_free(postgres_home / "warehouse.duckdb", 30) as connection:
        append_events(connection, [AuditEvent("kept", "approval", "alice", "champion -> v1", version="1")])
    assert main(["backup", "--to", str(tmp_path / "backup")]) == 0
    out = capsys.readouterr().out
    assert "pg_dump --format=custom" in out and "pg_restore" in out
    assert not (tmp_path / "backup" / "warehouse.duckdb").exists()  # no stale or empty file posing as the warehouse
    assert not (postgres_home / "warehouse.duckdb").exists()  # nothing ever opened a DuckDB file beside the server
