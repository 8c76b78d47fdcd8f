"""mlplatform used as a library: a built wheel in a fresh environment, a team's `dg` project, the team's dbt project.

The wheel test builds the package as a team would install it and runs everything from that environment, in folders
outside this checkout, so nothing can come from the source tree by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import yaml
from dagster import AssetKey

from mlplatform.lib.settings import REPO_DIR, load_settings
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.specs import SpecError
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, materialized_partitions, run_weeks, warehouse_query
from mlplatform_tests.services import free_port, http_ok, spawn, stop_process, wait_for

VENV_BIN = Path(sys.executable).parent

TEAM_SPEC = """
name: hotel
task: regression
description: Nightly revenue per booking (a toy)
owner: team:hotel
source:
  path: bookings.csv
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
"""


def source_copy(destination: Path) -> Path:
    """The checkout's tracked and new files (what a release would build from), without .venv, state or git."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_DIR, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_DIR / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def team_project(root: Path, module: str) -> Path:
    """A team's `dg` project (the layout `create-dagster project` writes; create-dagster is not in the lock)."""
    package = root / "src" / module
    (package / "defs").mkdir(parents=True)
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
    return root


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_a_built_wheel_in_a_fresh_environment_runs_a_teams_dg_project_without_a_dbt_project(tmp_path):
    # The wheel, built offline from a copy of the checkout (a build writes build/ and *.egg-info beside the source).
    source = source_copy(tmp_path / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("mlplatform-*.whl"))

    # A fresh environment: the locked dependencies, then the wheel alone (uv's cache makes this quick).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    uv = [str(VENV_BIN / "uv"), "pip", "install", "--quiet", "--python", str(python)]
    subprocess.run([*uv, "-r", str(REPO_DIR / "requirements.lock")], check=True, timeout=900)
    subprocess.run([*uv, "--no-deps", str(wheel)], check=True, timeout=300)
    installed = Path(subprocess.run([str(python), "-c", "import mlplatform, os; print(os.path.dirname(mlplatform.__file__))"],
                                    cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip())
    assert installed.is_relative_to(venv) and (installed / "dbt_project" / "dbt_project.yml").is_file()
    package_files = files_under(installed)

    project = team_project(tmp_path / "team", "hotel_ml")
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLPLATFORM_", "PYTHON", "DAGSTER_", "VIRTUAL_ENV"))}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv),
            "PYTHONPATH": str(project / "src"), "MLPLATFORM_HOME": str(home), "DAGSTER_HOME": str(tmp_path / "dagster"),
            "MLPLATFORM_DBT_PROJECT_DIR": str(tmp_path / "no-dbt-project-here")}  # nothing stages: none is needed
    (tmp_path / "dagster").mkdir()

    def run(*command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / command[0]), *command[1:]], cwd=project, env=env,
                              capture_output=True, text=True, timeout=timeout)

    scaffold = run("dg", "scaffold", "defs", "mlplatform.ModelLifecycle", "hotel")
    assert scaffold.returncode == 0, scaffold.stdout + scaffold.stderr
    defs_yaml = project / "src" / "hotel_ml" / "defs" / "hotel" / "defs.yaml"
    scaffolded = yaml.safe_load(defs_yaml.read_text())
    assert scaffolded["type"] == "mlplatform.ModelLifecycle" and scaffolded["attributes"]["name"] == "hotel"
    # The team fills in the spec and puts its data beside it.
    defs_yaml.write_text(yaml.safe_dump({"type": scaffolded["type"], "attributes": yaml.safe_load(TEAM_SPEC)},
                                        sort_keys=False))
    toy_rows().to_csv(defs_yaml.parent / "bookings.csv", index=False)
    project_files = files_under(project)

    check = run("dg", "check", "yaml")
    assert check.returncode == 0, check.stdout + check.stderr
    listed = run("dg", "list", "defs", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    keys = {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]}
    assert {"hotel/raw", "hotel/features", "hotel/model", "hotel/drift"} <= keys and "hotel/staged" not in keys

    tags = json.dumps({"dagster/asset_partition_range_start": "2024-01-01",
                       "dagster/asset_partition_range_end": "2024-01-15"})
    materialized = run("dagster", "job", "execute", "-m", "hotel_ml.definitions", "-j", "hotel_pipeline",
                       "--tags", tags, timeout=900)
    assert materialized.returncode == 0, (materialized.stdout + materialized.stderr)[-4000:]

    tracker = Tracker.under(home / "mlflow")
    assert tracker.alias_version("hotel", CHAMPION) is not None  # approval: auto, every gate passed
    assert (home / "warehouse.duckdb").is_file()
    # Nothing was written into the installed package or the team's repository (no dbt target/logs, no state).
    assert files_under(installed) == package_files
    assert files_under(project) == project_files
    weeks = warehouse_query(home, "select distinct week from hotel.evaluations order by week")["week"]
    assert [str(w)[:10] for w in weeks] == ["2024-01-08", "2024-01-15"]  # week 1 has no earlier weeks to train on

    # The CLI reads the components' specs from the project's defs folder: validate, then serve the champion.
    env["MLPLATFORM_SPECS"] = str(project / "src" / "hotel_ml" / "defs")
    validated = run("mlplatform", "validate")
    assert validated.returncode == 0 and "ok  hotel" in validated.stdout, validated.stdout + validated.stderr
    port = free_port()
    server = spawn([str(venv / "bin" / "mlplatform"), "serve", "--port", str(port), "--log-level", "warning"],
                   tmp_path / "serve.log", env, project)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 180, "mlplatform serve", server,
                 tmp_path / "serve.log")
        record = {"x1": 3.0, "x2": 0.5, "color": "red"}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/models/hotel/predict", json={"records": [record]}, timeout=30)
        assert answer.status_code == 200, answer.text
        served = answer.json()
        assert served["predictions"][0]["prediction"] == pytest.approx(2 * 3.0 + 0.5, abs=0.5)  # y = 2 x1 + x2
    finally:
        stop_process(server)
    assert files_under(installed) == package_files


