"""Choosing the warehouse and the executor by configuration: what is refused, with which words, and what it selects."""

from __future__ import annotations

import pytest

from mlplatform.component import model_definitions
from mlplatform.lib.settings import SettingsError, load_settings
from mlplatform.specs import load_spec_file
from mlplatform_tests.conftest import TOY_SPEC, toy_rows


def test_a_warehouse_url_that_is_not_postgresql_is_refused_without_its_password(monkeypatch):
    monkeypatch.setenv("MLPLATFORM_WAREHOUSE_URL", "mysql://u:secret@db.internal/warehouse")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "secret" not in str(refused.value) and "postgresql://" in str(refused.value)


def test_the_multiprocess_executor_needs_the_postgresql_warehouse(monkeypatch):
    monkeypatch.delenv("MLPLATFORM_WAREHOUSE_URL", raising=False)
    monkeypatch.setenv("MLPLATFORM_EXECUTOR", "multiprocess")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "MLPLATFORM_WAREHOUSE_URL=postgresql://" in str(refused.value) and "DuckDB" in str(refused.value)
    monkeypatch.setenv("MLPLATFORM_EXECUTOR", "threads")
    with pytest.raises(SettingsError, match="in_process, multiprocess"):
        load_settings()


def test_a_models_jobs_run_in_process_by_default_and_in_worker_processes_when_configured(home, spec_dir,
                                                                                          monkeypatch):
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    spec = load_spec_file(folder / "toy.yaml")[0]
    monkeypatch.delenv("MLPLATFORM_EXECUTOR", raising=False)
    monkeypatch.delenv("MLPLATFORM_WAREHOUSE_URL", raising=False)
    default = model_definitions(spec, load_settings()).resolve_job_def("toy_pipeline")
    assert default.executor_def.name == "in_process"
    monkeypatch.setenv("MLPLATFORM_WAREHOUSE_URL", "postgresql://u:p@127.0.0.1:1/warehouse")  # not contacted here
    monkeypatch.setenv("MLPLATFORM_EXECUTOR", "multiprocess")
    worker = model_definitions(spec, load_settings()).resolve_job_def("toy_pipeline")
    assert worker.executor_def.name == "multiprocess"
