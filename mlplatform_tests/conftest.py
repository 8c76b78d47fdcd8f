"""Shared fixtures: a temp MLPLATFORM_HOME, spec folders with real files, a real Dagster instance."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, instance_for_test

from mlplatform.lib.settings import BUNDLED_SPECS_DIR
from mlplatform_tests.services import mlflow_server, postgres_server, s3_server  # noqa: F401 (fixtures)

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

TOY_SPEC = """
name: toy
task: regression
source:
  path: toy.csv
  timestamp: ts
  key: [id]
target: y
features:
  numeric: [x1, x2]
  categorical: [color]
columns:
  x1: {min: 0, max: 10}
  color: {categories: [red, green, blue]}
partitions:
  start: 2024-01-01
  end: 2024-01-22
"""


def toy_rows(weeks: int = 3, per_week: int = 40, seed: int = 0) -> pd.DataFrame:
    """Clean synthetic rows for the toy spec: weeks from Monday 2024-01-01, a row every few hours."""
    rng = np.random.default_rng(seed)
    n = weeks * per_week
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n) * (7 * 24 * 3600 / per_week), unit="s")
    frame = pd.DataFrame({
        "id": np.arange(n),
        "ts": ts.strftime("%Y-%m-%d %H:%M:%S"),
        "x1": rng.uniform(0, 10, n).round(3),
        "x2": rng.normal(0, 1, n).round(3),
        "color": rng.choice(["red", "green", "blue"], n),
    })
    frame["y"] = (2 * frame["x1"] + frame["x2"] + rng.normal(0, 0.1, n)).round(3)
    return frame


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MLPLATFORM_HOME; the cwd is moved to a temp dir so stray writes would be noticed."""
    state = tmp_path / "home"
    monkeypatch.setenv("MLPLATFORM_HOME", str(state))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return state


@pytest.fixture
def spec_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write a spec folder (YAML text + data frames) and point MLPLATFORM_SPECS at it."""

    def write(specs: dict[str, str], data: dict[str, pd.DataFrame]) -> Path:
        folder = tmp_path / "specs"
        folder.mkdir(exist_ok=True)
        for name, text in specs.items():
            (folder / name).write_text(textwrap.dedent(text))
        for name, frame in data.items():
            if name.endswith(".parquet"):
                frame.to_parquet(folder / name, index=False)
            else:
                frame.to_csv(folder / name, index=False)
        monkeypatch.setenv("MLPLATFORM_SPECS", str(folder))
        return folder

    return write


@pytest.fixture
def bundled_specs(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLPLATFORM_SPECS", str(BUNDLED_SPECS_DIR))
    return BUNDLED_SPECS_DIR


@pytest.fixture
def instance(home: Path) -> Iterator[DagsterInstance]:
    """A real Dagster instance with sqlite storage in a temp dir."""
    with instance_for_test() as dagster_instance:
        yield dagster_instance


@pytest.fixture
def shared_dataset() -> Callable[[str], Path]:
    def find(name: str) -> Path:
        path = SHARED_DATASETS / name
        if not path.exists():
            bundled = BUNDLED_SPECS_DIR / "data" / name
            if bundled.exists():
                return bundled
            pytest.skip(f"{path} is not available")
        return path

    return find


def copy_file(source: Path, folder: Path) -> Path:
    target = folder / source.name
    shutil.copyfile(source, target)
    return target


_WAREHOUSE_DATABASES = iter(range(1, 1_000_000))


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.services)])
def warehouse_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The warehouse a test runs on: the DuckDB file (the fast stage) or a fresh database on the session's real
    PostgreSQL (the serial ``services`` stage), selected as a user does, by ``MLPLATFORM_WAREHOUSE_URL``.
    Modules whose behaviour must hold on both use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    from mlplatform.lib.settings import export_warehouse_url

    if request.param == "duckdb":
        monkeypatch.delenv("MLPLATFORM_WAREHOUSE_URL", raising=False)
        return "duckdb"
    server = request.getfixturevalue("postgres_server")
    url = server.create_database(f"warehouse_{next(_WAREHOUSE_DATABASES)}")
    for name in ("MLPLATFORM_WAREHOUSE_URL", "MLPLATFORM_DBT_TARGET", "MLPLATFORM_PG_HOST", "MLPLATFORM_PG_PORT",
                 "MLPLATFORM_PG_USER", "MLPLATFORM_PG_PASSWORD", "MLPLATFORM_PG_DATABASE"):
        monkeypatch.setenv(name, "")  # restored after the test, whatever export_warehouse_url sets
    export_warehouse_url(url)
    return "postgres"
