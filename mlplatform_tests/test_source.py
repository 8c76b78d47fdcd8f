"""Week cutting and time conventions (pure functions, milliseconds)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from mlplatform.lib.source import Window, rows_in_window, rows_per_week, to_utc_naive


def test_naive_times_are_read_in_the_spec_timezone_and_stored_as_utc():
    parsed = to_utc_naive(pd.Series(["2024-01-08 00:30:00"]), timezone="Europe/Berlin")
    assert parsed.iloc[0] == pd.Timestamp("2024-01-07 23:30:00")


def test_aware_times_are_converted_to_utc():
    parsed = to_utc_naive(pd.Series(["2024-01-08T00:30:00+02:00", "2024-01-08T00:30:00Z"]))
    assert list(parsed) == [pd.Timestamp("2024-01-07 22:30:00"), pd.Timestamp("2024-01-08 00:30:00")]


def test_unparseable_times_become_nat_not_a_guess():
    parsed = to_utc_naive(pd.Series(["2024-01-08 10:00:00", "yesterday-ish"]))
    assert parsed.isna().tolist() == [False, True]


def test_sunday_night_and_monday_midnight_fall_in_different_weeks():
    frame = pd.DataFrame({"ts": pd.to_datetime(["2024-01-07 23:59:59", "2024-01-08 00:00:00"])})
    first = Window(datetime(2024, 1, 1), datetime(2024, 1, 8))
    second = Window(datetime(2024, 1, 8), datetime(2024, 1, 15))
    assert rows_in_window(frame, "ts", first)["ts"].tolist() == [pd.Timestamp("2024-01-07 23:59:59")]
    assert rows_in_window(frame, "ts", second)["ts"].tolist() == [pd.Timestamp("2024-01-08 00:00:00")]
    both = Window(datetime(2024, 1, 1), datetime(2024, 1, 15))
    assert rows_per_week(frame, "ts", both) == {"2024-01-01": 1, "2024-01-08": 1}


def test_window_lists_its_weeks_including_empty_ones():
    window = Window(datetime(2024, 1, 1), datetime(2024, 1, 22))
    assert rows_per_week(pd.DataFrame({"ts": pd.to_datetime([])}), "ts", window) == {
        "2024-01-01": 0, "2024-01-08": 0, "2024-01-15": 0,
    }
