"""The demo's history: run each model's pipeline over a range of weeks in this process, against the instance in
``DAGSTER_HOME``, and tick its sensors as the daemon would.

Used by ``mlplatform demo``; the same range as ``dagster asset materialize --partition-range``. A model named in the
demo's production plan (:mod:`mlplatform.demo.plan`) keeps its last weeks out of the history, for production.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dagster import AssetCheckEvaluation, AssetKey, DagsterInstance, RunsFilter
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlplatform import names
from mlplatform.lib.gates import TRAINING_DATA
from mlplatform.lib.source import contiguous_ranges, weeks_with_rows

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
    retrains: list[tuple[str, str, bool]] = field(default_factory=list)  # (drift week, retrained week, success)
    halted: list[str] = field(default_factory=list)  # weeks whose training-data gate stopped training
    skipped_weeks: list[str] = field(default_factory=list)  # weeks without source rows, not run


class RunRequestError(ValueError):
    """The models or weeks asked for do not exist; nothing was run."""


def week_range(model: str, weeks_of_model: list[str], first: str | None, last: str | None,
               count: int | None) -> tuple[str, str]:
    """The first and last week to run: ``first``/``last`` when given, else the model's own ends;
    ``count`` weeks from the first when ``last`` is not given."""
    if not weeks_of_model:
        raise RunRequestError(f"{model}: no complete week to run yet (its partitions start in the current week "
                              "or later; a week runs once it has ended)")
    span = f"{model}'s weeks are the Mondays {weeks_of_model[0]} .. {weeks_of_model[-1]}"
    for flag, value in (("--start", first), ("--end", last)):
        if value is not None and value not in weeks_of_model:
            raise RunRequestError(f"{flag} {value}: not a week of {model}; expected YYYY-MM-DD, a Monday. {span}")
    if count is not None and count < 1:
        raise RunRequestError(f"--weeks {count}: give 1 or more weeks")
    start = first or weeks_of_model[0]
    if last is not None:
        end = last
    elif count is not None:
        end = weeks_of_model[min(weeks_of_model.index(start) + count, len(weeks_of_model)) - 1]
    else:
        end = weeks_of_model[-1]
    if end < start:
        raise RunRequestError(f"--end {end} is before --start {start}")
    return start, end


def run_models(
    models: list[str] | None = None, first: str | None = None, last: str | None = None, weeks: int | None = None,
    skip_empty_weeks: bool = True, hold_back: dict[str, int] | None = None,
) -> list[ModelRunResult]:
    """Run each model's pipeline over its weeks; every request is checked before anything runs.

    Weeks whose source holds no rows are skipped by default (and named): the range is cut into runs of
    consecutive weeks with data, so an empty week neither fails the weeks around it nor shows as done.
    ``hold_back`` leaves a model's last N weeks of the range to be run later as production weeks (the demo).
    """
    from mlplatform.definitions import build_definitions
    from mlplatform.defs.instance import fail_dead_runs

    defs = build_definitions()
    instance = DagsterInstance.get()
    fail_dead_runs(instance)  # a killed earlier run must not block this one (max_concurrent_runs: 1)
    damage = _damaged_stores()
    if damage:
        raise RunRequestError("a store looks damaged or replaced; nothing was written:\n  - " + "\n  - ".join(damage))
    jobs = {names.model_from_pipeline_job(j.name): j.name for j in defs.resolve_all_job_defs()
            if names.model_from_pipeline_job(j.name)}
    unknown = sorted(set(models or []) - set(jobs))
    if unknown:
        raise RunRequestError(f"no model named {', '.join(unknown)}; the specs define {', '.join(sorted(jobs)) or 'none'}")
    specs = specs_by_name() if skip_empty_weeks else {}
    planned = []
    for model in sorted(jobs):
        if models and model not in models:
            continue
        job = defs.resolve_job_def(jobs[model])
        keys = job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
        start, end = week_range(model, keys, first, last, weeks)
        held = (hold_back or {}).get(model, 0)
        if held:
            end = keys[max(keys.index(start), keys.index(end) - held)]
        in_range = keys[keys.index(start):keys.index(end) + 1]
        with_rows = weeks_with_rows(specs[model], in_range) if model in specs else in_range
        planned.append((model, job, start, end, contiguous_ranges(in_range, with_rows),
                        [w for w in in_range if w not in with_rows]))
    results = []
    for model, job, start, end, ranges, skipped in planned:
        note = f" (skipping {len(skipped)} weeks without rows in the source: {weeks_text(skipped)})" if skipped else ""
        print(f"--> {model}: weeks {start} .. {end}{note}", flush=True)
        outcome = ModelRunResult(model=model, first_week=start, last_week=end, success=bool(ranges), run_id="",
                                 skipped_weeks=skipped)
        for first_week, last_week in ranges:
            _execute_range(job, instance, first_week, last_week, outcome)
        if not ranges:
            print(f"    {model}: no week in {start} .. {end} has rows in the source; nothing was run", flush=True)
        outcome.retrains = run_retrain_sensor(defs, instance, model)
        results.append(outcome)
    return results


def specs_by_name() -> dict:
    """Every spec in MLPLATFORM_SPECS by model name."""
    from mlplatform.defs.dbt_project import dbt_columns
    from mlplatform.lib.settings import load_settings
    from mlplatform.specs import load_specs

    return {spec.name: spec for spec in load_specs(load_settings().spec_roots, dbt_columns())}


def run_job(defs, instance: DagsterInstance, job_name: str, first: str, last: str | None = None,
            assets: list[AssetKey] | None = None):
    """One run of a partitioned job over the weeks [first, last] (one week without ``last``), in this process;
    only ``assets`` of the job when given."""
    job = defs.resolve_job_def(job_name)
    tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last or first}
    return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False, run_config=QUIET_RUN_CONFIG,
                                  asset_selection=assets)


def check_results(result) -> list[AssetCheckEvaluation]:
    """The asset check evaluations a run logged."""
    return [event.event_specific_data for event in result.all_events
            if event.event_type_value == "ASSET_CHECK_EVALUATION"]


def weeks_text(weeks: list[str], shown: int = 12) -> str:
    return ", ".join(weeks[:shown]) + (f" ... ({len(weeks)} in all)" if len(weeks) > shown else "")


def _execute_range(job, instance: DagsterInstance, start: str, end: str, outcome: ModelRunResult) -> None:
    """One run over [start, end]; its rows, checks and halted weeks are added to ``outcome``."""
    result = job.execute_in_process(
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
        raise_on_error=False,
        run_config=QUIET_RUN_CONFIG,
    )
    outcome.success = outcome.success and result.success
    outcome.run_id = result.run_id
    run_rows: dict[str, int] = {}  # a range's output is one materialization per week, each with the range's rows
    for event in result.all_events:
        if event.is_step_materialization:
            materialization = event.step_materialization_data.materialization
            rows = materialization.metadata.get("rows")
            if rows is not None:
                run_rows[materialization.asset_key.path[-1]] = int(rows.value)
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation: AssetCheckEvaluation = event.event_specific_data
            name = f"{evaluation.asset_key.path[-1]}.{evaluation.check_name}"
            if evaluation.partition is not None and name in ("raw.source_contract", "features.schema"):
                continue  # an empty week's own note (skipped weeks are reported separately)
            outcome.checks[name] = outcome.checks.get(name, True) and evaluation.passed
            if evaluation.check_name == TRAINING_DATA and not evaluation.passed:
                outcome.halted.append(str(evaluation.partition))
            summary = evaluation.metadata.get("summary")
            if summary is not None:
                outcome.check_summaries[name] = str(summary.value)
    for name, rows in run_rows.items():  # runs over separate ranges add up
        outcome.rows[name] = outcome.rows.get(name, 0) + rows


def _damaged_stores() -> list[str]:
    """What :func:`mlplatform.lib.stores.check_stores` finds wrong with this home's stores (empty when whole)."""
    from mlplatform.lib.settings import load_settings
    from mlplatform.lib.stores import check_stores
    from mlplatform.lib.tracking import Tracker

    settings = load_settings()
    return check_stores(settings.home, Tracker.for_settings(settings))


