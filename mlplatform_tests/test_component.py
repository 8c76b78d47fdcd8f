"""mlplatform as a Dagster Component library: a team's own `dg` project with one defs.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform_tests.conftest import toy_rows
from mlplatform_tests.helpers import QUIET, materialized_partitions

DEFS_YAML = """
type: mlplatform.ModelLifecycle

attributes:
  name: churn
  task: regression
  source:
    path: toy.csv
    timestamp: ts
    key: [id]
  target: y
  features:
    numeric: [x1, x2]
    categorical: [color]
  partitions:
    start: 2024-01-01
    end: 2024-01-22
  estimator:
    class: sklearn.linear_model.Ridge
  rollout:
    approval: auto
    auto_promote: immediate  # champion at once: this test is not about the canary stage (test_canary.py)
"""


def scratch_project(root: Path, module: str) -> Path:
    """A components-ready Dagster project, as `dg scaffold project` lays it out, with the churn component.

    Each test names its own package: Python caches imported modules by name.
    """
    package = root / "src" / module
    (package / "defs" / "churn").mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "{module}"
        version = "0.0.1"

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "{module}"
        defs_module = "{module}.defs"
    """))
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(textwrap.dedent("""
        from pathlib import Path

        import dagster as dg


        @dg.definitions
        def defs() -> dg.Definitions:
            return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    """))
    component = package / "defs" / "churn"
    (component / "defs.yaml").write_text(DEFS_YAML)
    toy_rows().to_csv(component / "toy.csv", index=False)
    return root


def test_a_defs_yaml_in_a_scratch_project_loads_and_materializes_a_week(home, tmp_path, instance, monkeypatch):
    project = scratch_project(tmp_path / "scratch", "scratch_load")
    monkeypatch.syspath_prepend(str(project / "src"))
    defs = dg.load_from_defs_folder(path_within_project=project / "src" / "scratch_load")
    assert {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()} == {
        "churn/raw", "churn/features", "churn/model", "churn/evaluation", "churn/backtest", "churn/drift",
        "churn/prediction_log", "churn/labels", "churn/live_performance", "churn/shadow_report", "churn/audit_trail"}
    job = defs.resolve_job_def("churn_pipeline")
    assert job.execute_in_process(instance=instance, tags={"dagster/asset_partition_range_start": "2024-01-01",
                                                           "dagster/asset_partition_range_end": "2024-01-08"},
                                  run_config=QUIET).success
    assert materialized_partitions(instance, ["churn", "model"]) == {"2024-01-08"}
    assert Tracker.under(home / "mlflow").alias_version("churn", CHAMPION) == "1"


def test_a_defs_yaml_with_a_missing_data_file_fails_to_load_naming_the_key(home, tmp_path, monkeypatch):
    project = scratch_project(tmp_path / "scratch", "scratch_bad")
    defs_yaml = project / "src" / "scratch_bad" / "defs" / "churn" / "defs.yaml"
    defs_yaml.write_text(DEFS_YAML.replace("path: toy.csv", "path: nothere.csv"))
    monkeypatch.syspath_prepend(str(project / "src"))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - Dagster wraps the component's own error
        dg.load_from_defs_folder(path_within_project=project / "src" / "scratch_bad")
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("source.path: file" in text and "nothere.csv does not exist" in text for text in chain), chain


@pytest.mark.slow
def test_dg_lists_scaffolds_and_checks_the_component(home, tmp_path):
    project = scratch_project(tmp_path / "scratch", "scratch")
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    dg_cli = [str(Path(sys.executable).parent / "dg")]

    def dg_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*dg_cli, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)

    scaffold = dg_run("scaffold", "defs", "mlplatform.ModelLifecycle", "Fraud-Score")
    assert scaffold.returncode == 0, scaffold.stderr
    scaffolded = yaml.safe_load((project / "src" / "scratch" / "defs" / "Fraud-Score" / "defs.yaml").read_text())
    assert scaffolded["type"] == "mlplatform.ModelLifecycle"
    assert scaffolded["attributes"]["name"] == "fraud_score" and scaffolded["attributes"]["task"] == "binary"
    (project / "src" / "scratch" / "defs" / "Fraud-Score" / "defs.yaml").unlink()  # its data file does not exist

    (project / "src" / "scratch" / "defs" / "churn" / "defs.yaml").write_text(
        DEFS_YAML.replace("task: regression", "task: regresion"))
    check = dg_run("check", "yaml")
    assert check.returncode != 0 and "'regresion' is not one of ['regression', 'binary', 'multiclass']" in (
        check.stdout + check.stderr)

    (project / "src" / "scratch" / "defs" / "churn" / "defs.yaml").write_text(DEFS_YAML)
    listed = dg_run("list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "churn/model" in listed.stdout and "churn_retrain_on_drift" in listed.stdout
