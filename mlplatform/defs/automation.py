"""What runs without anyone clicking: the weekly schedule, the sensor that retrains on drift, and the sensor that
rolls back and retrains when live performance decays.

The decisions are plain functions over check records (:func:`~mlplatform.lib.retraining.retrain_requests`,
:func:`~mlplatform.lib.retraining.decay_requests`, both built on :func:`~mlplatform.lib.retraining.new_failures`);
the sensors only read the instance and wrap them.
"""

import warnings

from dagster import (
    AssetCheckKey,
    AssetSelection,
    BetaWarning,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    partition_loading_context,
    schedule,
    sensor,
)
from dagster._check import CheckError
from dagster._utils.schedules import is_valid_cron_string

from mlplatform import names
from mlplatform.defs.check_history import check_executions
from mlplatform.defs.keys import (
    asset_key,
    backtest_key,
    drift_check_key,
    drift_key,
    evaluation_key,
    features_key,
    model_key,
    raw_key,
    staged_key,
)
from mlplatform.defs.metadata import team_attributes, team_tags
from mlplatform.defs.mlflow_run import end_mlflow_run
from mlplatform.defs.partitions import weekly_partitions
from mlplatform.lib.retraining import decay_requests, retrain_requests
from mlplatform.specs import ModelSpec

# A sensor with several jobs is re-created by Dagster when the definitions resolve its jobs, passing `owners` along,
# which warns at every load that a parameter we never set is beta. Nothing to act on: silenced for that message only.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*`owners` of initializer `SensorDefinition.*")
# The team as the owner of each schedule and sensor (team_attributes): the same beta parameter, set on purpose.
warnings.filterwarnings("ignore", category=BetaWarning,
                        message=".*`owners` of (initializer|function) `(ScheduleDefinition|SensorDefinition|schedule|sensor)")


def build_jobs(spec: ModelSpec) -> list:
    """The whole lifecycle, the retrain (the week's data, then model, evaluation, backtest), the weekly job (data,
    drift and live performance of the week that just ended) and the production job (live performance of any weeks,
    for outcomes that arrive later)."""
    training = AssetSelection.assets(model_key(spec), evaluation_key(spec), backtest_key(spec))
    week_data = AssetSelection.assets(raw_key(spec), features_key(spec))
    if spec.staging is not None:
        week_data = week_data | AssetSelection.assets(staged_key(spec))
    production = AssetSelection.assets(*(asset_key(spec.name, stage) for stage in
                                         (names.LABELS, names.LIVE_PERFORMANCE, names.SHADOW_REPORT)))
    data = week_data | AssetSelection.assets(drift_key(spec)) | production
    if spec.scoring.batch:  # the week's batch scores, before drift and live performance read them from the log
        data = data | AssetSelection.assets(asset_key(spec.name, names.SCORES))
    weekly = data | training if spec.automation.retrain == "weekly" else data
    # jobs that train: dagster-mlflow's resource owns the run's parent MLflow run, its hook ends it
    team = team_tags(spec)  # every run of the model's jobs carries its team: the runs page filters by it
    trains = {"tags": {names.MLFLOW_EXPERIMENT_TAG: spec.name, **team}, "hooks": {end_mlflow_run}}
    return [
        define_asset_job(names.pipeline_job(spec.name), selection=AssetSelection.groups(spec.name), **trains,
                         description=f"Lifecycle of {spec.name}: data, gates, model per week, evaluation, drift"),
        define_asset_job(names.retrain_job(spec.name), selection=week_data | training, **trains,
                         partitions_def=weekly_partitions(spec),
                         description=f"Retrain {spec.name} for one week: its data (if not in yet), then model, evaluation "
                         "and backtest (what the drift and decay sensors request)"),
        define_asset_job(names.weekly_job(spec.name), selection=weekly, partitions_def=weekly_partitions(spec),
                         **(trains if spec.automation.retrain == "weekly" else {"tags": team}),
                         description=f"The week that just ended for {spec.name}: data, "
                         + ("batch scores, " if spec.scoring.batch else "") + "drift (with the week's "
                         "served predictions), live performance"
                         + (", model" if spec.automation.retrain == "weekly" else "")),
        define_asset_job(names.production_job(spec.name), selection=production, partitions_def=weekly_partitions(spec),
                         tags=team,
                         description=f"Live performance of {spec.name} for weeks whose outcomes have arrived: labels, "
                         "live metric per version and role, shadow report, the degradation and canary checks"),
    ]


def build_schedule(spec: ModelSpec, weekly_job, cron_override: str = ""):
    """Mondays 01:00 UTC: the week that just ended (its partition exists once the week is over), requested once (the
    week is the run key), as Dagster's partitioned schedule does; owned and tagged by the model's team.

    ``cron_override`` (``MLPLATFORM_WEEKLY_SCHEDULE_CRON``, for testing the daemon's ticks only) replaces the time of
    day and week; each tick still requests the latest complete week.
    """
    status = DefaultScheduleStatus.RUNNING if spec.automation.weekly_schedule else DefaultScheduleStatus.STOPPED
    if cron_override and not is_valid_cron_string(cron_override):
        raise ValueError(f"MLPLATFORM_WEEKLY_SCHEDULE_CRON={cron_override!r} is not a cron string (e.g. '*/2 * * * *'); "
                         "unset it for the weekly schedule (Mondays 01:00 UTC)")
    partitions = weekly_partitions(spec)
    # build_schedule_from_partitioned_job makes the same schedule but drops its tags (they go to the runs only)
    cron = cron_override or partitions.get_cron_schedule(minute_of_hour=0, hour_of_day=1)
    description = (f"The week that just ended for {spec.name}, on the test cron {cron_override!r} "
                   "(MLPLATFORM_WEEKLY_SCHEDULE_CRON)" if cron_override else
                   f"The week that just ended for {spec.name}: data, drift, live performance (Mondays 01:00 UTC)")

    @schedule(name=names.weekly_schedule(spec.name), cron_schedule=cron, job=weekly_job,
              execution_timezone=partitions.timezone or "UTC", default_status=status, **team_attributes(spec),
              description=description)
    def weekly(context: ScheduleEvaluationContext):
        with partition_loading_context(effective_dt=_tick_time(context)):
            week = partitions.get_last_partition_key()
        if week is None:
            return SkipReason(f"no complete week of {spec.name} yet")
        return weekly_job.run_request_for_partition(partition_key=week, run_key=week)

    return weekly


