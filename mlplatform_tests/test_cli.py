"""The README's commands, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlplatform.cli import main
from mlplatform.lib.settings import REPO_DIR
from mlplatform_tests.conftest import TOY_SPEC, toy_rows


def test_validate_lists_problems_and_exits_nonzero(home, spec_dir, capsys):
    spec_dir({"toy.yaml": TOY_SPEC.replace("target: y", "target: yy")}, {"toy.csv": toy_rows()})
    assert main(["validate"]) == 1
    assert "target: found 'yy', which is not a column of source toy.csv" in capsys.readouterr().err


def test_validate_ok(home, spec_dir, capsys):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    assert main(["validate"]) == 0
    assert "ok  toy" in capsys.readouterr().out


@pytest.mark.slow
def test_readme_main_command_runs_end_to_end_from_a_clean_home(tmp_path):
    env = {**os.environ, "MLPLATFORM_HOME": str(tmp_path / "state")}
    env.pop("MLPLATFORM_SPECS", None)
    result = subprocess.run(
        [sys.executable, "dev.py", "demo"], cwd=REPO_DIR, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    out = result.stdout
    assert "== bike_demand: weeks 2010-12-27..2011-12-26, run succeeded" in out
    assert "data: 8645 raw rows, 8645 feature rows" in out
    assert "== car_loan: weeks 2018-01-01..2019-08-26, run succeeded" in out
    assert "data: 100000 raw rows, 100000 feature rows" in out
    assert "52 weeks trained" in out and "86 weeks trained" in out
    assert "week         rows version      rmse  absolute_threshold beat_champion      prediction_sanity  aliases" in out
    assert "2011-12-26    142" in out
    assert "python3 dev.py ui" in out and "python3 dev.py mlflow-ui" in out
    state = tmp_path / "state"
    assert (state / "warehouse.duckdb").exists() and (state / "mlflow" / "mlflow.db").exists()
    assert (state / "dagster" / "dagster.yaml").exists()
    assert not (REPO_DIR / "mlruns").exists()