TEAM_DBT_PROJECT = {
    "dbt_project.yml": """
        name: team_staging
        version: "1.0.0"
        config-version: 2
        profile: team_staging
        model-paths: ["models"]
        macro-paths: ["macros"]
        vars:
          min_time: "1900-01-01 00:00:00"
          max_time: "2100-01-01 00:00:00"
        models:
          team_staging:
            +materialized: incremental
            +incremental_strategy: delete+insert
            +unique_key: week_start
    """,
    "profiles.yml": """
        team_staging:
          target: local
          outputs:
            local:
              type: duckdb
              path: "{{ env_var('MLPLATFORM_WAREHOUSE') }}"
              threads: 1
    """,
    "macros/generate_schema_name.sql": """
        {% macro generate_schema_name(custom_schema_name, node) -%}
            {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
        {%- endmacro %}
    """,
    "models/sources.yml": """
        version: 2
        sources:
          - name: toy
            schema: toy
            tables:
              - name: raw
    """,
    "models/stg_toy.sql": """
        {{ config(schema='toy', alias='staged') }}
        select
            cast(ts as timestamp)                                   as ts,
            cast(date_trunc('week', cast(ts as timestamp)) as date) as week_start,
            id, x1, x2, upper(color) as color, y
        from {{ source('toy', 'raw') }}
        where ts >= cast('{{ var("min_time") }}' as timestamp) and ts < cast('{{ var("max_time") }}' as timestamp)
    """,
    "models/stg_toy.yml": """
        version: 2
        models:
          - name: stg_toy
            columns:
              - {name: ts}
              - {name: week_start}
              - {name: id}
              - {name: x1}
              - {name: x2}
              - {name: color}
              - {name: y}
    """,
}

