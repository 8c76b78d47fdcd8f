"""Dagster in the shared mode, for real: PostgreSQL storage, a gRPC code server, `dagster-daemon` and
`dagster-webserver` as separate processes, written by `mlplatform prepare --instance postgres`.

Runs are submitted through the webserver's GraphQL API (as the UI does), queued, and launched by the daemon
through the code server; the daemon ticks the schedule and the sensors. Nothing runs in this test's process: it
only reads the run records from PostgreSQL. Queue-to-start times are printed (`-s` shows them), never asserted.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from datetime import date

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunRecord, RunsFilter
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    GRPC_INFO_TAG,
    PARTITION_NAME_TAG,
    SCHEDULE_NAME_TAG,
    SENSOR_NAME_TAG,
)

from mlplatform import names
from mlplatform.lib.instance_config import POSTGRES_URL_ENV
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.services import DagsterStack, PostgresServer, running_dagster, traversable_tmp_dir, wait_for
from mlplatform_tests.test_drift_and_retrain import DRIFT_SPEC, LAST, shifted_rows

pytestmark = [pytest.mark.services, pytest.mark.slow]

RUN_TIMEOUT = 900.0  # a bound for a stuck deployment to fail the test, not a performance assertion
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@contextlib.contextmanager
def shared_dagster(postgres_server: PostgresServer, database: str, specs: dict[str, str], data: dict[str, object],
                   monkeypatch: pytest.MonkeyPatch, extra_env: dict[str, str] | None = None,
                   before_daemon=None) -> Iterator[tuple[DagsterStack, DagsterInstance]]:
    """A fresh database and MLPLATFORM_HOME, the spec folder, the three Dagster processes, and this process's view
    of the same instance (read-only use: run records)."""
    postgres_server.create_database(database)
    url = postgres_server.url(database, driver="postgresql+psycopg2")  # SQLAlchemy 2 reads postgresql:// as psycopg 3
    with traversable_tmp_dir(database) as base:
        specs_dir, home = base / "specs", base / "home"
        specs_dir.mkdir()
        for name, text in specs.items():
            (specs_dir / name).write_text(text)
        for name, frame in data.items():
            frame.to_csv(specs_dir / name, index=False)
        env = {"MLPLATFORM_HOME": str(home), "MLPLATFORM_SPECS": str(specs_dir), POSTGRES_URL_ENV: url,
               **(extra_env or {})}
        monkeypatch.setenv(POSTGRES_URL_ENV, url)
        with running_dagster(base / "dagster-processes", env, before_daemon) as stack:
            with DagsterInstance.from_config(str(stack.dagster_home)) as instance:
                try:
                    wait_for(lambda: "QUEUED_RUN_COORDINATOR" in instance.get_daemon_heartbeats(), 180,
                             "dagster-daemon's run queue")
                    yield stack, instance
                except BaseException:
                    print(stack.log_tails())
                    raise


def submit(stack: DagsterStack, model: str, job: str, assets: list[str] | None, week: str | None = None,
           weeks: tuple[str, str] | None = None) -> str:
    """Submit a run of ``assets`` (None: the whole job) through the webserver (GraphQL), as the UI's launchpad does:
    it is queued, not started."""
    tags = {PARTITION_NAME_TAG: week} if week else {}
    if weeks:
        tags = {ASSET_PARTITION_RANGE_START_TAG: weeks[0], ASSET_PARTITION_RANGE_END_TAG: weeks[1]}
    return stack.client().submit_job_execution(job, repository_location_name="mlplatform",
                                               repository_name="__repository__", tags=tags,
                                               asset_selection=[AssetKey([model, a]) for a in assets] if assets else None)


def wait_finished(instance: DagsterInstance, stack: DagsterStack, run_filter: RunsFilter, count: int = 1
                  ) -> list[RunRecord]:
    """The records of the first ``count`` runs matching the filter, once all have finished."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        records = instance.get_run_records(run_filter, ascending=True)
        if len(records) >= count and all(r.dagster_run.status in TERMINAL for r in records[:count]):
            return records[:count]
        time.sleep(0.5)
    states = [(r.dagster_run.job_name, r.dagster_run.status.value) for r in instance.get_run_records(run_filter)]
    raise AssertionError(f"runs {run_filter} not finished in {RUN_TIMEOUT:g} s: {states}\n{stack.log_tails()}")


