"""Data gates: the source contract for raw weeks and the Pandera schema for features.

Both return plain reports (passed + facts a person reads in the UI) so the
Dagster layer only decides where to show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from mlplatform.lib.source import Window, rows_per_week, timestamp_problems, to_utc_naive
from mlplatform.lib.table_schemas import describe_columns, schema_problems
from mlplatform.specs import ModelSpec
from mlplatform.specs.timestamps import SAMPLE_VALUES

SAMPLE_ROWS = 5


@dataclass
class GateReport:
    """Outcome of a data gate: whether it passed, a one-line reason, and details for the UI."""

    passed: bool
    summary: str
    problems: list[dict[str, Any]] = field(default_factory=list)
    sample_rows: pd.DataFrame | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def as_category_text(values: pd.Series) -> pd.Series:
    """Categories compared as text, with integral numbers written without '.0' (1.0 -> '1') and nulls kept."""
    if pd.api.types.is_bool_dtype(values):
        return values.map({True: "True", False: "False"}).astype(object)
    text = pd.Series(np.full(len(values), None, dtype=object), index=values.index)  # nulls stay None
    if pd.api.types.is_numeric_dtype(values):
        present = values.astype("float64").dropna()
        if present.eq(np.floor(present)).all():
            text[present.index] = present.astype("int64").astype(str).to_numpy(dtype=object)
        else:
            text[present.index] = [repr(float(v)) for v in present]
    else:  # vectorised str(): a Python call per row was a measurable share of a week (docs/benchmarks.md)
        present = values.notna()
        text[present] = values[present].astype(str).to_numpy(dtype=object)
    return text


def category_text(value: Any) -> str:
    """The text form of one declared category, matching :func:`as_category_text`."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class EventTimeReport:
    """How the source's event times parsed, over the whole file: what the raw gate needs beyond one window."""

    rows: int
    unparsed: int
    unparsed_examples: list[str]
    problems: list[str]
    first: pd.Timestamp | None
    last: pd.Timestamp | None

    @property
    def unparsed_share(self) -> float:
        return self.unparsed / self.rows if self.rows else 0.0


