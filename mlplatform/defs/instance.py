"""The Dagster instance under ``MLPLATFORM_HOME/dagster``: its configuration, and runs whose worker died.

The platform owns this instance: every entry point that runs or shows Dagster (``mlplatform demo``, ``ui``,
``prepare``) points ``DAGSTER_HOME`` here first, and a run left STARTED by a killed worker is failed before it
blocks the single run slot (``max_concurrent_runs: 1``: DuckDB takes one writer).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from mlplatform.lib.settings import Settings, ensure_home

PREVIOUS_DAGSTER_YAML = ("""\
# Written by mlplatform. Local embedded storage under MLPLATFORM_HOME.
telemetry:
  enabled: false
concurrency:
  runs:
    # DuckDB allows one writer per file: queue runs instead of letting them collide.
    max_concurrent_runs: 1
""", """\
# Written by mlplatform. Local embedded storage under MLPLATFORM_HOME.
telemetry:
  enabled: false
concurrency:
  runs:
    # DuckDB allows one writer per file: queue runs instead of letting them collide.
    max_concurrent_runs: 1
run_monitoring:
  # A run whose worker never started, or that hangs while canceling, is marked failed instead of
  # holding the only run slot forever. (A worker killed mid-run is caught by `mlplatform demo`,
  # see runner.fail_dead_runs, and docs/operations.md.)
  enabled: true
  start_timeout_seconds: 600
  cancel_timeout_seconds: 300
  max_resume_run_attempts: 0
  poll_interval_seconds: 60
  free_slots_after_run_end_seconds: 60
""")
"""Instance configs earlier releases wrote unchanged: replaced by the current one (an edited file is kept)."""

DAGSTER_YAML = """\
# Written by mlplatform. Local embedded storage under MLPLATFORM_HOME.
telemetry:
  enabled: false
concurrency:
  runs:
    # DuckDB allows one writer per file: queue runs instead of letting them collide.
    max_concurrent_runs: 1
run_monitoring:
  # A run whose worker never started, or that hangs while canceling, is marked failed instead of
  # holding the only run slot forever. (A worker killed mid-run is caught by `mlplatform demo`,
  # see mlplatform/defs/instance.py, and docs/operations.md.)
  enabled: true
  start_timeout_seconds: 600
  cancel_timeout_seconds: 300
  max_resume_run_attempts: 0
  poll_interval_seconds: 60
  free_slots_after_run_end_seconds: 60
"""


def prepare_dagster_home(settings: Settings) -> None:
    """Point Dagster at ``MLPLATFORM_HOME/dagster`` and give it an instance config once."""
    ensure_home(settings)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists() or config.read_text() in PREVIOUS_DAGSTER_YAML:
        config.write_text(DAGSTER_YAML)


class InstanceFileEdited(RuntimeError):
    """A config file in the Dagster home was written by someone else: it is not replaced without ``--force``."""


def _ours(text: str) -> bool:
    """A file the platform wrote and nobody edited since (or the shared mode's, which is always regenerated)."""
    from mlplatform.lib.instance_config import HEADER

    return text in (DAGSTER_YAML, *PREVIOUS_DAGSTER_YAML) or text.startswith(HEADER)


def prepare_shared_dagster_home(settings: Settings, force: bool = False) -> tuple[Path, Path]:
    """Write the shared mode's ``dagster.yaml`` (PostgreSQL, queued runs, a pool per model) and ``workspace.yaml``
    (the gRPC code server) into ``MLPLATFORM_HOME/dagster``; return both paths.

    The PostgreSQL URL must be set (``MLPLATFORM_DAGSTER_POSTGRES_URL``) but is not written: the file names the
    variable. A file someone edited is kept unless ``force``.
    """
    import yaml

    from mlplatform.lib.instance_config import (
        HEADER,
        check_postgres_url_set,
        code_server_address,
        shared_instance_config,
        workspace_for_code_server,
    )

    check_postgres_url_set()
    instance_text = HEADER + yaml.safe_dump(shared_instance_config(), sort_keys=False)
    workspace_text = HEADER + yaml.safe_dump(workspace_for_code_server(*code_server_address()), sort_keys=False)
    ensure_home(settings)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    files = {settings.dagster_home / "dagster.yaml": instance_text, settings.dagster_home / "workspace.yaml": workspace_text}
    for path in files:  # all checked before anything is written
        if path.exists() and not force and not _ours(path.read_text()):
            raise InstanceFileEdited(f"{path} was not written by mlplatform (or was edited): kept as it is; move it "
                                     "away or pass --force to replace it")
    for path, text in files.items():
        path.write_text(text)
    config, workspace = files
    return config, workspace


def ensure_model_pools(instance: DagsterInstance, models: list[str]) -> list[str]:
    """Create each model's pool at the instance's default limit, if it has none yet; return the pools created.

    Dagster's run queue creates a pool the first time a queued run needs it, but decides that same pass as if the
    pool had no limit: several runs of a new model submitted together would all start. Created beforehand, the
    first pass already holds them to one. (A limit someone set, e.g. in the UI, is kept.)
    """
    from mlplatform.names import model_pool

    existing = set(instance.event_log_storage.get_concurrency_keys())
    created = []
    for model in models:
        pool = model_pool(model)
        if pool not in existing and instance.event_log_storage.initialize_concurrency_limit_to_default(pool):
            created.append(pool)
    return created


STUCK_STARTING_SECONDS = 600.0
"""A run still STARTING after this long, with no process recorded, never got a worker (same as run monitoring)."""

_UNFINISHED = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _run_worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The process that executes the run: the pid its RUN_START event records (events before it, such as the
    planned materializations, come from whoever launched the run)."""
    from dagster import DagsterEventType

    for record in instance.all_logs(run_id, of_type=DagsterEventType.RUN_START):
        event = record.dagster_event
        if event is not None and event.pid is not None:
            return int(event.pid)
    return None


def fail_dead_runs(instance: DagsterInstance, log=print) -> list[str]:
    """Mark runs FAILURE whose worker process is gone (killed, machine slept), and return their ids.

    With ``max_concurrent_runs: 1`` one such run, left STARTED forever, blocks every later run.
    Dagster's run monitoring (enabled in the instance config the platform writes) cannot see a dead
    worker of the default run launcher, nor in-process runs: this looks up the worker's pid in the
    run's events. Only for a local (SQLite) instance, where every run ran on this machine.
    """
    if "sqlite" not in type(instance.run_storage).__name__.lower():
        return []
    failed = []
    for run in instance.get_runs(RunsFilter(statuses=_UNFINISHED)):
        pid = _run_worker_pid(instance, run.run_id)
        if pid == os.getpid():
            continue
        if pid is None:
            record = instance.get_run_record_by_id(run.run_id)
            updated = record.update_timestamp.timestamp() if record and record.update_timestamp else time.time()
            if run.status != DagsterRunStatus.STARTING or time.time() - updated < STUCK_STARTING_SECONDS:
                continue
            reason = f"it has been STARTING for more than {STUCK_STARTING_SECONDS:g} s with no process"
        elif _pid_alive(pid):
            continue
        else:
            reason = f"its process {pid} is gone (killed or crashed)"
        message = f"run {run.run_id} ({run.job_name}) was {run.status.value} but {reason}; marked as failed"
        instance.report_run_failed(run, message=message)
        log(message)
        failed.append(run.run_id)
    return failed
