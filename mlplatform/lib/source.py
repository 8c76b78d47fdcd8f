"""Reading a model's source file and cutting it into weekly partitions.

Time convention (documented in the README): every event time is converted to
UTC and stored as a naive UTC timestamp. Naive source timestamps are read in
the spec's ``source.timezone`` (default UTC); tz-aware ones are converted.
Weeks are UTC weeks starting Monday 00:00 and include their start, exclude
their end: Sunday 23:59:59 belongs to the week before Monday 00:00.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from stat import S_ISREG

import pandas as pd

from mlplatform.specs import ModelSpec
from mlplatform.specs.files import (  # noqa: F401 (re-exported)
    SNAPSHOT_TIME_COLUMN,
    SourceFileError,
    checked_data_path,
    is_parquet,
    read_options,
    source_columns,
)
from mlplatform.specs.schema import DEFAULT_NULL_VALUES
from mlplatform.specs.timestamps import parse_event_times, timestamp_problems  # noqa: F401 (re-exported)

_SOURCE_CACHE: dict[tuple, pd.DataFrame] = {}


def read_source(path: Path, null_values: list[str] | tuple[str, ...] = DEFAULT_NULL_VALUES) -> pd.DataFrame:
    """The whole source file, cached per (path, mtime, size, null tokens) so a backfill of many weeks reads it once.

    A CSV cell is missing only when it is exactly one of ``null_values`` (the spec's ``source.null_values``).
    """
    stat = path.stat()
    if not S_ISREG(stat.st_mode):  # checked at spec load too; the file may have been replaced since
        raise SourceFileError(f"{path} is not a regular file; allowed: a CSV or Parquet file")
    cache_key = (str(path), stat.st_mtime_ns, stat.st_size, tuple(null_values))
    if cache_key not in _SOURCE_CACHE:
        _SOURCE_CACHE.clear()
        try:
            frame = pd.read_parquet(path) if is_parquet(path) else pd.read_csv(path, low_memory=False,
                                                                                  **read_options(null_values))
        except pd.errors.EmptyDataError:  # checked at spec load too; the file may have been emptied since
            raise SourceFileError(f"{path} is empty; expected a header line with the column names") from None
        _SOURCE_CACHE[cache_key] = frame
    return _SOURCE_CACHE[cache_key].copy()


def to_utc_naive(values: pd.Series, timezone: str = "UTC", fmt: str | None = None, unit: str | None = None) -> pd.Series:
    """Parse event times to naive UTC; unparseable values become NaT (reported, never guessed).

    Values with an offset (``+02:00``, ``Z``) are converted to UTC; naive values are read in
    ``timezone``. In a column that mixes both, naive values are read as UTC. ``fmt`` (strftime) and
    ``unit`` (epoch ``s``/``ms``) come from the spec; see :mod:`mlplatform.specs.timestamps`.
    """
    return parse_event_times(values, timezone, fmt, unit)


@dataclass(frozen=True)
class Window:
    """A half-open UTC time window [start, end) of whole weeks."""

    start: datetime
    end: datetime

    def week_starts(self) -> list[date]:
        weeks, current = [], self.start.date()
        while datetime.combine(current, datetime.min.time()) < self.end:
            weeks.append(current)
            current += timedelta(days=7)
        return weeks


def rows_in_window(frame: pd.DataFrame, time_column: str, window: Window) -> pd.DataFrame:
    times = frame[time_column]
    mask = (times >= pd.Timestamp(window.start)) & (times < pd.Timestamp(window.end))
    return frame.loc[mask].reset_index(drop=True)


def rows_per_week(frame: pd.DataFrame, time_column: str, window: Window) -> dict[str, int]:
    """Row count of every week the window overlaps, zeros included, keyed by the week's Monday (ISO date).

    A window may start mid-week (the rows a week's training reads reach back ``recent_days``, e.g. to a
    Saturday): its weeks are still the Monday weeks rows are keyed by, the first one partly covered.
    """
    first_monday = window.start.date() - timedelta(days=window.start.weekday())
    weeks = Window(datetime.combine(first_monday, datetime.min.time()), window.end).week_starts()
    counts = {week.isoformat(): 0 for week in weeks}
    if len(frame):
        mondays = frame[time_column].dt.normalize() - pd.to_timedelta(frame[time_column].dt.weekday, unit="D")
        for monday, count in mondays.value_counts().items():
            key = monday.date().isoformat()
            if key in counts:
                counts[key] = int(count)
    return counts


def weeks_with_rows(spec: ModelSpec, weeks: list[str]) -> list[str]:
    """The weeks (Monday ISO dates) among ``weeks`` that hold at least one source row, for running only those.

    Reads the source through the same cache as the raw asset, so an in-process run that follows reads it once.
    """
    if not spec.source.timestamp:
        return list(weeks)
    frame = read_source(checked_data_path(spec.source_path, spec.spec_file.parent), spec.source.null_values)
    times = to_utc_naive(frame[spec.source.timestamp], spec.source.timezone, spec.source.timestamp_format,
                         spec.source.timestamp_unit).dropna()
    mondays = set((times.dt.normalize() - pd.to_timedelta(times.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d"))
    return [week for week in weeks if week in mondays]


def contiguous_ranges(weeks: list[str], keep: list[str]) -> list[tuple[str, str]]:
    """The runs of consecutive ``weeks`` that are in ``keep``, as (first, last): one run each."""
    ranges: list[tuple[str, str]] = []
    kept = set(keep)
    start = previous = None
    for week in weeks:
        if week in kept:
            start = start or week
            previous = week
        elif start is not None:
            ranges.append((start, previous))
            start = None
    if start is not None:
        ranges.append((start, previous))
    return ranges
