"""What runs without anyone clicking: the weekly schedule and the sensor that retrains on drift.

The decision of which drift failures deserve a retrain is :func:`retrain_requests`, a
plain function over check records; the sensor only reads the instance and wraps it.
"""

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    build_schedule_from_partitioned_job,
    define_asset_job,
    sensor,
)

from mlplatform import names
from mlplatform.defs.check_history import check_executions
from mlplatform.defs.keys import (
    backtest_key,
    drift_check_key,
    drift_key,
    evaluation_key,
    features_key,
    model_key,
    raw_key,
    staged_key,
)
from mlplatform.defs.partitions import weekly_partitions
from mlplatform.lib.retraining import retrain_requests
from mlplatform.specs import ModelSpec


def build_jobs(spec: ModelSpec) -> list:
    """The whole lifecycle, the retrain (model, evaluation, backtest) and the weekly job."""
    training = AssetSelection.assets(model_key(spec), evaluation_key(spec), backtest_key(spec))
    data = AssetSelection.assets(raw_key(spec), features_key(spec), drift_key(spec))
    if spec.staging is not None:
        data = data | AssetSelection.assets(staged_key(spec))
    weekly = data | training if spec.automation.retrain == "weekly" else data
    return [
        define_asset_job(names.pipeline_job(spec.name), selection=AssetSelection.groups(spec.name),
                         description=f"Lifecycle of {spec.name}: data, gates, model per week, evaluation, drift"),
        define_asset_job(names.retrain_job(spec.name), selection=training, partitions_def=weekly_partitions(spec),
                         description=f"Retrain {spec.name} for one week (what the drift sensor requests)"),
        define_asset_job(names.weekly_job(spec.name), selection=weekly, partitions_def=weekly_partitions(spec),
                         description=f"The week that just ended for {spec.name}: data and drift (with the week's "
                         "served predictions)"
                         + (", model" if spec.automation.retrain == "weekly" else "")),
    ]


def build_schedule(spec: ModelSpec, weekly_job):
    """Mondays 01:00 UTC: the week that just ended (its partition exists once the week is over)."""
    return build_schedule_from_partitioned_job(
        weekly_job, hour_of_day=1, minute_of_hour=0,
        default_status=DefaultScheduleStatus.RUNNING if spec.automation.weekly_schedule else DefaultScheduleStatus.STOPPED,
    )


def build_retrain_sensor(spec: ModelSpec, retrain_job):
    check_key = drift_check_key(spec)
    partitions = weekly_partitions(spec)

    @sensor(
        name=names.retrain_sensor(spec.name), job=retrain_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Requests one retrain of {spec.name} per failed drift check (cursor: the last check record id).",
    )
    def retrain_on_drift(context: SensorEvaluationContext):
        cursor = int(context.cursor) if context.cursor else 0
        records = check_executions(context.instance, check_key, cursor)
        if not records:
            return SensorResult(skip_reason=SkipReason(f"no new {spec.name} drift check result since record {cursor}"),
                                cursor=str(cursor))
        last = context.instance.get_runs(filters=RunsFilter(job_name=retrain_job.name, tags={names.TRIGGER_TAG: "drift"}),
                                         limit=1)
        last_retrain_at = float(last[0].tags[names.DRIFT_CHECK_TIME_TAG]) if last and names.DRIFT_CHECK_TIME_TAG in last[0].tags else None
        decision = retrain_requests(records, cursor, last_retrain_at, spec.automation.retrain_cooldown_minutes,
                                    partitions.get_partition_keys())
        run_requests = [
            RunRequest(
                run_key=f"{spec.name}-drift-{record.record_id}",
                partition_key=partition,
                tags={names.TRIGGER_TAG: "drift", names.DRIFT_WEEK_TAG: record.week,
                      names.DRIFT_CHECK_RECORD_TAG: str(record.record_id), names.DRIFT_CHECK_TIME_TAG: str(record.timestamp)},
            )
            for record, partition in decision.requests
        ]
        if not run_requests:
            return SensorResult(skip_reason=SkipReason("; ".join(decision.skipped)[:1000]), cursor=str(decision.cursor))
        return SensorResult(run_requests=run_requests, cursor=str(decision.cursor))

    return retrain_on_drift
