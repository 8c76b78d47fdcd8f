"""dagster-mlflow owns each training run's parent MLflow run: its ``mlflow_tracking`` resource and its
``end_mlflow_on_run_finished`` hook, wired to the platform's MLflow store.

Every step of a training job initializes the resource (the hook requires it); in a run that does not select the model
asset (e.g. its data only) the resource is None and nothing touches MLflow. The first one creates the MLflow run
tagged ``dagster_run_id``; every later step, in this process or another (multiprocess executor, a pod per step),
finds it by that tag and makes it its active run, so the weeks the model step logs are nested under one parent.
The hook ends it FINISHED after the job's last step, FAILED when a step fails.

The experiment comes from the job's ``mlplatform/mlflow_experiment`` tag (each model's training jobs set it to the
model) rather than from the job's default run config: Dagster replaces, not merges, a job's default config with any
run config a launcher, sensor or test passes, and the experiment would be lost with it. The resource's config schema
is dagster-mlflow's own (``experiment_name`` given there wins), plus ``artifact_root``: the experiment is created at
the platform's artifact location before dagster-mlflow's ``mlflow.set_experiment`` would create it under
``./mlruns``. dagster-mlflow imports mlflow (about 1 s), so it is imported when a step runs, not when the code
location loads.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from dagster import Field, HookDefinition, InitResourceContext, Noneable, StringSource, resource
from dagster._utils.warnings import BetaWarning

from mlplatform import names
from mlplatform.lib.settings import Settings


def mlflow_run_resource(settings: Settings):
    """dagster-mlflow's ``mlflow_tracking`` on the platform's store: one object per settings (the definitions of
    many models merge only when their resources are the same objects)."""
    root = settings.artifact_root
    schema = {
        # dagster-mlflow's CONFIG_SCHEMA (dagster_mlflow/resources.py), with defaults from the platform's settings
        "experiment_name": Field(Noneable(StringSource), default_value=None, is_required=False,
                                 description=f"MLflow experiment; default: the job's {names.MLFLOW_EXPERIMENT_TAG} tag"),
        "mlflow_tracking_uri": Field(Noneable(StringSource), default_value=settings.tracking_uri, is_required=False,
                                     description="MLflow tracking URI (MLPLATFORM_MLFLOW_TRACKING_URI)"),
        "artifact_root": Field(str, default_value=str(root) if root else "", is_required=False,
                               description="where a new experiment puts artifacts; empty: the tracking server's"),
        "parent_run_id": Field(Noneable(str), default_value=None, is_required=False),
        "mlflow_run_id": Field(Noneable(str), default_value=None, is_required=False),
        "env": Field(dict, default_value={}, is_required=False),
        "env_to_tag": Field(Noneable(list), default_value=None, is_required=False),
        "extra_tags": Field(dict, default_value={}, is_required=False),
    }
    return resource(config_schema=schema, description="dagster-mlflow's mlflow_tracking on the platform's MLflow "
                    "store: the parent MLflow run of each training run")(_mlflow_run)


def _mlflow_run(context: InitResourceContext) -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=BetaWarning)  # dagster-mlflow is marked beta
        from dagster_mlflow import mlflow_tracking

    from mlplatform.defs.resources import _tracker_for

    config = dict(context.resource_config)
    run = context.dagster_run
    if run is not None and run.asset_selection and not any(  # empty or None: the whole job
            key.path[-1] == names.MODEL for key in run.asset_selection):
        yield None  # a run of a training job that trains nothing (e.g. its data only): no MLflow run, no store opened
        return
    experiment = config.get("experiment_name") or (run.tags.get(names.MLFLOW_EXPERIMENT_TAG) if run else None)
    if not experiment:
        raise ValueError(f"the `{names.MLFLOW_RESOURCE}` resource needs an MLflow experiment: give the job the tag "
                         f"{names.MLFLOW_EXPERIMENT_TAG}=<model> or the resource's experiment_name")
    uri = config["mlflow_tracking_uri"]
    tracker = _tracker_for(uri, config.pop("artifact_root"))
    tracker.experiment_id(experiment)  # at the platform's artifact location
    _end_leftover_run(context, tracker)
    config["experiment_name"] = experiment
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=BetaWarning)  # dagster-mlflow is marked beta
        owner = mlflow_tracking.resource_fn(context.replace_config(config))
        yield from _keeping_the_run_open_at_exit(owner)


def _end_leftover_run(context: InitResourceContext, tracker: Any) -> None:
    """End the MLflow run an earlier Dagster run left active in this thread, with that run's outcome.

    In one long-lived process (the in-process executor: ``mlplatform demo``, tests) a run whose last step in
    topological order did not run (skipped) leaves its MLflow run active, and dagster-mlflow would adopt it
    for the next Dagster run ("already active") and tag it with that run's id.
    """
    import mlflow

    from mlplatform.lib.tracking import ended_status

    active = mlflow.active_run()
    if active is None:
        return
    earlier = tracker.run(active.info.run_id).data.tags.get("dagster_run_id")
    if earlier == context.run_id:
        return  # this Dagster run's own (an earlier step in this process opened it)
    record = context.instance.get_run_by_id(earlier) if earlier and context.instance else None
    mlflow.end_run(status=ended_status(record.status.value if record else None))


def _keeping_the_run_open_at_exit(owner: Iterator[Any]) -> Iterator[Any]:
    """dagster-mlflow unregisters ``mlflow.end_run`` from ``atexit`` so a step process's exit does not end the
    run the other steps share; MLflow 3 registers ``_safe_end_run`` instead, so without this every step process
    would end the run FINISHED as it exits (a FAILED one too, when a parallel step exits after the failure)."""
    import atexit

    from mlflow.tracking import fluent

    resource = next(owner)
    atexit.unregister(fluent._safe_end_run)  # noqa: SLF001 - the function MLflow 3 registers
    yield resource
    yield from owner


def _end_mlflow_on_run_finished(context: Any, event_list: Any) -> Any:
    if getattr(context.resources, names.MLFLOW_RESOURCE) is None:  # the run trains nothing: no MLflow run to end
        from dagster import HookExecutionResult

        return HookExecutionResult(hook_name="end_mlflow_on_run_finished", is_skipped=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=BetaWarning)  # dagster-mlflow is marked beta
        from dagster_mlflow import end_mlflow_on_run_finished

    return end_mlflow_on_run_finished.hook_fn(context, event_list)


end_mlflow_run = HookDefinition(
    name="end_mlflow_on_run_finished", hook_fn=_end_mlflow_on_run_finished,
    required_resource_keys={names.MLFLOW_RESOURCE}, decorated_fn=_end_mlflow_on_run_finished,
)
"""dagster-mlflow's ``end_mlflow_on_run_finished``, called through when a step ends (imported then, not at load)."""


def owning_run_id(tracker: Any, dagster_run_id: str) -> str | None:
    """The MLflow run dagster-mlflow's resource opened for this Dagster run: the hook makes every step of a
    training job initialize the resource, which leaves that run active in the step's thread (the resource itself
    is not in the step's ``context.resources``: Dagster gives a step only the resources its own definition
    requires). None in a job without the resource (e.g. an ad-hoc materialization): then the tracker opens and
    closes the parent itself."""
    return tracker.active_run_of(dagster_run_id)
