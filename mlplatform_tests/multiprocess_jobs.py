"""Jobs for tests that run each step in its own process: the step processes load this file by path (the test
package is not installed), and build the code location from the environment the test set."""

from __future__ import annotations

from dagster import JobDefinition, multiprocess_executor


def toy_pipeline_in_processes() -> JobDefinition:
    """The toy model's pipeline job with the multiprocess executor (a process per step, as on Kubernetes a pod)."""
    from mlplatform.definitions import build_definitions

    return build_definitions().resolve_job_def("toy_pipeline").with_executor_def(multiprocess_executor)


def two_independent_ops_tracked() -> JobDefinition:
    """dagster-mlflow's documented pattern with the platform's `mlflow` resource: two independent ops, the
    resource and `end_mlflow_on_run_finished`, one process per step and one step at a time, the op that comes
    last in topological order first (by priority). Tracking URI and home come from the environment."""
    from dagster import job, op

    from mlplatform.defs.mlflow_run import end_mlflow_run, mlflow_run_resource
    from mlplatform.lib.settings import load_settings

    @op(required_resource_keys={"mlflow"}, tags={"dagster/priority": "0"})
    def first_in_order(context) -> None:
        context.resources.mlflow.log_param("first", "yes")

    @op(required_resource_keys={"mlflow"}, tags={"dagster/priority": "10"})
    def last_in_order(context) -> None:
        context.resources.mlflow.log_param("last", "yes")

    resource = mlflow_run_resource(load_settings()).configured({"experiment_name": "hook-order"})

    @job(resource_defs={"mlflow": resource}, hooks={end_mlflow_run},
         executor_def=multiprocess_executor.configured({"max_concurrent": 1}))
    def two_independent_ops() -> None:
        first_in_order()
        last_in_order()

    return two_independent_ops
