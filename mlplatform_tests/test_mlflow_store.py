"""The MLflow store: a tracking server needs artifacts it can serve to every machine, and dagster-mlflow owns the
parent MLflow run of each training run, whichever process a step runs in."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, execute_job, instance_for_test
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlplatform.lib.settings import SettingsError, is_local_artifact_location, load_settings, local_artifacts_refusal
from mlplatform.lib.tracking import Tracker
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks

SERVER = "http://mlflow.internal:5000"
MULTIPROCESS_JOBS = Path(__file__).with_name("multiprocess_jobs.py")


@pytest.mark.parametrize("location, local", [
    ("/srv/mlflow/artifacts", True), ("relative/folder", True), ("file:///srv/artifacts", True),
    ("s3://bucket/artifacts", False), ("mlflow-artifacts:/", False), ("mlflow-artifacts://host:5000/x", False),
    ("gs://bucket/a", False), ("", False),
])
def test_local_artifact_locations_are_told_from_store_uris(location: str, local: bool) -> None:
    assert is_local_artifact_location(location) is local


def test_a_local_artifact_path_is_refused_only_with_a_tracking_server() -> None:
    refusal = local_artifacts_refusal(SERVER, "/srv/artifacts", "MLPLATFORM_MLFLOW_ARTIFACTS")
    assert refusal and "/srv/artifacts" in refusal and SERVER in refusal and "--artifacts-destination" in refusal
    assert local_artifacts_refusal("sqlite:////srv/mlflow.db", "/srv/artifacts", "x") is None  # one machine's store
    assert local_artifacts_refusal(SERVER, "s3://bucket/artifacts", "x") is None
    with pytest.raises(SettingsError, match="a path on this machine's disk"):
        Tracker(SERVER, Path("/srv/artifacts"))  # refused before any request is made


def test_the_cli_refuses_a_local_artifact_folder_with_a_tracking_server(home, monkeypatch, capsys) -> None:
    from mlplatform.cli import main

    monkeypatch.setenv("MLPLATFORM_MLFLOW_TRACKING_URI", SERVER)
    monkeypatch.setenv("MLPLATFORM_MLFLOW_ARTIFACTS", str(home / "artifacts"))
    with pytest.raises(SettingsError):
        load_settings()
    assert main(["card", "toy"]) == 2
    err = capsys.readouterr().err
    assert "MLPLATFORM_MLFLOW_ARTIFACTS" in err and "nothing was done" in err and "Traceback" not in err
    monkeypatch.setenv("MLPLATFORM_MLFLOW_ARTIFACTS", "s3://bucket/artifacts")
    assert load_settings().artifact_root == "s3://bucket/artifacts"
    monkeypatch.delenv("MLPLATFORM_MLFLOW_ARTIFACTS")
    assert load_settings().artifact_root is None  # the server's own (proxied) artifact store


def test_a_sqlite_store_of_ones_own_keeps_artifacts_next_to_it(home, tmp_path, monkeypatch) -> None:
    """Without MLPLATFORM_MLFLOW_ARTIFACTS, MLflow itself would put them in ./mlruns of whatever folder a run starts."""
    monkeypatch.setenv("MLPLATFORM_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}")
    assert load_settings().artifact_root == tmp_path / "shared" / "artifacts"


OPEN_TOGETHER = """
import sys, time
from pathlib import Path
from mlplatform.lib.tracking import Tracker
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.005)
print(Tracker.under(Path(sys.argv[1])).experiment_id(sys.argv[3]))
"""


@pytest.mark.slow
def test_processes_opening_a_new_embedded_store_together_all_succeed(tmp_path) -> None:
    """MLflow creates a SQLite store's tables on first use; without the creation lock two of three processes
    starting together failed here ("duplicate column name: step", "Online migration expected to match one row").
    The later ones arrive while the first is still migrating (the file is no longer empty, its tables are not all
    there): a lock taken only for an empty file let them migrate too ("table _alembic_tmp_... already exists",
    seen in CI with a daemon's run beside the test process)."""
    import subprocess
    import sys
    import time

    start = time.time() + 10  # after the imports of all of them
    offsets = {"alpha": 0.0, "beta": 0.0, "gamma": 0.5, "delta": 0.8, "epsilon": 1.1, "zeta": 1.4}
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_TOGETHER, str(tmp_path / "mlflow"),
                                   str(start + offset), name],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, offset in offsets.items()]
    outcomes = [process.communicate(timeout=180) for process in processes]
    assert [p.returncode for p in processes] == [0] * len(offsets), [err[-800:] for _, err in outcomes]
    assert len({out.strip() for out, _ in outcomes}) == len(offsets)  # one experiment each, in one store


def test_a_run_of_a_training_job_that_trains_nothing_opens_no_mlflow_run(home, spec_dir, instance) -> None:
    """Data-only runs of a training job (e.g. two models' raw and features at once) never open the MLflow store:
    concurrent processes creating the embedded SQLite store at once would fail."""
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    result = run_weeks(load_definitions(), "toy", instance, "2024-01-01", assets=["raw", "features"])
    assert result.success
    hooks = [e for e in result.all_events if e.event_type_value.startswith("HOOK")]
    assert hooks and all(e.event_type_value == "HOOK_SKIPPED" for e in hooks)
    assert not (home / "mlflow" / "mlflow.db").exists()


