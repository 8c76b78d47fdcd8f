"""Event times: parsing them one declared way, and refusing columns that would parse silently wrong.

Time convention (README): every event time becomes naive UTC. Naive values are read in the spec's
``source.timezone``; values with an offset are converted. Without ``source.timestamp_format`` the
parser guesses per value, which is where wrong answers hide: ``01/02/2024`` is 1 February in one
row and 2 January in the next, and epoch seconds become instants of 1970. Those columns are refused
with examples until the spec says how to read them. Lives in the spec layer because validation
checks a sample of the file; ``lib.source`` uses the same functions at run time.
"""

from __future__ import annotations

import re

import pandas as pd

SAMPLE_VALUES = 10_000
"""Values of the time column checked at validate (the raw gate checks the whole file)."""

PLAUSIBLE = (pd.Timestamp("1971-01-01"), pd.Timestamp("2200-01-01"))
"""Event times outside this range are parse accidents (epoch numbers read as nanoseconds), not data."""

_DAY_MONTH = re.compile(r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2,4})\b")
_NUMBER = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")
_OFFSET = r"(?:Z|[+-]\d\d:?\d\d)$"


def parse_event_times(values: pd.Series, timezone: str = "UTC", fmt: str | None = None,
                      unit: str | None = None) -> pd.Series:
    """Event times as naive UTC; a value that does not parse becomes NaT (counted by the raw gate, never guessed)."""
    if unit is not None:
        numbers = pd.to_numeric(values, errors="coerce")
        parsed = pd.to_datetime(numbers, unit=unit, errors="coerce", utc=True)
    elif pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    elif fmt is not None:
        aware = "%z" in fmt or "%Z" in fmt
        parsed = pd.to_datetime(values.astype("string"), format=fmt, errors="coerce", utc=aware)
    else:
        text = values.astype("string")
        has_offset = text.str.contains(_OFFSET, regex=True, na=False).any()
        parsed = pd.to_datetime(values, errors="coerce", utc=bool(has_offset), format="mixed")
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    return parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")


def _examples(values: pd.Series, n: int = 3) -> str:
    return ", ".join(repr(str(v)) for v in values.drop_duplicates().head(n))


def timestamp_problems(values: pd.Series, column: str, timezone: str = "UTC", fmt: str | None = None,
                       unit: str | None = None) -> list[str]:
    """What would make this time column parse silently wrong, each naming the column, examples and the fix."""
    return checked_event_times(values, column, timezone, fmt, unit)[0]


def checked_event_times(values: pd.Series, column: str, timezone: str = "UTC", fmt: str | None = None,
                        unit: str | None = None) -> tuple[list[str], pd.Series | None]:
    """:func:`timestamp_problems`, and the present values parsed (None when the checks stopped before parsing):
    validate reuses them instead of parsing the sample twice."""
    present = values.dropna()
    if present.empty or pd.api.types.is_datetime64_any_dtype(present):
        return [], None
    problems: list[str] = []
    text = present.astype(str)
    if unit is None:
        # the head first: a column of dates fails there, without one regex per value of the whole sample
        numeric = pd.api.types.is_numeric_dtype(present) or bool(
            text.head(20).str.match(_NUMBER).all() and text.str.match(_NUMBER).all())
        if numeric:
            return [f"column {column!r} holds numbers ({_examples(text)}), not dates; if they are epoch times set "
                    "source.timestamp_unit: s (seconds) or ms (milliseconds)"], None
        if fmt is None:
            day_month = text[text.str.match(_DAY_MONTH)]
            if len(day_month):
                month_first = pd.to_datetime(day_month, format="mixed", dayfirst=False, errors="coerce")
                day_first = pd.to_datetime(day_month, format="mixed", dayfirst=True, errors="coerce")
                ambiguous = month_first.notna() & day_first.notna() & (month_first != day_first)
                if ambiguous.any():
                    problems.append(
                        f"column {column!r} has dates that read differently day-first and month-first "
                        f"({_examples(day_month[ambiguous])}: {int(ambiguous.sum())} of {len(present)} values); "
                        "set source.timestamp_format, e.g. '%d/%m/%Y %H:%M' or '%m/%d/%Y %H:%M'"
                    )
    parsed = parse_event_times(present, timezone, fmt, unit)
    if fmt is not None or unit is not None:
        unparsed = parsed.isna()
        if unparsed.all():
            how = f"source.timestamp_format {fmt!r}" if fmt is not None else f"source.timestamp_unit {unit!r}"
            problems.append(f"no value of column {column!r} parses with {how} (e.g. {_examples(text)})")
            return problems, parsed
    placed = parsed.dropna()
    odd = (placed < PLAUSIBLE[0]) | (placed >= PLAUSIBLE[1])
    if odd.any():
        shown = _examples(text[odd.reindex(text.index, fill_value=False)])
        problems.append(
            f"column {column!r} has values that land outside {PLAUSIBLE[0]:%Y}..{PLAUSIBLE[1]:%Y} "
            f"({shown} -> {placed[odd].min():%Y-%m-%d %H:%M:%S}); "
            + ("check source.timestamp_unit (s or ms)" if unit else
               "set source.timestamp_unit for epoch numbers or source.timestamp_format")
        )
    return problems, parsed
