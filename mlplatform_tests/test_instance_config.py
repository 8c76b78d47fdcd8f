"""The shared mode's Dagster instance config (PostgreSQL, queued runs, a pool per model), checked against Dagster's
own schema, and the pools on every model's assets and ops. The config at work with real servers is in
test_services_dagster.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from dagster import build_schedule_context
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.config_schema import process_workspace_config
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage

from mlplatform.cli import main
from mlplatform.lib.instance_config import (
    HEADER,
    POSTGRES_URL_ENV,
    InstanceConfigError,
    code_server_address,
    shared_instance_config,
    workspace_for_code_server,
)
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions

SECRET_URL = "postgresql+psycopg2://dagster:s3cret-pw@db.internal:5432/dagster"


def test_the_shared_config_has_one_slot_per_model_pool_and_reads_its_defaults_from_the_environment(monkeypatch):
    monkeypatch.delenv("MLPLATFORM_DAGSTER_MAX_CONCURRENT_RUNS", raising=False)
    config = shared_instance_config()
    assert config["concurrency"] == {"pools": {"granularity": "run", "default_limit": 1},
                                     "runs": {"max_concurrent_runs": 4}}
    assert config["storage"] == {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] is True and config["telemetry"] == {"enabled": False}
    monkeypatch.setenv("MLPLATFORM_DAGSTER_MAX_CONCURRENT_RUNS", "12")
    assert shared_instance_config()["concurrency"]["runs"] == {"max_concurrent_runs": 12}
    for bad in ("0", "many"):
        monkeypatch.setenv("MLPLATFORM_DAGSTER_MAX_CONCURRENT_RUNS", bad)
        with pytest.raises(InstanceConfigError, match="MLPLATFORM_DAGSTER_MAX_CONCURRENT_RUNS"):
            shared_instance_config()


def test_code_server_address_and_workspace():
    assert code_server_address({}) == ("127.0.0.1", 4000)
    assert code_server_address({"MLPLATFORM_DAGSTER_CODE_SERVER_HOST": "code", "MLPLATFORM_DAGSTER_CODE_SERVER_PORT":
                                "4266"}) == ("code", 4266)
    with pytest.raises(InstanceConfigError, match="TCP port"):
        code_server_address({"MLPLATFORM_DAGSTER_CODE_SERVER_PORT": "http"})
    workspace = workspace_for_code_server("code", 4266)
    assert process_workspace_config(workspace).success
    assert workspace["load_from"] == [{"grpc_server": {"host": "code", "port": 4266, "location_name": "mlplatform"}}]


def test_prepare_postgres_writes_configs_dagster_accepts_without_the_password(home: Path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # prepare sets it for the process: restored after
    monkeypatch.setenv(POSTGRES_URL_ENV, SECRET_URL)
    monkeypatch.setenv("MLPLATFORM_DAGSTER_CODE_SERVER_PORT", "4123")
    assert main(["prepare", "--instance", "postgres", "--no-pools"]) == 0
    dagster_home = home / "dagster"
    config_text = (dagster_home / "dagster.yaml").read_text()
    assert "s3cret" not in config_text and "db.internal" not in config_text and POSTGRES_URL_ENV in config_text
    assert f"DAGSTER_HOME={dagster_home}" in capsys.readouterr().out

    # Dagster's own loader: schema, the postgres storage fields, the `concurrency` rules; the env var is resolved.
    validated, instance_class = dagster_instance_config(str(dagster_home))
    assert instance_class is None
    postgres = process_config(DagsterPostgresStorage.config_type(), validated["storage"]["postgres"])
    assert postgres.success and postgres.value["postgres_url"] == SECRET_URL  # read from the environment
    assert validated["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    for key in ("run_coordinator", "run_launcher"):  # the classes exist and take their (empty) config
        section = validated[key]
        ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(section.get("config") or {})).rehydrate(
            as_type=object)
    workspace = yaml.safe_load((dagster_home / "workspace.yaml").read_text())
    assert process_workspace_config(workspace).success
    assert workspace["load_from"][0]["grpc_server"]["port"] == 4123

    # Without the URL nothing is written and the message says what to set; an edited file is kept without --force.
    monkeypatch.delenv(POSTGRES_URL_ENV)
    assert main(["prepare", "--instance", "postgres", "--no-pools"]) == 1
    assert f"{POSTGRES_URL_ENV} is not set" in capsys.readouterr().err
    monkeypatch.setenv(POSTGRES_URL_ENV, "postgresql://dagster:s3cret-pw@db.internal:5432/dagster")
    assert main(["prepare", "--instance", "postgres", "--no-pools"]) == 1  # SQLAlchemy 2 would pick psycopg 3: said, with the fix
    error = capsys.readouterr().err
    assert "postgresql+psycopg2://db.internal:5432/dagster" in error and "s3cret" not in error
    monkeypatch.setenv(POSTGRES_URL_ENV, SECRET_URL)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert main(["prepare", "--instance", "postgres", "--no-pools"]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert (dagster_home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    assert main(["prepare", "--instance", "postgres", "--no-pools", "--force"]) == 0
    assert (dagster_home / "dagster.yaml").read_text().startswith(HEADER)

    # The embedded default is untouched by all this: a shared config is kept by plain `prepare` (never downgraded).
    assert main(["prepare"]) == 0
    assert (dagster_home / "dagster.yaml").read_text() == config_text


def test_every_asset_and_op_of_a_model_is_in_that_models_pool(home: Path, spec_dir):
    spec_dir({"toy.yaml": TOY_SPEC, "other.yaml": TOY_SPEC.replace("name: toy", "name: other")},
             {"toy.csv": toy_rows()})
    repository = load_definitions().get_repository_def()
    pools: dict[str, set[str | None]] = {}
    for job in repository.get_all_jobs():
        if job.name.startswith("__"):
            continue
        model = job.name.split("_")[0]
        pools.setdefault(model, set()).update(node.pool for node in job.graph.node_defs)
    assert pools == {"toy": {"mlplatform/toy"}, "other": {"mlplatform/other"}}


def test_a_test_cron_replaces_the_weekly_time_and_still_requests_the_last_complete_week_once(home: Path, spec_dir,
                                                                                             monkeypatch):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    monkeypatch.setenv("MLPLATFORM_WEEKLY_SCHEDULE_CRON", "*/2 * * * *")
    schedule = load_definitions().resolve_schedule_def("toy_weekly_schedule")
    assert schedule.cron_schedule == "*/2 * * * *" and schedule.job_name == "toy_weekly"
    request = schedule(build_schedule_context(scheduled_execution_time=datetime(2024, 1, 17, 9, 2, tzinfo=UTC)))
    assert request.partition_key == "2024-01-08" and request.run_key == "2024-01-08"  # the week that ended last

    monkeypatch.setenv("MLPLATFORM_WEEKLY_SCHEDULE_CRON", "every minute")
    with pytest.raises(ValueError, match="MLPLATFORM_WEEKLY_SCHEDULE_CRON='every minute' is not a cron string"):
        load_definitions()
    monkeypatch.delenv("MLPLATFORM_WEEKLY_SCHEDULE_CRON")
    assert load_definitions().resolve_schedule_def("toy_weekly_schedule").cron_schedule == "0 1 * * 1"  # Mondays 01:00
