"""Hostile and careless inputs: specs and data files that try to escape, inject or silently mislead.

Each test names the attack or mistake it keeps out; most are pure (spec loading, source parsing),
and a Dagster run is used only where the behaviour lives in the wiring.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from mlplatform.lib.warehouse import quote_identifier, replace_week_rows
from mlplatform.specs import SpecError, load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query


def injection(marker: Path) -> str:
    return f"true; DROP TABLE IF EXISTS victim.raw; COPY (SELECT 42 AS pwned) TO '{marker}'; SELECT 1 WHERE 'a'"


def problems_for(spec_dir, spec_text: str, data: dict[str, pd.DataFrame] | None = None) -> list[str]:
    folder = spec_dir({"toy.yaml": spec_text}, {"toy.csv": toy_rows()} if data is None else data)
    with pytest.raises(SpecError) as caught:
        load_specs(folder)
    return [str(p) for p in caught.value.problems]


# 1. SQL injection through a column name

def test_sql_in_a_timestamp_column_name_is_refused_at_load_with_the_rule(spec_dir, tmp_path):
    name = injection(tmp_path / "x.csv")
    frame = toy_rows().rename(columns={"ts": name})
    problems = problems_for(spec_dir, TOY_SPEC.replace("timestamp: ts", f'timestamp: "{name}"'), {"toy.csv": frame})
    assert len(problems) == 1, problems
    assert "toy.yaml: source.timestamp: found column name \"true; DROP TABLE" in problems[0]
    assert "allowed: letters A-Z/a-z, digits, '_', ' ', '.' and '-'" in problems[0]


@pytest.mark.parametrize("key", ["target", "features.numeric", "columns"])
def test_sql_in_other_column_names_is_refused(spec_dir, key):
    bad = 'x1"; drop table toy.raw; --'
    text = {
        "target": TOY_SPEC.replace("target: y", f"target: '{bad}'"),
        "features.numeric": TOY_SPEC.replace("numeric: [x1, x2]", f"numeric: ['{bad}', x2]"),
        "columns": TOY_SPEC.replace("x1: {min: 0, max: 10}", f"'{bad}': {{min: 0}}"),
    }[key]
    problems = problems_for(spec_dir, text)
    assert any(f"toy.yaml: {key}" in p and "found column name" in p for p in problems), problems


def test_quoted_identifiers_keep_an_injection_string_a_mere_name(tmp_path):
    marker = tmp_path / "pwned.csv"
    name = injection(marker) + '"; DROP TABLE victim.raw; --'
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        connection.execute("create schema victim; create table victim.raw as select 1 as a")
        frame = pd.DataFrame({name: [pd.Timestamp("2024-01-01")], "v": [1.0]})
        replace_week_rows(connection, "toy", "evaluations", frame, name, [pd.Timestamp("2024-01-01")])
        replace_week_rows(connection, "toy", "evaluations", frame, name, [pd.Timestamp("2024-01-01")])
        assert connection.execute("select count(*) from victim.raw").fetchone() == (1,)
        assert connection.execute(f"select count(*) from toy.evaluations where {quote_identifier(name)} "
                                  "is not null").fetchone() == (1,)
    assert not marker.exists()


def test_a_time_column_with_a_space_runs_end_to_end(home, spec_dir, instance):
    frame = toy_rows(weeks=1).rename(columns={"ts": "event time"})
    spec_dir({"toy.yaml": TOY_SPEC.replace("timestamp: ts", "timestamp: event time").replace("end: 2024-01-22",
                                                                                             "end: 2024-01-08")},
             {"toy.csv": frame})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", assets=["raw", "features"]).success
    assert run_weeks(defs, "toy", instance, "2024-01-01", assets=["raw", "features"]).success  # replaces the week
    stored = warehouse_query(home, 'select count(*) as n from toy.features where "event time" >= \'2024-01-01\'')
    assert stored["n"].item() == len(frame)
