"""What runs without anyone clicking: the weekly schedule and the sensor that retrains on drift.

The decision of which drift failures deserve a retrain is :func:`retrain_requests`, a
plain function over check records; the sensor only reads the instance and wraps it.
"""

from dagster import (
    AssetCheckKey,
    AssetSelection,
    DagsterInstance,
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
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from mlplatform.defs.data_assets import features_key, raw_key, staged_key
from mlplatform.defs.drift_assets import DRIFT_CHECK, drift_key
from mlplatform.defs.model_assets import backtest_key, evaluation_key, model_key
from mlplatform.defs.partitions import weekly_partitions
from mlplatform.lib.retraining import CheckRecord, retrain_requests
from mlplatform.specs import ModelSpec

RETRAIN_TAG = "mlplatform/trigger"
DRIFT_WEEK_TAG = "mlplatform/drift_week"
CHECK_TIME_TAG = "mlplatform/drift_check_timestamp"


def retrain_job_name(spec: ModelSpec) -> str:
    return f"{spec.name}_retrain"


def weekly_job_name(spec: ModelSpec) -> str:
    return f"{spec.name}_weekly"


def build_jobs(spec: ModelSpec) -> list:
    """The whole lifecycle, the retrain (model, evaluation, backtest) and the weekly job."""
    training = AssetSelection.assets(model_key(spec), evaluation_key(spec), backtest_key(spec))
    data = AssetSelection.assets(raw_key(spec), features_key(spec), drift_key(spec))
    if spec.staging is not None:
        data = data | AssetSelection.assets(staged_key(spec))
    weekly = data | training if spec.automation.retrain == "weekly" else data
    return [
        define_asset_job(f"{spec.name}_pipeline", selection=AssetSelection.groups(spec.name),
                         description=f"Lifecycle of {spec.name}: data, gates, model per week, evaluation, drift"),
        define_asset_job(retrain_job_name(spec), selection=training, partitions_def=weekly_partitions(spec),
                         description=f"Retrain {spec.name} for one week (what the drift sensor requests)"),
        define_asset_job(weekly_job_name(spec), selection=weekly, partitions_def=weekly_partitions(spec),
                         description=f"The week that just ended for {spec.name}: data and drift"
                         + (", model" if spec.automation.retrain == "weekly" else "")),
    ]


def build_schedule(spec: ModelSpec, weekly_job):
    """Mondays 01:00 UTC: the week that just ended (its partition exists once the week is over)."""
    return build_schedule_from_partitioned_job(
        weekly_job, hour_of_day=1, minute_of_hour=0,
        default_status=DefaultScheduleStatus.RUNNING if spec.automation.weekly_schedule else DefaultScheduleStatus.STOPPED,
    )


def build_retrain_sensor(spec: ModelSpec, retrain_job):
    check_key = AssetCheckKey(drift_key(spec), DRIFT_CHECK)
    partitions = weekly_partitions(spec)

    @sensor(
        name=f"{spec.name}_retrain_on_drift", job=retrain_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Requests one retrain of {spec.name} per failed drift check (cursor: the last check record id).",
    )
    def retrain_on_drift(context: SensorEvaluationContext):
        cursor = int(context.cursor) if context.cursor else 0
        records = drift_check_records(context.instance, check_key, cursor)
        if not records:
            return SensorResult(skip_reason=SkipReason(f"no new {spec.name} drift check result since record {cursor}"),
                                cursor=str(cursor))
        last = context.instance.get_runs(filters=RunsFilter(job_name=retrain_job.name, tags={RETRAIN_TAG: "drift"}),
                                         limit=1)
        last_retrain_at = float(last[0].tags[CHECK_TIME_TAG]) if last and CHECK_TIME_TAG in last[0].tags else None
        decision = retrain_requests(records, cursor, last_retrain_at, spec.automation.retrain_cooldown_minutes,
                                    partitions.get_partition_keys())
        run_requests = [
            RunRequest(
                run_key=f"{spec.name}-drift-{record.record_id}",
                partition_key=partition,
                tags={RETRAIN_TAG: "drift", DRIFT_WEEK_TAG: record.week, "mlplatform/drift_check_record": str(record.record_id),
                      CHECK_TIME_TAG: str(record.timestamp)},
            )
            for record, partition in decision.requests
        ]
        if not run_requests:
            return SensorResult(skip_reason=SkipReason("; ".join(decision.skipped)[:1000]), cursor=str(decision.cursor))
        return SensorResult(run_requests=run_requests, cursor=str(decision.cursor))

    return retrain_on_drift


def drift_check_records(instance: DagsterInstance, check_key: AssetCheckKey, after: int) -> list[CheckRecord]:
    """Drift check executions newer than ``after``; one left unevaluated by a finished run is dropped (never will be)."""
    records = []
    for execution in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1000):
        if execution.id <= after:
            continue
        if execution.status == AssetCheckExecutionRecordStatus.PLANNED:
            run = instance.get_run_by_id(execution.run_id)
            if run is None or run.is_finished:
                continue
            records.append(CheckRecord(execution.id, None, execution.partition, execution.create_timestamp))
            continue
        evaluation = execution.evaluation
        timestamp = execution.event.timestamp if execution.event else execution.create_timestamp
        records.append(CheckRecord(execution.id, execution.status == AssetCheckExecutionRecordStatus.SUCCEEDED,
                                   evaluation.partition if evaluation else execution.partition, timestamp))
    return records
