"""Run a model's pipeline for a range of weeks in this process, against the instance in ``DAGSTER_HOME``.

Used by ``mlplatform demo``; the same range as ``dagster asset materialize --partition-range``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dagster import AssetCheckEvaluation, DagsterInstance
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""The terminal shows warnings and the summary; every event is still in the instance for the UI."""


@dataclass
class ModelRunResult:
    model: str
    first_week: str
    last_week: str
    success: bool
    run_id: str
    rows: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    check_summaries: dict[str, str] = field(default_factory=dict)


def run_models(
    models: list[str] | None = None, first: str | None = None, last: str | None = None, weeks: int | None = None
) -> list[ModelRunResult]:
    from mlplatform.definitions import build_definitions

    defs = build_definitions()
    instance = DagsterInstance.get()
    results = []
    for job_name in sorted(j.name for j in defs.resolve_all_job_defs() if j.name.endswith("_pipeline")):
        model = job_name.removesuffix("_pipeline")
        if models and model not in models:
            continue
        job = defs.resolve_job_def(job_name)
        keys = job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
        start = first or keys[0]
        end = last or (keys[min(weeks, len(keys)) - 1] if weeks else keys[-1])
        print(f"--> {model}: weeks {start} .. {end}", flush=True)
        result = job.execute_in_process(
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
            raise_on_error=False,
            run_config=QUIET_RUN_CONFIG,
        )
        outcome = ModelRunResult(model=model, first_week=start, last_week=end, success=result.success, run_id=result.run_id)
        for event in result.all_events:
            if event.is_step_materialization:
                materialization = event.step_materialization_data.materialization
                rows = materialization.metadata.get("rows")
                if rows is not None:
                    outcome.rows[materialization.asset_key.path[-1]] = int(rows.value)
            elif event.event_type_value == "ASSET_CHECK_EVALUATION":
                evaluation: AssetCheckEvaluation = event.event_specific_data
                name = f"{evaluation.asset_key.path[-1]}.{evaluation.check_name}"
                outcome.checks[name] = evaluation.passed
                summary = evaluation.metadata.get("summary")
                if summary is not None:
                    outcome.check_summaries[name] = str(summary.value)
        results.append(outcome)
    return results


def summary_table(results: list[ModelRunResult]) -> str:
    """A plain-text table a person reads in the terminal."""
    lines = [f"{'model':<14} {'weeks':<25} {'raw rows':>9} {'feature rows':>13}  checks", "-" * 90]
    for r in results:
        checks = ", ".join(f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in r.checks.items()) or "none ran"
        lines.append(
            f"{r.model:<14} {r.first_week + '..' + r.last_week:<25} {r.rows.get('raw', 0):>9} "
            f"{r.rows.get('features', 0):>13}  {checks}"
        )
        for name, ok in r.checks.items():
            if not ok:
                lines.append(f"{'':<14} {name} failed: {r.check_summaries.get(name, '')}")
    return "\n".join(lines)