def _tick_time(context: ScheduleEvaluationContext):
    """The tick's scheduled time; None (now) when evaluated without one (the UI's "test schedule", a test)."""
    try:
        return context.scheduled_execution_time
    except CheckError:
        return None


def build_retrain_sensor(spec: ModelSpec, retrain_job):
    check_key = drift_check_key(spec)
    partitions = weekly_partitions(spec)

    @sensor(
        name=names.retrain_sensor(spec.name), job=retrain_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING, **team_attributes(spec),
        description=f"Requests one retrain of {spec.name} per failed drift check (cursor: the last check record id).",
    )
    def retrain_on_drift(context: SensorEvaluationContext):
        cursor = int(context.cursor) if context.cursor else 0
        records = check_executions(context.instance, check_key, cursor)
        if not records:
            return SensorResult(skip_reason=SkipReason(f"no new {spec.name} drift check result since record {cursor}"),
                                cursor=str(cursor))
        last = context.instance.get_runs(filters=RunsFilter(job_name=retrain_job.name,
                                                            tags={names.TRIGGER_TAG: names.DRIFT_TRIGGER}),
                                         limit=1)
        last_retrain_at = float(last[0].tags[names.DRIFT_CHECK_TIME_TAG]) if last and names.DRIFT_CHECK_TIME_TAG in last[0].tags else None
        decision = retrain_requests(records, cursor, last_retrain_at, spec.automation.retrain_cooldown_minutes,
                                    partitions.get_partition_keys())
        run_requests = [
            RunRequest(
                run_key=f"{spec.name}-drift-{record.record_id}",
                partition_key=partition,
                tags={names.TRIGGER_TAG: names.DRIFT_TRIGGER, names.DRIFT_WEEK_TAG: record.week,
                      names.DRIFT_CHECK_RECORD_TAG: str(record.record_id), names.DRIFT_CHECK_TIME_TAG: str(record.timestamp)},
            )
            for record, partition in decision.requests
        ]
        if not run_requests:
            return SensorResult(skip_reason=SkipReason("; ".join(decision.skipped)[:1000]), cursor=str(decision.cursor))
        return SensorResult(run_requests=run_requests, cursor=str(decision.cursor))

    return retrain_on_drift


def build_decay_sensor(spec: ModelSpec, retrain_job, rollback_job):
    """One failed live_degradation check -> one rollback run (when the check named a better earlier champion and
    ``rollout.rollback.automatic``) and one retrain run; run keys make a second tick request nothing new."""
    check_key = AssetCheckKey(asset_key(spec.name, names.LIVE_PERFORMANCE), names.LIVE_DEGRADATION_CHECK)
    partitions = weekly_partitions(spec)
    sensor_name = names.decay_sensor(spec.name)

    @sensor(
        name=sensor_name, jobs=[retrain_job, rollback_job], minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING, **team_attributes(spec),
        description=f"When {spec.name}'s live_degradation check fails: moves champion back to the previous champion if "
        "that version scored significantly better on the same labelled rows (never to a version whose gates failed), "
        "and requests a retrain for the next week either way. One failure, one rollback, one retrain. While a "
        "recovery from a concept change goes on, also one retrain per judged week still short of the pre-change level.",
    )
    def rollback_on_decay(context: SensorEvaluationContext):
        cursor = int(context.cursor) if context.cursor else 0
        decision = decay_requests(check_executions(context.instance, check_key, cursor), cursor,
                                  partitions.get_partition_keys())
        run_requests = []
        for request in decision.requests:
            record = request.record
            if request.rollback_to and spec.rollout.rollback.automatic:
                run_requests.append(RunRequest(
                    job_name=rollback_job.name, run_key=f"{spec.name}-rollback-{record.record_id}",
                    run_config={"ops": {f"{spec.name}_rollback_champion": {"config": {
                        "decided_by": f"sensor {sensor_name}", "to_version": request.rollback_to,
                        "only_if_champion": request.degraded_version or "",
                        "reason": f"live_degradation failed on week {record.week}: {request.reason}"}}}},
                    tags={names.TRIGGER_TAG: names.DECAY_TRIGGER, names.DECAY_WEEK_TAG: record.week,
                          names.DECAY_CHECK_RECORD_TAG: str(record.record_id)}))
            run_requests.append(RunRequest(
                job_name=retrain_job.name, run_key=f"{spec.name}-decay-{record.record_id}",
                partition_key=request.retrain_partition,
                tags={names.TRIGGER_TAG: names.DECAY_TRIGGER, names.DECAY_WEEK_TAG: record.week,
                      names.DECAY_CHECK_RECORD_TAG: str(record.record_id),
                      **({names.RECOVERY_TAG: "true"} if record.passed else {})}))
        if not run_requests:
            reason = "; ".join(decision.skipped) or f"no failed {spec.name} live_degradation check since record {cursor}"
            return SensorResult(skip_reason=SkipReason(reason[:1000]), cursor=str(decision.cursor))
        return SensorResult(run_requests=run_requests, cursor=str(decision.cursor))

    return rollback_on_decay
