"""The canary analysis on a clock: a sensor that, while a canary serves, requests one analysis run every
``rollout.analysis.interval_minutes``, and the job that runs it (:mod:`mlplatform.lib.canary`, what
``mlplatform canary --apply`` does): a significantly worse canary is stopped, a good one ramped or promoted, each an
audited move; the run's metadata shows the evidence (what a person promotes on under ``approval: manual``)."""

from dagster import (
    Config,
    DefaultSensorStatus,
    Failure,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    sensor,
)

from mlplatform import names
from mlplatform.defs.metadata import team_attributes, team_tags
from mlplatform.defs.resources import ModelRegistry
from mlplatform.specs import ModelSpec


class CanaryAnalysisConfig(Config):
    """Who asked (the audit's actor) and the canary version judged (empty: the current challenger)."""

    decided_by: str = "canary analysis"
    only_if_challenger: str = ""


def build_canary_job(spec: ModelSpec):
    """``<model>_canary_analysis``: one analysis of the last window, its verdict carried out."""

    @op(name=f"{spec.name}_canary_analysis_op", required_resource_keys={"warehouse", "model_registry", "platform"},
        out=Out(Nothing), pool=names.model_pool(spec.name))
    def analyse(context: OpExecutionContext, config: CanaryAnalysisConfig):
        from pathlib import Path

        from mlplatform.lib import approvals, promotion
        from mlplatform.lib.canary import analyse_and_act, canary_state

        warehouse = context.resources.warehouse
        tracker = context.resources.model_registry.tracker()
        if config.only_if_challenger and canary_state(tracker, spec).challenger != config.only_if_challenger:
            context.log.info(f"{spec.name}: v{config.only_if_challenger} is no longer the canary; nothing to judge")
            yield Output(None)
            return
        try:
            run = analyse_and_act(context.resources.platform.home_path, Path(warehouse.database), spec, tracker,
                                  warehouse.wait_seconds, actor=config.decided_by)
        except approvals.StoresDamaged as damaged:
            raise Failure(f"a store looks damaged or replaced; nothing changed: {'; '.join(damaged.problems)}") from None
        except promotion.PromotionRefused as refused:
            raise Failure(f"nothing changed: {refused}") from None
        context.log.info(run.text())
        analysis = run.analysis
        yield Output(None, metadata={
            "decision": analysis.decision, "reason": analysis.reason,
            "canary_version": analysis.canary_version or "", "champion_version": analysis.champion_version or "",
            "canary_requests": analysis.canary_requests, "champion_requests": analysis.champion_requests,
            "share_percent": run.state.share, "minutes_at_share": round(analysis.minutes, 1),
            "evidence": MetadataValue.md(analysis.text().replace("\n", "\n\n")),
            "signals": MetadataValue.json([s.__dict__ for s in analysis.signals]),
            "change": (f"{run.change.kind}: {run.change.alias} v{run.change.previous_version or '-'} -> "
                       f"v{run.change.version or '-'}" if run.change else "none")})

    @job(name=names.canary_job(spec.name), tags=team_tags(spec), description=f"Judge {spec.name}'s canary against the champion on the last "
         f"{spec.rollout.analysis.window_minutes} min of live traffic (error rate, latency p99, predictions) and "
         "carry the verdict out: stop, ramp step, or promotion (approval: auto).")
    def canary_job():
        analyse()

    return canary_job


def build_canary_sensor(spec: ModelSpec, canary_job):
    """While a canary serves (challenger differs from champion), one analysis run per interval."""
    interval = spec.rollout.analysis.interval_minutes * 60
    sensor_name = names.canary_sensor(spec.name)

    @sensor(name=sensor_name, job=canary_job, minimum_interval_seconds=interval,
            default_status=DefaultSensorStatus.RUNNING, **team_attributes(spec),
            description=f"Every {spec.rollout.analysis.interval_minutes} min while {spec.name} has a canary: one run "
            f"of {canary_job.name} (stops a significantly worse canary, ramps or promotes a good one).")
    def canary_on_a_clock(context: SensorEvaluationContext, model_registry: ModelRegistry):
        from mlplatform.lib.canary import canary_state

        state = canary_state(model_registry.tracker(), spec)
        if state.challenger is None or state.challenger == state.champion:
            return SkipReason(f"{spec.name} has no canary (challenger v{state.challenger or '-'}, champion "
                              f"v{state.champion or '-'})")
        import time

        tick = int(time.time() // interval)
        return RunRequest(run_key=f"{spec.name}-canary-{state.challenger}-{tick}", run_config={"ops": {
            f"{spec.name}_canary_analysis_op": {"config": {"decided_by": f"sensor {sensor_name}",
                                                           "only_if_challenger": state.challenger}}}})

    return canary_on_a_clock