STAGED_TOY_SPEC = TOY_SPEC.replace("  color: {categories: [red, green, blue]}\n", "") + "staging:\n  dbt_model: stg_toy\n"


def write_team_dbt_project(folder: Path) -> Path:
    for name, text in TEAM_DBT_PROJECT.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    return folder


def test_specs_without_staging_need_no_dbt_project_and_a_staged_one_names_the_setting(home, spec_dir, monkeypatch,
                                                                                      tmp_path):
    monkeypatch.setenv("MLPLATFORM_DBT_PROJECT_DIR", str(tmp_path / "missing"))
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    defs = load_definitions()
    assert "dbt" not in (defs.resources or {})
    spec_dir({"toy.yaml": STAGED_TOY_SPEC}, {"toy.csv": toy_rows()})
    broken = load_definitions().resolve_assets_def(AssetKey(["spec_errors", "no_team", "toy"]))  # the others would load
    assert "`staging.dbt_model`: no dbt project at" in broken.specs_by_key[AssetKey(["spec_errors", "no_team", "toy"])].description
    monkeypatch.setenv("MLPLATFORM_STRICT_SPECS", "1")
    with pytest.raises(SpecError, match=r"staging.dbt_model: no dbt project at .*missing: .*MLPLATFORM_DBT_PROJECT_DIR"):
        load_definitions()
    assert not (home / "dbt" / "projects").exists()


@pytest.mark.slow
def test_a_spec_stages_through_the_teams_dbt_project_with_manifest_and_logs_under_home(home, spec_dir, instance,
                                                                                       monkeypatch, tmp_path):
    dbt_folder = write_team_dbt_project(tmp_path / "team_dbt")
    monkeypatch.setenv("MLPLATFORM_DBT_PROJECT_DIR", str(dbt_folder))
    spec_dir({"toy.yaml": STAGED_TOY_SPEC}, {"toy.csv": toy_rows()})
    before = files_under(dbt_folder)
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", "2024-01-08", ["raw", "staged", "features"]).success
    assert materialized_partitions(instance, ["toy", "staged"]) == {"2024-01-01", "2024-01-08"}
    staged = warehouse_query(home, "select distinct color from toy.staged order by color")["color"].tolist()
    assert staged == ["BLUE", "GREEN", "RED"]  # the team's SQL ran, not the bundled project's
    manifest = load_settings().dbt_manifest_path
    assert manifest.is_file() and manifest.is_relative_to(home)
    assert list(manifest.parent.glob("dbt.log")), sorted(p.name for p in manifest.parent.iterdir())
    assert files_under(dbt_folder) == before  # no target/, logs/ or anything else in the team's repository


def test_the_cli_reads_the_specs_of_a_dg_projects_components_and_skips_other_components(home, tmp_path):
    from mlplatform.specs import declared_names, load_spec_named

    defs = tmp_path / "defs"
    (defs / "hotel").mkdir(parents=True)
    (defs / "hotel" / "defs.yaml").write_text(yaml.safe_dump({"type": "mlplatform.ModelLifecycle",
                                                               "attributes": yaml.safe_load(TEAM_SPEC)}))
    toy_rows().to_csv(defs / "hotel" / "bookings.csv", index=False)  # relative to the defs.yaml, as for the component
    (defs / "reports").mkdir()
    (defs / "reports" / "defs.yaml").write_text("type: dagster.DefsFolderComponent\nattributes: {}\n")
    (defs / "toy.yaml").write_text(TOY_SPEC)
    toy_rows().to_csv(defs / "toy.csv", index=False)
    assert declared_names(defs) == {"toy": defs / "toy.yaml", "hotel": defs / "hotel" / "defs.yaml"}
    spec = load_spec_named(defs, "hotel")
    assert spec.source_path == defs / "hotel" / "bookings.csv" and spec.spec_file == (defs / "hotel" / "defs.yaml")
