"""The Dagster code location: one asset group per model spec in ``MLPLATFORM_SPECS``.

Read top to bottom: settings -> dbt manifest -> specs -> assets per spec -> resources.
A bad spec raises :class:`mlplatform.specs.SpecError` here, so the location does not load
and the UI shows every problem, one line each.
"""

from __future__ import annotations

import warnings

from dagster import BetaWarning, Definitions, in_process_executor
from dagster_dbt import DbtCliResource

from mlplatform.defs.automation import build_jobs, build_retrain_sensor, build_schedule
from mlplatform.defs.data_assets import build_features_asset, build_raw_asset
from mlplatform.defs.dbt_project import dbt_project, prepare_manifest
from mlplatform.defs.drift_assets import build_drift_assets
from mlplatform.defs.model_assets import build_model_assets
from mlplatform.defs.resources import ModelRegistry, PlatformState, Warehouse, WarehouseIOManager
from mlplatform.lib.settings import configure_process, load_settings
from mlplatform.specs import ModelSpec, dbt_manifest_columns, load_specs


def build_lifecycle_assets(spec: ModelSpec) -> list:
    """Every asset of one model, in lifecycle order."""
    assets = [build_raw_asset(spec)]
    if spec.staging is not None:
        from mlplatform.defs.staging import build_staged_assets

        assets.append(build_staged_assets(spec))
    assets.append(build_features_asset(spec))
    assets.append(build_model_assets(spec))
    assets.append(build_drift_assets(spec))
    return assets


def build_model_automation(spec: ModelSpec) -> tuple[list, list, list]:
    """Jobs, the weekly schedule and the retrain-on-drift sensor of one model."""
    pipeline, retrain, weekly = build_jobs(spec)
    # Weekly-retrained models are retrained by the schedule; the sensor serves `retrain: on_drift`.
    sensors = [build_retrain_sensor(spec, retrain)] if spec.automation.retrain == "on_drift" else []
    return [pipeline, retrain, weekly], [build_schedule(spec, weekly)], sensors


def build_definitions() -> Definitions:
    settings = load_settings()
    configure_process(settings)  # the code location is an entry point, like the CLI
    manifest = prepare_manifest()
    specs = load_specs(settings.specs_dir, dbt_manifest_columns(manifest))
    with warnings.catch_warnings():
        # Single-run backfills (what makes `--partition-range` one run) and the Pandera Dagster type
        # are marked beta; the warning would greet every user at every load without telling them anything.
        warnings.filterwarnings("ignore", message=".*(backfill_policy|pandera_schema_to_dagster_type|allow_nonexistent_upstream_partitions).*", category=BetaWarning)
        assets = [asset for spec in specs for asset in build_lifecycle_assets(spec)]
    jobs, schedules, sensors = [], [], []
    for spec in specs:
        model_jobs, model_schedules, model_sensors = build_model_automation(spec)
        jobs += model_jobs
        schedules += model_schedules
        sensors += model_sensors
    warehouse, wait = str(settings.warehouse_path), settings.warehouse_wait_seconds
    return Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources={
            "io_manager": WarehouseIOManager(database=warehouse, wait_seconds=wait),
            "warehouse": Warehouse(database=warehouse, wait_seconds=wait),
            "dbt": DbtCliResource(project_dir=dbt_project, profiles_dir=str(dbt_project.profiles_dir)),
            "model_registry": ModelRegistry.from_settings(settings),
            "platform": PlatformState(home=str(settings.home)),
        },
        # One process: DuckDB allows one writer per file, and in-process steps skip ~2 s of process start each.
        executor=in_process_executor,
    )


defs = build_definitions()
