"""The data gates as pure functions, fast: every kind of bad delivery is named with its column and check.

One end-to-end run per gate lives in test_data_assets.py; here each case costs milliseconds.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from mlplatform.lib.source import Window, rows_in_window
from mlplatform.lib.validation import check_source_week, coerce_numeric_columns, to_features_frame, validate_features
from mlplatform.specs import ModelSpec
from mlplatform_tests.conftest import toy_rows

WEEK2 = Window(datetime(2024, 1, 8), datetime(2024, 1, 15))
SPEC = ModelSpec.model_validate({
    "name": "toy", "task": "regression", "source": {"path": "toy.csv", "timestamp": "ts", "key": ["id"]},
    "target": "y", "features": {"numeric": ["x1", "x2"], "categorical": ["color"]},
    "columns": {"x1": {"min": 0, "max": 10}, "color": {"categories": ["red", "green", "blue"]}},
    "partitions": {"start": "2024-01-01", "end": "2024-01-22"},
})
REQUIRED = [SPEC.time_column, *SPEC.modelling_columns]


def week2(scenario: str | None = None) -> pd.DataFrame:
    """Week 2's raw rows as the raw asset sees them (event time parsed), with one kind of damage."""
    frame = toy_rows().assign(ts=lambda f: pd.to_datetime(f["ts"]))
    rows = rows_in_window(frame, "ts", WEEK2)
    bad = rows.index[3]
    if scenario == "missing column":
        rows = rows.drop(columns=["x2"])
    elif scenario == "wrong dtype":
        rows["x2"] = rows["x2"].astype(object)
        rows.loc[bad, "x2"] = "abc"
    elif scenario == "out of range":
        rows.loc[bad, "x1"] = 50.0
    elif scenario == "null target":
        rows.loc[bad, "y"] = None
    elif scenario == "unknown category":
        rows.loc[bad, "color"] = "purple"
    elif scenario == "duplicate key":
        rows.loc[bad, "id"] = rows.loc[bad - 1, "id"]
    elif scenario == "empty week":
        rows = rows.iloc[0:0]
    elif scenario == "infinite number":
        rows.loc[bad, "x2"] = np.inf
    return rows


def features_report(rows: pd.DataFrame):
    return validate_features(to_features_frame(coerce_numeric_columns(rows, SPEC), SPEC), SPEC, WEEK2)


def test_clean_week_passes_both_gates():
    rows = week2()
    assert check_source_week(rows, SPEC, WEEK2, REQUIRED).passed
    validated, report = features_report(rows)
    assert report.passed and validated is not None and len(validated) == len(rows)


@pytest.mark.parametrize(("scenario", "column", "check"), [
    ("missing column", "x2", "column present"),
    ("wrong dtype", "x2", "numeric values"),
    ("empty week", "(rows)", "week has rows"),
])
def test_raw_gate_names_the_column_and_the_check(scenario, column, check):
    report = check_source_week(week2(scenario), SPEC, WEEK2, REQUIRED)
    assert not report.passed
    assert any(p["column"] == column and p["check"] == check for p in report.problems), report.problems
    assert report.summary
    if scenario == "wrong dtype":
        assert report.sample_rows is not None and "abc" in report.sample_rows["x2"].tolist()


@pytest.mark.parametrize(("scenario", "column", "check"), [
    ("out of range", "x1", "value <= 10.0"),
    ("null target", "y", "not_nullable"),
    ("unknown category", "color", "value in ['blue', 'green', 'red']"),
    ("duplicate key", "id", "uniqueness"),
    ("infinite number", "x2", "finite"),
])
def test_features_gate_names_the_column_and_the_check_and_shows_the_rows(scenario, column, check):
    validated, report = features_report(week2(scenario))
    assert validated is None and not report.passed
    assert any(p["column"] == column and check in p["check"] for p in report.problems), report.problems
    assert report.sample_rows is not None and len(report.sample_rows) >= 1