def test_an_mlflow_run_an_earlier_dagster_run_left_active_is_ended_with_its_outcome_not_adopted(
        home, spec_dir, instance) -> None:
    """In one process (the in-process executor), a Dagster run whose last step did not run leaves its MLflow run
    active; dagster-mlflow would adopt it for the next Dagster run. The resource ends it with the earlier run's
    outcome first, and the next run gets a parent of its own."""
    import mlflow

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    defs = load_definitions()
    stages = ["raw", "features", "model"]
    first = run_weeks(defs, "toy", instance, "2024-01-01", "2024-01-08", assets=stages)
    assert first.success
    tracker = Tracker.under(home / "mlflow")
    experiment = tracker.experiment_id("toy")
    [earlier] = tracker.client.search_runs([experiment], f"tags.dagster_run_id = '{first.run_id}'")
    mlflow.set_tracking_uri(tracker.tracking_uri)
    mlflow.start_run(run_id=earlier.info.run_id)  # as if its last step had not run: still active in this thread
    try:
        second = run_weeks(defs, "toy", instance, "2024-01-15", assets=stages)
    finally:
        while mlflow.active_run() is not None:  # a failed assertion must not leave a run active for other tests
            mlflow.end_run()
    assert second.success
    earlier = tracker.run(earlier.info.run_id)
    assert earlier.info.status == "FINISHED" and earlier.data.tags["dagster_run_id"] == first.run_id
    [own] = tracker.client.search_runs([experiment], f"tags.dagster_run_id = '{second.run_id}'")
    assert own.info.run_id != earlier.info.run_id and own.info.status == "FINISHED"
    [week] = tracker.client.search_runs([experiment], f"tags.mlflow.parentRunId = '{own.info.run_id}'")
    assert week.info.run_name == "toy-2024-01-15"


@pytest.mark.slow
def test_steps_in_separate_processes_log_under_the_parent_run_dagster_mlflow_owns(home, spec_dir, instance) -> None:
    """Multiprocess executor: each step initializes dagster-mlflow's resource in its own process; the first creates
    the MLflow run, the others find it by its dagster_run_id tag; the model step nests the weeks under it, and
    end_mlflow_on_run_finished ends it FINISHED after the last step (here a chain: the last step in topological
    order is also the last to run; see the next test for when it is not)."""
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    job = ReconstructableJob.for_file(str(MULTIPROCESS_JOBS), "toy_pipeline_in_processes")
    selection = [AssetKey(["toy", stage]) for stage in ("raw", "features", "model")]
    tags = {ASSET_PARTITION_RANGE_START_TAG: "2024-01-01", ASSET_PARTITION_RANGE_END_TAG: "2024-01-15"}
    # not `with execute_job(...)`: opening the result re-initializes the resources in this process, which would
    # resume the finished MLflow run (a test artefact: a run worker does not do that)
    result = execute_job(job, instance=instance, tags=tags, asset_selection=selection,
                         run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    assert result.success
    run_id = result.run_id
    step_pids = {e.pid for e in result.all_events if e.is_step_start}
    assert len(step_pids) >= 3  # the steps really ran in separate processes

    tracker = Tracker.under(home / "mlflow")
    experiment = tracker.experiment_id("toy")
    owned = tracker.client.search_runs([experiment], f"tags.dagster_run_id = '{run_id}'")
    assert len(owned) == 1  # one parent, not one per step process
    parent = owned[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["dagster.run_id"] == run_id
    assert parent.info.artifact_uri.startswith((home / "mlflow" / "artifacts").as_uri())  # not ./mlruns
    weeks = tracker.client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(w.info.run_name for w in weeks) == ["toy-2024-01-08", "toy-2024-01-15"]
    assert len(tracker.client.search_runs([experiment])) == 3  # nothing else was opened
    assert not (Path.cwd() / "mlruns").exists()


@pytest.mark.slow
def test_obstacle_the_hook_ends_the_run_after_the_last_step_in_topological_order_not_the_last_to_run(home) -> None:
    """end_mlflow_on_run_finished ends the MLflow run when the op that comes last in topological order succeeds.
    A step that starts after it (here forced by priority, one step at a time; with parallel steps it is a race)
    resumes the run by its dagster_run_id tag (MLflow marks a resumed run RUNNING) and nothing ends it again. The
    platform's default in-process executor runs steps in topological order, where this cannot happen
    (test_models checks the parent ends FINISHED); with the multiprocess executor a model's jobs can hit it."""
    (home / "mlflow").mkdir(parents=True)
    job = ReconstructableJob.for_file(str(MULTIPROCESS_JOBS), "two_independent_ops_tracked")
    assert [n.name for n in job.get_definition().nodes_in_topological_order][-1] == "last_in_order"
    with instance_for_test() as instance:
        result = execute_job(job, instance=instance)  # not opened: that would re-initialize the resources here
        assert result.success
        assert [e.step_key for e in result.all_events if e.is_step_start] == ["last_in_order", "first_in_order"]
    tracker = Tracker.for_settings(load_settings())
    [run] = tracker.client.search_runs([tracker.experiment_id("hook-order")])
    assert run.data.params == {"first": "yes", "last": "yes"}  # both steps logged to the one run...
    assert run.info.status == "RUNNING"  # ...which the hook ended before the second step resumed it