def parse_source_times(frame: pd.DataFrame, spec: ModelSpec) -> EventTimeReport:
    """Parse the event time column in place (naive UTC) and report what did not parse or looks wrong.

    The silent-wrong-answer checks (day-first/month-first ambiguity, epoch numbers) run on up to
    ``SAMPLE_VALUES`` rows spread over the whole file, so a late change of format is seen too.
    """
    source, column = spec.source, spec.time_column
    raw = frame[column]
    present = raw.dropna()
    step = max(1, len(present) // SAMPLE_VALUES)
    problems = timestamp_problems(present.iloc[::step], column, source.timezone, source.timestamp_format,
                                  source.timestamp_unit)
    frame[column] = to_utc_naive(raw, source.timezone, source.timestamp_format, source.timestamp_unit)
    unparsed = frame[column].isna()
    placed = frame.loc[~unparsed, column]
    return EventTimeReport(
        rows=len(frame),
        unparsed=int(unparsed.sum()),
        unparsed_examples=[str(v) for v in raw[unparsed].drop_duplicates().head(SAMPLE_ROWS)],
        problems=problems,
        first=placed.min() if len(placed) else None,
        last=placed.max() if len(placed) else None,
    )


def check_source_week(frame: pd.DataFrame, spec: ModelSpec, window: Window, required_columns: list[str],
                      times: EventTimeReport | None = None) -> GateReport:
    """Does the raw data for this window have the columns the spec needs, numbers where numbers are due,
    and event times that parse (``times``: over the whole file)?

    ``frame`` is the window's rows as read, with the event time already parsed.
    """
    problems: list[dict[str, Any]] = []
    if times is not None:
        for problem in times.problems:
            problems.append({"column": spec.time_column, "check": "event times parse one way", "failures": 1,
                             "examples": problem})
        if times.unparsed_share > spec.source.max_unparsed_share:
            problems.append({"column": spec.time_column, "check": "event times parse", "failures": times.unparsed,
                             "examples": ", ".join(repr(e) for e in times.unparsed_examples)
                             + f" ({times.unparsed} of {times.rows} source rows, share {times.unparsed_share:.3g} "
                             f"> source.max_unparsed_share {spec.source.max_unparsed_share:g})"})
    bad_rows = pd.Series(False, index=frame.index)
    missing = [c for c in required_columns if c not in frame.columns]
    for column in missing:
        problems.append({"column": column, "check": "column present", "failures": len(frame),
                         "examples": f"column {column!r} is missing from the source"})
    for column in spec.numeric_columns:
        if column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
            parsed = pd.to_numeric(frame[column], errors="coerce")
            not_numbers = parsed.isna() & frame[column].notna()
            if not_numbers.any():
                bad_rows |= not_numbers
                examples = frame.loc[not_numbers, column].astype(str).unique()[:5].tolist()
                problems.append({"column": column, "check": "numeric values", "failures": int(not_numbers.sum()),
                                 "examples": ", ".join(repr(e) for e in examples)})
    counts = rows_per_week(frame, spec.time_column, window)
    empty_weeks = [week for week, count in counts.items() if count == 0]
    notes = [empty_week_note(week, spec, times) for week in empty_weeks]
    if empty_weeks and len(empty_weeks) == len(counts):  # nothing at all to store: the run fails these weeks
        problems += [{"column": "(rows)", "check": "week has rows", "failures": 1, "examples": note} for note in notes]
    summary = "source rows are complete and readable" if not problems else "; ".join(
        f"{p['column']}: {p['check']} failed ({p['failures']})" for p in problems[:6]
    )
    facts: dict[str, Any] = {"rows_per_week": counts, "missing_columns": missing, "empty_weeks": empty_weeks}
    if notes:
        facts["empty_week_notes"] = notes
    present = [c for c in required_columns if c in frame.columns and c != spec.time_column]
    facts["null_cells"] = {c: int(frame[c].isna().sum()) for c in present if frame[c].isna().any()}
    if times is not None:
        facts["unparsed_timestamps"] = times.unparsed
        facts["unparsed_timestamp_share"] = round(times.unparsed_share, 6)
    return GateReport(
        passed=not problems,
        summary=summary,
        problems=problems,
        sample_rows=frame.loc[bad_rows].head(SAMPLE_ROWS) if bad_rows.any() else None,
        facts=facts,
    )


def empty_week_note(week: str, spec: ModelSpec, times: EventTimeReport | None) -> str:
    """Why a week has no rows, as far as the source tells: its event-time span, and the fix when the data ended."""
    note = f"week {week} has no rows in the source"
    if times is not None and times.first is not None and times.last is not None:
        note += f" (its event times run from {times.first:%Y-%m-%d %H:%M} to {times.last:%Y-%m-%d %H:%M})"
        if pd.Timestamp(week) > times.last:
            end = (times.last.normalize() - pd.Timedelta(days=times.last.weekday()) + pd.Timedelta(days=7)).date()
            note += f"; if the data ended, set partitions.end: {end} in {spec.spec_file.name}"
    elif times is not None:
        note += " (no event time in the source parses)"
    return note


def coerce_numeric_columns(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Numeric spec columns as float64, once :func:`check_source_week` has shown they parse."""
    frame = frame.copy()
    for column in spec.numeric_columns:
        if column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def features_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """The Pandera schema of the features table, generated from the spec (dtypes, nullability, categories, ranges, key)."""
    columns: dict[str, pa.Column] = {
        spec.time_column: pa.Column("datetime64[ns]", nullable=False, description="Event time (UTC).")
    }
    for key in spec.source.key:
        if key != spec.time_column:
            columns[key] = pa.Column(nullable=False, description="Row key.")
    for name in spec.fairness.sensitive if spec.fairness is not None else []:
        columns[name] = _column(spec, name, "sensitive", default_nullable=False)
    for name in spec.features.numeric:
        columns[name] = _column(spec, name, "numeric", default_nullable=True)
    for name in spec.features.categorical:
        columns[name] = _column(spec, name, "categorical", default_nullable=True)
    for name in spec.features.text:
        columns[name] = _column(spec, name, "text", default_nullable=True)
    target_kind = "numeric" if spec.task == "regression" else "label"
    columns[spec.target] = _column(spec, spec.target, target_kind, default_nullable=False)
    return pa.DataFrameSchema(
        columns,
        unique=spec.source.key or None,
        strict=False,
        name=f"{spec.name}_features",
        description=f"Modelling table of {spec.name}: one row per event, features and target '{spec.target}'.",
    )


def _column(spec: ModelSpec, name: str, kind: str, default_nullable: bool) -> pa.Column:
    rules = spec.columns.get(name)
    nullable = default_nullable if rules is None or rules.nullable is None else rules.nullable
    checks: list[pa.Check] = []
    if rules is not None and rules.min is not None:
        checks.append(pa.Check.ge(rules.min, error=f"value >= {rules.min}"))
    if rules is not None and rules.max is not None:
        checks.append(pa.Check.le(rules.max, error=f"value <= {rules.max}"))
    if rules is not None and rules.categories is not None:
        allowed = sorted({category_text(c) for c in rules.categories})
        checks.append(
            pa.Check(lambda s, allowed=allowed: as_category_text(s).isin(allowed) | s.isna(),
                     element_wise=False, error=f"value in {allowed}", name="isin")
        )
    role = {"numeric": "Numeric feature", "categorical": "Categorical feature", "text": "Free-text feature",
            "label": "Target",
            "sensitive": "Sensitive attribute (not a feature)"}[kind]
    if name == spec.target:
        role = "Target"
    dtype: Any = "float64" if kind == "numeric" else (str if kind in ("categorical", "text") else None)
    return pa.Column(dtype, checks=checks, nullable=nullable, coerce=kind == "numeric", description=role)


def to_features_frame(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The modelling columns in schema order, categoricals as text; missing columns stay missing for the gate to name."""
    present = [c for c in spec.modelling_columns if c in frame.columns]
    table = frame[present].copy()
    for name in spec.features.categorical:
        if name in table.columns:
            table[name] = as_category_text(table[name])
    for name in spec.features.text:
        if name in table.columns:
            text = table[name]
            table[name] = text.astype(str).astype(object).where(text.notna(), None)
    return table


def validate_features(frame: pd.DataFrame, spec: ModelSpec, window: Window) -> tuple[pd.DataFrame | None, GateReport]:
    """Validate lazily so the report lists every failing column and check at once, not the first one."""
    schema = features_schema(spec)
    counts = rows_per_week(frame, spec.time_column, window) if spec.time_column in frame.columns else {}
    facts: dict[str, Any] = {
        "rows": len(frame),
        "target_null_share": float(frame[spec.target].isna().mean()) if spec.target in frame.columns and len(frame) else None,
        "rows_per_week": counts,
    }
    empty_weeks = [week for week, count in counts.items() if count == 0]
    facts["empty_weeks"] = empty_weeks
    if empty_weeks:
        facts["empty_week_notes"] = [f"week {week} has no rows (none upstream); the other weeks proceed"
                                     for week in empty_weeks]
    # A week without rows fails only a run that has no week with rows: the weeks that have data proceed.
    problems: list[dict[str, Any]] = [
        {"column": "(rows)", "check": "week has rows", "failures": 1, "examples": f"week {week} has no rows"}
        for week in empty_weeks
    ] if empty_weeks and len(empty_weeks) == len(counts) else []
    infinite = _non_finite_problems(frame, spec)
    problems += infinite
    sample = None
    validated = None
    try:
        validated = schema.validate(frame, lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
        problems += schema_problems(errors)
        row_index = pd.to_numeric(cases["index"], errors="coerce").dropna().astype(int).unique()
        sample = frame.loc[frame.index.intersection(row_index)].head(SAMPLE_ROWS)
    if infinite and sample is None:  # the rows holding the infinities, so a person sees them
        numeric = [c for c in spec.numeric_columns if c in frame.columns]
        as_numbers = frame[numeric].apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        sample = frame.loc[np.isinf(as_numbers).any(axis=1)].head(SAMPLE_ROWS)
    if problems:
        summary = "; ".join(f"{p['column']}: {p['check']} ({p['failures']} failures)" for p in problems[:6])
        return None, GateReport(passed=False, summary=summary, problems=problems,
                                sample_rows=sample if sample is not None and len(sample) else None, facts=facts)
    return validated, GateReport(passed=True, summary=f"{len(frame)} rows match the schema", facts=facts)


def _non_finite_problems(frame: pd.DataFrame, spec: ModelSpec) -> list[dict[str, Any]]:
    """inf/-inf in a numeric column ('inf' in a CSV parses as a number): named with the weeks they fall in.

    Pandera's float checks let them through, and one infinity turns a model's metrics into NaN.
    """
    problems = []
    for column in spec.numeric_columns:
        if column not in frame.columns:
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        infinite = np.isinf(numbers.to_numpy(dtype="float64", na_value=np.nan))
        if not infinite.any():
            continue
        weeks = ""
        if spec.time_column in frame.columns:
            times = frame.loc[infinite, spec.time_column]
            mondays = (times.dt.normalize() - pd.to_timedelta(times.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d")
            weeks = " in weeks " + ", ".join(f"{week} ({count})" for week, count in mondays.value_counts().sort_index().items())
        values = ", ".join(sorted({str(v) for v in numbers[infinite]}))
        problems.append({"column": column, "check": "finite numbers", "failures": int(infinite.sum()),
                         "examples": f"{values}{weeks}"})
    return problems


def schema_columns(spec: ModelSpec) -> list[dict[str, Any]]:
    """Column facts (name, type, description, constraints) of the features table for the UI's column schema."""
    return describe_columns(features_schema(spec))