def assert_succeeded(instance: DagsterInstance, records: list[RunRecord]) -> None:
    for record in records:
        run = record.dagster_run
        if run.status != DagsterRunStatus.SUCCESS:
            failures = [e.message for e in instance.all_logs(run.run_id) if e.dagster_event and
                        e.dagster_event.is_failure]
            raise AssertionError(f"run {run.run_id} ({run.job_name}) ended {run.status.value}: {failures}")


def launched_by_code_server(record: RunRecord, stack: DagsterStack) -> bool:
    """DefaultRunLauncher records the gRPC server that started the run's process."""
    info = record.dagster_run.tags.get(GRPC_INFO_TAG)
    return info is not None and json.loads(info).get("port") == stack.code_server_port


def launch_time(instance: DagsterInstance, record: RunRecord) -> float:
    """When the daemon took the run off the queue to launch it (RUN_STARTING)."""
    return instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.RUN_STARTING)[0].timestamp


def queue_to_start_seconds(instance: DagsterInstance, record: RunRecord) -> float:
    """From the run entering the queue to its process starting the run (RUN_START)."""
    enqueued = instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.RUN_ENQUEUED)
    queued_at = enqueued[0].timestamp if enqueued else record.create_timestamp.timestamp()
    return float(record.start_time) - queued_at


def timeline(instance: DagsterInstance, records: list[RunRecord], origin: float) -> None:
    """Each run's enqueue, launch, start and end, in seconds from ``origin``."""
    for record in records:
        run = record.dagster_run
        marks = {}
        for kind in (DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_DEQUEUED, DagsterEventType.RUN_STARTING):
            events = instance.all_logs(run.run_id, of_type=kind)
            marks[kind.value.removeprefix("PIPELINE_").lower()] = events[0].timestamp - origin if events else None
        marks.update(start=record.start_time - origin, end=record.end_time - origin)
        print(f"{run.job_name} {run.run_id[:8]}: " + " ".join(f"{k}={v:.1f}" for k, v in marks.items() if v is not None))


def report(label: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, max(0, int(round(0.95 * len(ordered))) - 1))]
    print(f"queue to start, {label}: n={len(ordered)} median={statistics.median(ordered):.1f} s p95={p95:.1f} s "
          f"max={ordered[-1]:.1f} s ({', '.join(f'{s:.1f}' for s in ordered)})")


def overlap(spans: list[tuple[float, float]], others: list[tuple[float, float]]) -> bool:
    return any(start < other_end and other_start < end for start, end in spans for other_start, other_end in others)


def named(spec: str, name: str) -> str:
    return spec.replace("name: toy", f"name: {name}", 1)