@dataclass
class SensorRun:
    """One run a sensor requested, as executed in this process."""

    job: str
    partition: str | None
    tags: dict[str, str]
    success: bool
    run_id: str


def tick_sensor(defs, instance: DagsterInstance, sensor_name: str) -> list[SensorRun]:
    """Tick a sensor once, as the daemon would, and execute what it requests (in this process, in order).

    Runs carry the sensor's name and run key, so a request already launched (by an earlier tick or a daemon) is not
    run again, and a daemon started later (``dagster dev``) sees them as launched.
    """
    import json

    from dagster import SensorResult, build_sensor_context
    from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

    try:
        sensor_def = defs.resolve_sensor_def(sensor_name)
    except Exception:  # noqa: BLE001 - e.g. models retrained weekly have no drift sensor
        return []
    cursor_file = Path(instance.root_directory) / "demo_sensor_cursors.json"
    cursors = json.loads(cursor_file.read_text()) if cursor_file.exists() else {}
    context = build_sensor_context(instance=instance, cursor=cursors.get(sensor_name), definitions=defs)
    result = sensor_def(context)
    if not isinstance(result, SensorResult):
        return []
    if result.cursor is not None:
        cursors[sensor_name] = result.cursor
        cursor_file.write_text(json.dumps(cursors))
    done = []
    for request in result.run_requests or []:
        tags = {**request.tags, SENSOR_NAME_TAG: sensor_name, RUN_KEY_TAG: request.run_key}
        if request.run_key and instance.get_runs(RunsFilter(tags={SENSOR_NAME_TAG: sensor_name,
                                                                  RUN_KEY_TAG: request.run_key}), limit=1):
            continue
        job = defs.resolve_job_def(request.job_name or sensor_def.job_name)
        run_config = {**QUIET_RUN_CONFIG, **(request.run_config or {})}
        run = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=tags,
                                     raise_on_error=False, run_config=run_config)
        done.append(SensorRun(job.name, request.partition_key, dict(request.tags), run.success, run.run_id))
    return done


def run_retrain_sensor(defs, instance: DagsterInstance, model: str) -> list[tuple[str, str, bool]]:
    """Tick the model's retrain-on-drift sensor once and run its requests: (drift week, retrained week, success)."""
    return [(run.tags[names.DRIFT_WEEK_TAG], run.partition or "", run.success)
            for run in tick_sensor(defs, instance, names.retrain_sensor(model))]
