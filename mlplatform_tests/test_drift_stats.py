"""Our drift verdicts equal Evidently's DataDriftPreset on the same data: same test, same score, same verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.lib.drift import THRESHOLDS, dataset_drift, profile_reference
from mlplatform_tests.evidently_reference import evidently_columns, evidently_drifted


def assert_agrees(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str]) -> dict:
    ours = dataset_drift(profile_reference(reference, numerical, categorical), current, max_drifted_share=0.3)
    theirs = evidently_columns(reference, current, numerical, categorical)
    assert {c.column for c in ours.columns} == set(theirs)
    for column in ours.columns:
        method, score = theirs[column.column]
        assert column.method == method, column.column
        assert column.score == pytest.approx(score, rel=1e-7, abs=1e-12), column.column
        assert column.drifted == evidently_drifted(method, score, THRESHOLDS[method]), column.column
    return {c.column: c for c in ours.columns}


def synthetic(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "shifted": rng.normal(shift, 1, n), "steady": rng.normal(0, 1, n), "few": rng.integers(0, 4, n).astype(float),
        "binary_num": rng.integers(0, 2, n).astype(float),
        "color": rng.choice(["red", "green", "blue"], n), "flag": rng.choice(["y", "n"], n),
    })


NUMERICAL, CATEGORICAL = ["shifted", "steady", "few", "binary_num"], ["color", "flag"]


@pytest.mark.parametrize(("reference_rows", "current_rows"), [(800, 600), (5000, 3000)])
def test_known_shift_in_one_column_only(reference_rows, current_rows):
    verdicts = assert_agrees(synthetic(reference_rows, 7), synthetic(current_rows, 8, shift=0.8), NUMERICAL, CATEGORICAL)
    assert verdicts["shifted"].drifted
    assert not any(v.drifted for name, v in verdicts.items() if name != "shifted")
    expected_method = "K-S p_value" if reference_rows <= 1000 else "Wasserstein distance (normed)"
    assert verdicts["shifted"].method == expected_method


def test_car_loan_before_and_after_april_2019(shared_dataset):
    frame = pd.read_csv(shared_dataset("car_loan.csv.gz"), parse_dates=["timestamp"])
    frame["repaid_loan_on_prev_car"] = frame["repaid_loan_on_prev_car"].astype(str)
    numerical = ["car_value", "debt_to_income_ratio", "loan_length", "driver_tenure"]
    categorical = ["salary_range", "repaid_loan_on_prev_car", "size_of_downpayment"]
    reference = frame[(frame.timestamp >= "2019-01-07") & (frame.timestamp < "2019-03-04")]  # 8 weeks, > 1000 rows
    calm = frame[(frame.timestamp >= "2019-03-04") & (frame.timestamp < "2019-03-11")]
    drifted = frame[(frame.timestamp >= "2019-05-06") & (frame.timestamp < "2019-05-13")]
    assert not any(v.drifted for v in assert_agrees(reference, calm, numerical, categorical).values())
    after = assert_agrees(reference, drifted, numerical, categorical)
    assert after["car_value"].drifted and after["repaid_loan_on_prev_car"].drifted
    small_reference = reference.sample(900, random_state=0)  # the <= 1000-row tests
    assert_agrees(small_reference, drifted, numerical, categorical)


def test_bikeshare_weeks(shared_dataset):
    frame = pd.read_csv(shared_dataset("bikeshare.csv.gz"), parse_dates=["date"])
    numerical, categorical = ["temp", "hum", "windspeed", "hr"], ["weathersit", "season", "workingday"]
    frame[["season", "workingday"]] = frame[["season", "workingday"]].astype(str)
    reference = frame[(frame.date >= "2011-01-03") & (frame.date < "2011-02-28")]  # 8 weeks, > 1000 rows
    winter = frame[(frame.date >= "2011-02-28") & (frame.date < "2011-03-07")]
    summer = frame[(frame.date >= "2011-07-04") & (frame.date < "2011-07-11")]
    assert_agrees(reference, winter, numerical, categorical)
    verdicts = assert_agrees(reference, summer, numerical, categorical)
    assert verdicts["temp"].drifted and verdicts["season"].drifted
    assert_agrees(reference.iloc[:700], summer, numerical, categorical)


def test_reference_is_the_champions_window_only_when_it_ended_by_the_week():
    from datetime import datetime

    from mlplatform.lib.drift import reference_span

    week = datetime(2024, 3, 4)
    champion = (datetime(2024, 1, 1), datetime(2024, 2, 26))
    assert reference_span(week, 8, champion, "3") == (*champion, "training window of champion v3")
    later = (datetime(2024, 1, 8), datetime(2024, 3, 11))
    assert reference_span(week, 8, later, "4")[:2] == (datetime(2024, 1, 8), week)
    assert reference_span(week, 8, None)[:2] == (datetime(2024, 1, 8), week)
