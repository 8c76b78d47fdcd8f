"""The one place that reads asset check history from a Dagster instance.

Dagster 1.13's public instance API gives only the latest evaluation of a check
(``get_latest_asset_check_evaluation_record``), but a backfill evaluates the drift check
once per week in one run and the retrain sensor must see every one of them. So this
adapter reads the event-log storage's check history, which is not public API. It is kept
to this module, and ``test_check_history_adapter_reads_every_weeks_drift_check_from_a_real_instance``
(``mlplatform_tests/test_promotion.py``) exercises it against a real instance, so a Dagster upgrade that changes
it fails that test, not a sensor in production.
"""

from __future__ import annotations

from dagster import AssetCheckKey, DagsterInstance
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from mlplatform.lib.retraining import CheckRecord


def check_executions(instance: DagsterInstance, check_key: AssetCheckKey, after: int, limit: int = 1000) -> list[CheckRecord]:
    """Executions of the check with a record id above ``after``, oldest first.

    An execution still planned (its run has not evaluated it yet) has ``passed=None``; one left
    planned by a run that has finished will never be evaluated and is dropped.
    """
    records = []
    for execution in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=limit):
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
        details = {name: getattr(value, "value", value) for name, value in (evaluation.metadata if evaluation else {}).items()}
        records.append(CheckRecord(execution.id, execution.status == AssetCheckExecutionRecordStatus.SUCCEEDED,
                                   evaluation.partition if evaluation else execution.partition, timestamp, details))
    return sorted(records, key=lambda record: record.record_id)