def test_runs_of_two_models_overlap_and_runs_of_one_model_never_do(postgres_server: PostgresServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    models, weeks = ("alpha", "beta"), ("2024-01-01", "2024-01-08")
    specs = {f"{m}.yaml": named(TOY_SPEC, m) for m in models}
    with shared_dagster(postgres_server, "dagster_pools", specs, {"toy.csv": toy_rows()}, monkeypatch
                        ) as (stack, instance):
        submitted = {submit(stack, model, names.pipeline_job(model), ["raw", "features"], week=week): model
                     for week in weeks for model in models}  # together, with the daemon running
        records = wait_finished(instance, stack, RunsFilter(run_ids=list(submitted)), count=len(submitted))
        timeline(instance, records, min(r.create_timestamp.timestamp() for r in records))
        assert_succeeded(instance, records)
        assert all(launched_by_code_server(r, stack) for r in records)
        intervals = {m: sorted((r.start_time, r.end_time) for r in records if submitted[r.dagster_run.run_id] == m)
                     for m in models}
        for model, spans in intervals.items():  # one slot per model's pool: each run ends before the next starts
            assert len(spans) == 2 and spans[0][1] <= spans[1][0], (model, spans)
            launched = sorted(launch_time(instance, r) for r in records if submitted[r.dagster_run.run_id] == model)
            assert launched[1] >= spans[0][1], (model, launched, spans)  # not even launched before the first ended
        # Different models' runs are in progress together (launched: the pool slot is taken, the worker starts).
        in_progress = {m: sorted((launch_time(instance, r), r.end_time) for r in records
                                 if submitted[r.dagster_run.run_id] == m) for m in models}
        assert overlap(in_progress["alpha"], in_progress["beta"]), in_progress
        print(f"executions (RUN_START to end) of the two models overlap: {overlap(intervals['alpha'], intervals['beta'])}")
        waits = {r.dagster_run.run_id: queue_to_start_seconds(instance, r) for r in records}
        first = [waits[r.dagster_run.run_id] for r in records
                 if r.start_time == intervals[submitted[r.dagster_run.run_id]][0][0]]
        report("first run of each model (a free slot)", first)
        report("all four (the second of a model waits for the first)", list(waits.values()))
        for model, spans in intervals.items():
            print(f"{model}: " + ", ".join(f"[{s - intervals['alpha'][0][0]:.1f}, {e - intervals['alpha'][0][0]:.1f}]"
                                            for s, e in spans))


def test_the_daemon_ticks_the_schedule_and_its_drift_sensor_retrains(postgres_server: PostgresServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The weekly schedule (on a test cron, every minute) runs the last week; its drift check fails; the daemon's
    retrain sensor launches a retrain of that week through the code server, which succeeds."""
    history: list[str] = []

    def submit_history(stack: DagsterStack) -> None:  # the weeks before the shift: the drift check's reference
        history.append(submit(stack, "toy", names.pipeline_job("toy"), ["raw", "features"],
                              weeks=("2024-01-01", "2024-01-29")))

    env = {"MLPLATFORM_WEEKLY_SCHEDULE_CRON": "* * * * *"}
    with shared_dagster(postgres_server, "dagster_automation", {"toy.yaml": DRIFT_SPEC},
                        {"toy.csv": shifted_rows(LAST)}, monkeypatch, extra_env=env,
                        before_daemon=submit_history) as (stack, instance):
        assert_succeeded(instance, wait_finished(instance, stack, RunsFilter(run_ids=history)))

        weekly = wait_finished(instance, stack, RunsFilter(tags={SCHEDULE_NAME_TAG: names.weekly_schedule("toy")}))
        assert_succeeded(instance, weekly)
        assert weekly[0].dagster_run.job_name == names.weekly_job("toy")
        assert weekly[0].dagster_run.tags[PARTITION_NAME_TAG] == LAST and launched_by_code_server(weekly[0], stack)
        check = instance.get_latest_asset_check_evaluation_record(
            AssetCheckKey(AssetKey(["toy", names.DRIFT]), names.DRIFT_CHECK))
        assert check.evaluation.partition == LAST and check.evaluation.passed is False

        retrain = wait_finished(instance, stack, RunsFilter(tags={SENSOR_NAME_TAG: names.retrain_sensor("toy")}))
        assert_succeeded(instance, retrain)
        run = retrain[0].dagster_run
        assert run.job_name == names.retrain_job("toy") and run.tags[PARTITION_NAME_TAG] == LAST
        assert run.tags[names.DRIFT_WEEK_TAG] == LAST and launched_by_code_server(retrain[0], stack)
        model = instance.get_latest_materialization_event(AssetKey(["toy", names.MODEL]))
        assert model is not None and model.run_id == run.run_id
        report("the schedule's and the sensor's runs", [queue_to_start_seconds(instance, r)
                                                     for r in (*weekly, *retrain)])


def test_a_decay_failure_makes_the_daemons_sensor_roll_the_champion_back(postgres_server: PostgresServer,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """As test_production_loop's rollback story, with every run queued and launched by the daemon through the code
    server, and the decay sensor ticked by the daemon: week 5 follows the old rule, the champion v4 degrades, v2 is
    significantly better on the same rows, so the sensor's rollback run puts v2 back."""
    from mlplatform.demo.production import ProductionSummary, Service, _send
    from mlplatform.demo.synthetic import churn_weeks
    from mlplatform.lib import promotion
    from mlplatform.lib.settings import load_settings
    from mlplatform.lib.tracking import Tracker
    from mlplatform.lib.warehouse import connect_when_free
    from mlplatform.specs import load_spec_named
    from mlplatform_tests.test_production_loop import churn_spec, weeks_from

    rules = ["A", "A", "A", "B", "B", "A"]
    weeks = weeks_from("2024-01-01", len(rules))
    history: list[str] = []

    def submit_history(stack: DagsterStack) -> None:
        history.append(submit(stack, "toy", names.pipeline_job("toy"), None, weeks=(weeks[0], weeks[3])))

    data = {"churn.csv": churn_weeks(date(2024, 1, 1), rules, rows_per_week=300)}
    with shared_dagster(postgres_server, "dagster_decay", {"toy.yaml": churn_spec("2024-02-12")}, data, monkeypatch,
                        before_daemon=submit_history) as (stack, instance):
        home = stack.dagster_home.parent
        monkeypatch.setenv("MLPLATFORM_HOME", str(home))
        monkeypatch.setenv("MLPLATFORM_SPECS", str(home.parent / "specs"))
        settings = load_settings()
        tracker = Tracker.for_settings(settings)
        assert_succeeded(instance, wait_finished(instance, stack, RunsFilter(run_ids=history)))
        assert tracker.version_tags("toy", "3")["gates"] == "failed"
        # a person once forced the gate-failing v3 into production, then v4 replaced it
        with connect_when_free(settings.warehouse_path, 60) as connection:
            promotion.commit_changes(connection, tracker, [promotion.approval_change(tracker, "toy", "3", "ana", "test",
                                                                                      force=True)])
        run_ids = [submit(stack, "toy", names.pipeline_job("toy"), None, week=weeks[4])]
        assert_succeeded(instance, wait_finished(instance, stack, RunsFilter(run_ids=run_ids)))
        assert tracker.alias_version("toy", "champion") == "4"

        # week 5 arrives, its traffic goes through the service (v4 answers), then its outcomes come in
        run_ids = [submit(stack, "toy", names.weekly_job("toy"), ["raw", "features"], week=weeks[5])]
        assert_succeeded(instance, wait_finished(instance, stack, RunsFilter(run_ids=run_ids)))
        spec = load_spec_named(settings.specs_dir, "toy")
        summary = ProductionSummary("toy", served=True)
        with Service(settings, ["toy"]) as service:
            service.wait_for_champion("toy", "4")
            _send(settings, service, spec, date.fromisoformat(weeks[5]), 1, summary)
        assert summary.answered == summary.sent > 0, summary.note
        run_ids = [submit(stack, "toy", names.production_job("toy"),
                          [names.LABELS, names.LIVE_PERFORMANCE, names.SHADOW_REPORT], week=weeks[5])]
        assert_succeeded(instance, wait_finished(instance, stack, RunsFilter(run_ids=run_ids)))
        check = instance.get_latest_asset_check_evaluation_record(
            AssetCheckKey(AssetKey(["toy", names.LIVE_PERFORMANCE]), names.LIVE_DEGRADATION_CHECK))
        assert check.evaluation.partition == weeks[5] and check.evaluation.passed is False

        sensor = {SENSOR_NAME_TAG: names.decay_sensor("toy")}
        rollback = wait_finished(instance, stack, RunsFilter(job_name=names.rollback_job("toy"), tags=sensor))
        assert_succeeded(instance, rollback)
        assert launched_by_code_server(rollback[0], stack)
        assert tracker.alias_version("toy", "champion") == "2"  # not v3, the forced one whose gates failed
        retrain = wait_finished(instance, stack, RunsFilter(job_name=names.retrain_job("toy"), tags=sensor))
        assert_succeeded(instance, retrain)
        report("the decay sensor's rollback and retrain runs",
               [queue_to_start_seconds(instance, r) for r in (*rollback, *retrain)])
