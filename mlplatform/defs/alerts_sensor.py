"""The ``alerts_delivery`` sensor: every tick records failed retrain runs in the audit trail, then delivers the alerts
of the location's models that are due (:func:`mlplatform.lib.alerts.deliver`).

Running by default when the policy file routes alerts for one of the location's models; stopped otherwise (it then
never opens the warehouse). A tick holds the warehouse only to read and to record, never while sending, and gives up
at once when a run holds its lock (the next tick goes on): delivery never makes a run wait or fail.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mlplatform import names
from mlplatform.lib.alerts import AlertSetup, FailedRun, deliver
from mlplatform.lib.audit_integrity import settings_anchor_reader
from mlplatform.lib.settings import Settings

SENSOR_NAME = "alerts_delivery"
INTERVAL_SECONDS = 30
WAREHOUSE_WAIT_SECONDS = 2.0
"""A tick waits this long for the warehouse's lock, then skips (a run is writing; the next tick delivers)."""
VERIFY_EVERY = timedelta(minutes=10)
"""How often a tick re-verifies the routed models' hash chains (an audit_verification_failed alert)."""


def failed_retrains(instance, setup: AlertSetup, after: float | None, lookback: timedelta) -> tuple[list[FailedRun],
                                                                                                    float | None]:
    """Failed runs of the routed models' retrain jobs updated after ``after`` (a timestamp; None: ``lookback``),
    and the newest update time seen (the sensor's cursor)."""
    jobs = {names.retrain_job(model): model for model in setup.models}
    since = (datetime.fromtimestamp(after, UTC) if after is not None else datetime.now(UTC) - lookback)
    records = instance.get_run_records(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=since),
                                       limit=500, order_by="update_timestamp", ascending=True)
    found, newest = [], after
    for record in records:
        updated = record.update_timestamp.timestamp()
        newest = updated if newest is None else max(newest, updated)
        run = record.dagster_run
        model = jobs.get(run.job_name)
        if model is None:
            continue
        found.append(FailedRun(run.run_id, model, run.job_name, record.update_timestamp.astimezone(UTC).replace(
            tzinfo=None), _failure_message(instance, run.run_id), run.tags.get(names.TRIGGER_TAG),
            run.tags.get(names.DRIFT_WEEK_TAG) or run.tags.get(names.DECAY_WEEK_TAG)
            or run.tags.get("dagster/partition")))
    return found, newest


def _failure_message(instance, run_id: str) -> str:
    """The first failed step's error (one line), else the run's failure message."""
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}):
        event = entry.dagster_event
        data = getattr(event, "step_failure_data", None) if event.event_type == DagsterEventType.STEP_FAILURE else None
        if data is not None and data.error is not None:
            return f"step {event.step_key}: {data.error.message.strip().splitlines()[0][:400]}"
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE):
        return (entry.dagster_event.message or "the run failed").strip().splitlines()[0][:400]
    return "the run failed"


def build_alerts_sensor(setup: AlertSetup, settings: Settings):
    """One sensor per code location, over its models' trails."""
    from mlplatform.lib.warehouse import WarehouseBusy, WarehouseDamaged, connect_when_free

    routed = setup.routed_models()
    status = DefaultSensorStatus.RUNNING if routed else DefaultSensorStatus.STOPPED

    def warehouse(wait_seconds: float):
        return connect_when_free(settings.warehouse_path, wait_seconds)

    @sensor(name=SENSOR_NAME, minimum_interval_seconds=INTERVAL_SECONDS, default_status=status,
            description="Delivers lifecycle alerts (drift, decay and rollback, halted training, stopped canary, "
            "approval waiting, failed retrain, broken audit chain) from the audit trail to the destinations the policy "
            "file's `alerts` section routes them to, once per event and destination (docs/alerts.md). Models routed: "
            + (", ".join(routed[:20]) + (f" and {len(routed) - 20} more" if len(routed) > 20 else "") or "none"))
    def alerts_delivery(context: SensorEvaluationContext):
        state = json.loads(context.cursor) if context.cursor else {}
        if not routed:
            return SensorResult(skip_reason=SkipReason("no alert routes for this location's models (docs/alerts.md)"),
                                cursor=context.cursor)
        if not settings.warehouse_path.exists():
            return SensorResult(skip_reason=SkipReason(f"no warehouse at {settings.warehouse_path} yet: nothing ran, "
                                                       "nothing to tell"), cursor=context.cursor)
        now = datetime.now(UTC).replace(tzinfo=None)
        failures, newest = failed_retrains(context.instance, setup, state.get("runs_after"),
                                           timedelta(hours=setup.config.max_age_hours))
        last_verified = state.get("verified_at")
        verify = last_verified is None or now - datetime.fromisoformat(last_verified) >= VERIFY_EVERY
        try:
            report = deliver(warehouse, setup, now, verify=verify, failures=failures, read_wait=WAREHOUSE_WAIT_SECONDS,
                             anchors_of=settings_anchor_reader(settings))
        except WarehouseBusy:
            return SensorResult(skip_reason=SkipReason("the warehouse is busy (a run is writing); the next tick "
                                                       "delivers"), cursor=context.cursor)
        except WarehouseDamaged as damaged:
            context.log.error(str(damaged))
            return SensorResult(skip_reason=SkipReason(str(damaged)[:1000]), cursor=context.cursor)
        for outcome in report.outcomes:
            (context.log.info if outcome.delivered else context.log.warning)(outcome.line())
        if report.recorded_failures:
            context.log.info(f"recorded {report.recorded_failures} failed retrain run(s) in the audit trail")
        state = {**state, "runs_after": newest, **({"verified_at": now.isoformat()} if verify else {})}
        text = report.text() + (f"; {report.recorded_failures} failed retrain(s) recorded"
                                if report.recorded_failures else "")
        lines = [o.line() for o in report.outcomes[:20]]
        return SensorResult(skip_reason=SkipReason("; ".join([text, *lines])[:1000]), cursor=json.dumps(state))

    return alerts_delivery


def alerts_definitions(specs, settings: Settings):
    """The location's ``alerts_delivery`` sensor, routed by the policy file of every spec root."""
    from dagster import Definitions

    from mlplatform.lib.alerts import alert_setup

    return Definitions(sensors=[build_alerts_sensor(alert_setup(specs, settings.spec_roots), settings)])
