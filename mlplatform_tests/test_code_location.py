"""The code location loads the way `dagster dev` loads it, in a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlplatform.lib.settings import REPO_DIR
from mlplatform_tests.conftest import TOY_SPEC, toy_rows


def validate(tmp_path: Path, specs: Path | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLPLATFORM_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           **extra_env}
    (tmp_path / "dagster").mkdir(exist_ok=True)
    env.pop("MLPLATFORM_SPECS", None)
    if specs is not None:
        env["MLPLATFORM_SPECS"] = str(specs)
    return subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )


@pytest.mark.slow
def test_workspace_loads_bundled_examples_without_warnings(tmp_path):
    result = validate(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "All code locations passed validation" in result.stdout
    ours = [line for line in result.stdout.splitlines() if "Warning" in line and "definitions_validate_command" not in line]
    assert ours == []


@pytest.mark.slow
def test_bad_spec_stops_the_location_with_every_problem(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    toy_rows().to_csv(specs / "toy.csv", index=False)
    (specs / "toy.yaml").write_text(TOY_SPEC.replace("task: regression", "task: regresion").replace("target: y", "target: yy"))
    result = validate(tmp_path, specs, MLPLATFORM_STRICT_SPECS="1")  # strict: any broken spec stops the load
    assert result.returncode != 0
    assert "toy.yaml: task: found 'regresion'; allowed: regression, binary, multiclass" in result.stdout
    result = validate(tmp_path, specs)  # by default the location loads, the broken file shown as spec_errors
    assert result.returncode == 0, result.stdout[-3000:]
    assert "toy.yaml: task: found 'regresion'; allowed: regression, binary, multiclass" in result.stdout


def test_automation_follows_the_spec_schedule_monday_0100_utc_and_a_drift_sensor_only_for_on_drift(home, spec_dir):
    from dagster import AssetKey, DefaultScheduleStatus, DefaultSensorStatus

    from mlplatform_tests.helpers import load_definitions

    folder = spec_dir({"toy.yaml": TOY_SPEC + "owner: team:risk\n"}, {"toy.csv": toy_rows()})
    defs = load_definitions()
    schedule = defs.resolve_schedule_def("toy_weekly_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 1 * * 1", "UTC")
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    weekly = {key.path[-1] for key in defs.resolve_job_def("toy_weekly").asset_layer.executable_asset_keys}
    production = {"labels", "live_performance", "shadow_report"}  # the week's outcomes, joined to what was served
    assert weekly == {"raw", "features", "drift", *production}  # retrain: on_drift, the default: the model waits for a sensor
    sensor = defs.resolve_sensor_def("toy_retrain_on_drift")
    assert sensor.default_status == DefaultSensorStatus.RUNNING and sensor.minimum_interval_seconds == 30
    model = defs.resolve_assets_def(AssetKey(["toy", "model"])).specs_by_key[AssetKey(["toy", "model"])]
    assert model.owners == ["team:risk"] and {"mlflow", "scikit-learn"} <= set(model.kinds)
    features = defs.resolve_assets_def(AssetKey(["toy", "features"]))
    schema = features.specs_by_key[AssetKey(["toy", "features"])].metadata["dagster/column_schema"]
    columns = {column.name: column for column in schema.columns}
    assert {"ts", "id", "x1", "x2", "color", "y"} <= set(columns)
    assert columns["id"].constraints.unique and not columns["ts"].constraints.nullable
    assert features.op.outs["result"].dagster_type.key == "toy_features"  # the Pandera schema as the output type

    (folder / "toy.yaml").write_text(TOY_SPEC + "automation:\n  weekly_schedule: false\n  retrain: weekly\n")
    defs = load_definitions()
    assert defs.resolve_schedule_def("toy_weekly_schedule").default_status == DefaultScheduleStatus.STOPPED
    weekly = {key.path[-1] for key in defs.resolve_job_def("toy_weekly").asset_layer.executable_asset_keys}
    assert weekly == {"raw", "features", "drift", *production, "model", "evaluation", "backtest"}
    assert not [s for s in defs.sensors or [] if s.name == "toy_retrain_on_drift"]
