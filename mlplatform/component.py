"""mlplatform as a Dagster Component library: :class:`ModelLifecycle`, one model's whole lifecycle from its spec.

A team adds a model to its own Dagster project with
``dg scaffold defs mlplatform.ModelLifecycle churn`` and fills in ``defs.yaml``: the
component's attributes are the model spec (:class:`~mlplatform.specs.ModelSpec`, the single
schema), so ``dg check yaml``, ``dg list defs`` and the UI's docs tab know every key. The
platform's own code location (``definitions.py``) is the same component applied to each spec
file in ``MLPLATFORM_SPECS``: a folder of specs is a list of components.
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import BetaWarning, in_process_executor, multiprocess_executor
from dagster.components.scaffold.scaffold import ScaffoldRequest, scaffold_with

from mlplatform import names
from mlplatform.lib.settings import Settings, configure_process, load_settings
from mlplatform.specs import ModelSpec, SpecError, check_spec


def _model_name(folder_name: str) -> str:
    """A valid model name from the scaffolded folder's name (``Churn-v2`` -> ``churn_v2``)."""
    name = re.sub(r"[^a-z0-9_]", "_", folder_name.lower()).strip("_") or "model"
    return name if name[0].isalpha() else f"m_{name}"


class ModelLifecycleScaffolder(dg.Scaffolder):
    """``dg scaffold defs mlplatform.ModelLifecycle churn`` writes a spec to fill in, not an empty mapping."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        dg.scaffold_component(request, {
            "name": _model_name(Path(request.target_path).name),
            "description": "What the model predicts, for whom (shown on every asset)",
            "owner": "team:your-team",
            "task": "binary",
            "source": {"path": "data.parquet", "timestamp": "event_time", "key": ["customer_id"]},
            "target": "churned",
            "features": {"numeric": ["tenure_months", "monthly_charges"], "categorical": ["contract"]},
            "partitions": {"start": "2024-01-01", "training_window_weeks": 8},
            "rollout": {"approval": "manual"},
        })


@scaffold_with(ModelLifecycleScaffolder)
class ModelLifecycle(dg.Component):
    """A tabular model's lifecycle as Dagster assets: weekly raw data, optional dbt staging, Pandera-typed
    features, a model per week in MLflow with evaluation, gates and aliases, a backtest, drift monitoring,
    a weekly schedule and retraining on drift. The attributes are the model spec (docs/spec-reference.md);
    relative data paths are relative to the folder of this ``defs.yaml``."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    @classmethod
    def get_model_cls(cls) -> type[ModelSpec]:
        return ModelSpec

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        return dg.ComponentTypeSpec(owners=["team:mlplatform"], tags=["ml", "mlflow", "duckdb", "dbt", "pandera"])

    @classmethod
    def load(cls, attributes: Any, context: dg.ComponentLoadContext) -> ModelLifecycle:
        """Validate ``defs.yaml`` as a spec file is validated: the data file, columns and estimator too (and the dbt
        model's columns, only for a spec with ``staging``: a team that stages nothing needs no dbt project)."""
        from mlplatform.defs.dbt_project import dbt_columns

        if attributes is None:
            raise SpecError([])
        spec = attributes.model_copy(update={"spec_file": (context.path / "defs.yaml").resolve()})
        problems = check_spec(spec, dbt_columns(load_settings()))
        if problems:
            raise SpecError(problems)
        return cls(spec)

    def build_defs(self, context: dg.ComponentLoadContext | None = None) -> dg.Definitions:
        return model_definitions(self.spec, platform_settings())


def model_definitions(spec: ModelSpec, settings: Settings) -> dg.Definitions:
    """Every asset, job, schedule and sensor of one model, with the platform's shared resources."""
    from mlplatform.defs.approval import build_approval_jobs
    from mlplatform.defs.audit_assets import build_audit_trail_spec
    from mlplatform.defs.automation import build_decay_sensor, build_jobs, build_retrain_sensor, build_schedule
    from mlplatform.defs.canary import build_canary_job, build_canary_sensor
    from mlplatform.defs.data_assets import build_features_asset, build_raw_asset
    from mlplatform.defs.drift_assets import build_drift_assets
    from mlplatform.defs.model_assets import build_model_assets
    from mlplatform.defs.production_assets import build_production_assets
    from mlplatform.defs.serving_assets import build_prediction_log_spec

    with warnings.catch_warnings():
        # Single-run backfills (what makes `--partition-range` one run) and the Pandera Dagster type are
        # marked beta; the warning would greet every user at every load without telling them anything.
        warnings.filterwarnings("ignore", category=BetaWarning, message=".*(backfill_policy|pandera_schema_to_dagster_type"
                                "|allow_nonexistent_upstream_partitions).*")
        assets = [build_raw_asset(spec)]
        if spec.staging is not None:
            from mlplatform.defs.dbt_project import platform_dbt_project, prepare_manifest
            from mlplatform.defs.staging import build_staged_assets

            project = platform_dbt_project(settings)
            prepare_manifest(project)
            assets.append(build_staged_assets(spec, project))
        assets += [build_features_asset(spec), build_model_assets(spec), build_prediction_log_spec(spec),
                   build_drift_assets(spec), build_production_assets(spec),
                   build_audit_trail_spec(spec)]
        if spec.scoring.batch:
            from mlplatform.defs.scoring_assets import build_scores_asset

            assets.append(build_scores_asset(spec))
        pipeline, retrain, weekly, production = build_jobs(spec)
        approve, rollback = build_approval_jobs(spec)
        # Weekly-retrained models are retrained by the schedule; the drift sensor serves `retrain: on_drift`.
        sensors = [build_retrain_sensor(spec, retrain)] if spec.automation.retrain == "on_drift" else []
        sensors.append(build_decay_sensor(spec, retrain, rollback))
        if spec.team_name:  # the team as a tag of every asset (owners come from the spec already): the UI filters on it
            from mlplatform.defs.metadata import team_tags

            tags = team_tags(spec)
            assets = dg.map_asset_specs(lambda asset: asset.merge_attributes(tags=tags), assets)
        canary = build_canary_job(spec)
        sensors.append(build_canary_sensor(spec, canary))
    return dg.Definitions(
        assets=assets, jobs=[pipeline, retrain, weekly, production, approve, rollback, canary],
        schedules=[build_schedule(spec, weekly, settings.weekly_schedule_cron)], sensors=sensors,
        resources={**platform_resources(settings), **(dbt_resource(settings) if spec.staging is not None else {})},
        # One process by default: DuckDB allows one writer per file, and in-process steps skip a process start each.
        # With the PostgreSQL warehouse, MLPLATFORM_EXECUTOR=multiprocess runs each step in its own process.
        executor=multiprocess_executor if settings.executor == "multiprocess" else in_process_executor,
    )


def platform_settings() -> Settings:
    """The settings of this process, read and applied (a code location is an entry point, like the CLI)."""
    settings = load_settings()
    configure_process(settings)
    return settings


@functools.cache
def platform_resources(settings: Settings) -> dict[str, Any]:
    """The resources every model shares, built once per settings: Dagster merges the definitions of many
    components only when their resources are the very same objects."""
    from mlplatform.defs.mlflow_run import mlflow_run_resource
    from mlplatform.defs.resources import ModelRegistry, PlatformState, Warehouse, WarehouseIOManager

    warehouse, wait = str(settings.warehouse_path), settings.warehouse_wait_seconds
    return {
        "io_manager": WarehouseIOManager(database=warehouse, wait_seconds=wait, backend=settings.warehouse_backend),
        "warehouse": Warehouse(database=warehouse, wait_seconds=wait),
        "model_registry": ModelRegistry.from_settings(settings),
        "platform": PlatformState(home=str(settings.home)),
        names.MLFLOW_RESOURCE: mlflow_run_resource(settings),
    }


@functools.cache
def dbt_resource(settings: Settings) -> dict[str, Any]:
    """``dbt``, for the models that stage through dbt only: the others need no dbt project (built once per settings,
    the same object for every component that stages)."""
    from dagster_dbt import DbtCliResource

    from mlplatform.defs.dbt_project import platform_dbt_project

    project = platform_dbt_project(settings)
    return {"dbt": DbtCliResource(project_dir=project, profiles_dir=str(project.profiles_dir))}
