"""Outcomes: where they come from (the week's own rows, a team's labels file or table), and each joined with the
prediction the service logged for it.

Reading only; :mod:`mlplatform.lib.live` judges what the joined rows say. Pure functions over frames, no Dagster.
The ``<model>_production`` step reads the files and tables and calls:

- :func:`source_outcomes`, :func:`file_outcomes`, :func:`table_outcomes`, :func:`outcomes_in_window`,
  :func:`outcome_rows`: the week's (or the canary window's) outcomes as ``join_key``, ``y`` and ``time``;
- :func:`match_labels`: each logged prediction of week W's rows with its outcome (on the entity key, else the record
  id the client sent), the latest prediction per row, version and role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.lib.routing import ANSWERED_ROLES, entity_key

JOIN_KEY = "join_key"
LABEL = "y"
RECORD_ID = "_id"
"""The column of a labels file that holds the record id clients sent (specs without ``source.key``)."""
SOURCE_ROW = "_source_row"
"""The row number of a source file's row (what ``mlplatform replay`` sends as ``_id``)."""


def json_ready(value: Any) -> Any:
    """A value as the replay client sends it in JSON (timestamps as ISO text, numpy scalars as Python values)."""
    if isinstance(value, pd.Timestamp | datetime):
        return pd.Timestamp(value).isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def label_join_keys(frame: pd.DataFrame, key_columns: Sequence[str], record_ids: pd.Series | None = None) -> pd.Series:
    """What each outcome row is matched on: ``k:<entity key>`` (as the service computes it), else ``r:<record id>``."""
    if key_columns:
        records = frame[list(key_columns)].astype(object).where(frame[list(key_columns)].notna(), None)
        keys = [entity_key({c: json_ready(v) for c, v in zip(key_columns, row, strict=True)}, key_columns)
                for row in records.itertuples(index=False, name=None)]
        return pd.Series(["k:" + k if k is not None else None for k in keys], index=frame.index, dtype=object)
    if record_ids is None:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    return pd.Series(["r:" + _id_text(v) if v is not None and not pd.isna(v) else None for v in record_ids],
                     index=frame.index, dtype=object)


def _id_text(value: Any) -> str:
    """A record id as the service logs it (``str`` of the JSON value; integral floats as integers)."""
    value = json_ready(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def log_join_keys(logged: pd.DataFrame) -> pd.Series:
    """The same key for logged predictions: the entity key when the client sent the key columns, else its record id."""
    entity = logged["entity_key"].astype(object)
    record = logged["record_id"].astype(object)
    keys = np.where(entity.notna(), "k:" + entity.fillna("").astype(str),
                    np.where(record.notna(), "r:" + record.fillna("").astype(str), None))
    return pd.Series(keys, index=logged.index, dtype=object)


@dataclass
class Matched:
    """Week W's labelled predictions (one row per row, version and role) and what could not be matched."""

    rows: pd.DataFrame
    labels: int
    unmatched_labels: int  # outcomes no answered prediction (champion, canary or batch) was found for
    predictions_without_key: int  # logged rows with neither entity key nor record id: never matchable


def match_labels(logged: pd.DataFrame, labels: pd.DataFrame) -> Matched:
    """Join logged predictions to outcomes on :data:`JOIN_KEY`; a row predicted twice keeps its latest prediction.

    ``labels`` has columns ``join_key`` and ``y``; ``logged`` is :func:`~mlplatform.lib.prediction_log.read_prediction_log`'s
    frame (inputs included when the caller wants to rescore the rows).
    """
    labels = labels.dropna(subset=[JOIN_KEY]).drop_duplicates(JOIN_KEY, keep="last")
    keys = log_join_keys(logged)
    keyed = logged.assign(**{JOIN_KEY: keys})
    without_key = int(keyed[JOIN_KEY].isna().sum())
    keyed = keyed.dropna(subset=[JOIN_KEY])
    latest = keyed.sort_values("time", kind="stable").drop_duplicates([JOIN_KEY, "version", "role"], keep="last")
    rows = latest.merge(labels[[JOIN_KEY, LABEL]], on=JOIN_KEY, how="inner")
    answered = set(rows.loc[rows["role"].isin(ANSWERED_ROLES), JOIN_KEY])
    return Matched(rows.reset_index(drop=True), len(labels), int((~labels[JOIN_KEY].isin(answered)).sum()), without_key)


# --- where outcomes come from ------------------------------------------------------------------------------------

def outcome_rows(frame: pd.DataFrame, key_columns: Sequence[str], target: str, time_column: str,
                 record_ids: pd.Series | None = None, carry: Sequence[str] = ()) -> pd.DataFrame:
    """Outcomes as the join needs them: ``join_key``, ``y`` (the target as found) and ``time`` (the row's event time);
    then the ``carry`` columns the frame holds (the spec's sensitive attributes, for live fairness)."""
    if frame.empty:
        return pd.DataFrame({JOIN_KEY: pd.Series(dtype=object), LABEL: pd.Series(dtype=object),
                             "time": pd.Series(dtype="datetime64[us]")})
    return pd.DataFrame({JOIN_KEY: label_join_keys(frame, key_columns, record_ids).to_numpy(),
                         LABEL: frame[target].to_numpy(), "time": pd.to_datetime(frame[time_column]).to_numpy(),
                         **{c: frame[c].to_numpy() for c in carry if c in frame.columns and c not in (JOIN_KEY, LABEL,
                                                                                                        "time")}})


def carried_columns(spec: Any) -> list[str]:
    """What outcomes carry beside the label when their source holds it: the spec's sensitive attributes."""
    return list(spec.fairness.sensitive) if getattr(spec, "fairness", None) else []


def source_outcomes(spec: Any, window: Any) -> pd.DataFrame:
    """The target of the source file's rows in the window, each with its row number as the record id.

    What ``mlplatform replay`` sends as ``_id`` for a spec without ``source.key``: the row's position in the file.
    """
    from mlplatform.lib.source import checked_data_path, read_source, rows_in_window, to_utc_naive

    frame = read_source(checked_data_path(spec.source_path, spec.spec_file.parent), spec.source.null_values)
    frame[SOURCE_ROW] = np.arange(len(frame))
    if spec.source.timestamp:
        frame[spec.source.timestamp] = to_utc_naive(frame[spec.source.timestamp], spec.source.timezone,
                                                    spec.source.timestamp_format, spec.source.timestamp_unit)
        frame = rows_in_window(frame, spec.source.timestamp, window)
        time_column = spec.source.timestamp
    else:
        from mlplatform.specs.files import SNAPSHOT_TIME_COLUMN

        frame[SNAPSHOT_TIME_COLUMN] = pd.Timestamp(window.start)
        time_column = SNAPSHOT_TIME_COLUMN
    frame = frame[frame[spec.target].notna()]
    return outcome_rows(frame, [], spec.target, time_column, frame[SOURCE_ROW], carried_columns(spec))


def file_outcomes(spec: Any, window: Any) -> pd.DataFrame:
    """Outcomes from ``labels.path``: key columns (or ``_id``), the target and the event-time column."""
    from pathlib import Path

    from mlplatform.lib.source import checked_data_path, read_source, rows_in_window, to_utc_naive

    path = Path(spec.labels.path).expanduser()
    path = checked_data_path(path if path.is_absolute() else spec.spec_file.parent / path, spec.spec_file.parent)
    return outcomes_in_window(spec, read_source(path, spec.source.null_values), window,
                              lambda values: to_utc_naive(values, spec.source.timezone), rows_in_window)


def table_outcomes(spec: Any, connection: Any, window: Any, missing_ok: bool = False) -> pd.DataFrame:
    """Outcomes from ``labels.table`` through an open warehouse connection, as :func:`file_outcomes` reads a file.

    Another model's schema is refused (also a model whose spec is not loaded here). ``missing_ok``: a table not (yet)
    built gives no outcomes instead of an error (the hourly canary analysis judges its other signals meanwhile)."""
    from mlplatform.lib.source import rows_in_window
    from mlplatform.lib.warehouse import model_schemas, table_name
    from mlplatform.specs.reserved import labels_table_problem

    schema, _, table = spec.labels.table.partition(".")  # the spec's pattern guarantees schema.table
    problem = labels_table_problem(spec.labels.table, spec.name, model_schemas(connection))
    if problem:
        raise ValueError(f"{spec.name}: labels.table: {problem}")
    if missing_ok and not connection.execute("select count(*) from information_schema.tables where table_schema = ? "
                                             "and table_name = ?", [schema, table]).fetchone()[0]:
        return outcome_rows(pd.DataFrame(), [], spec.target, "time")
    frame = connection.execute(f"select * from {table_name(schema, table)}").fetchdf()
    return outcomes_in_window(spec, frame, window, pd.to_datetime, rows_in_window)


def outcomes_in_window(spec: Any, frame: pd.DataFrame, window: Any, parse_times, in_window) -> pd.DataFrame:
    """A labels file's or table's rows in the window, checked for the columns the join needs."""
    time_column = spec.labels.timestamp or spec.source.timestamp
    wanted = [time_column, spec.target, *(spec.source.key or [RECORD_ID])]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        where = spec.labels.path or spec.labels.table
        raise ValueError(f"labels {where}: missing column(s) {', '.join(missing)}; it needs {', '.join(wanted)} "
                         f"(the event time, the target, and {'the key columns' if spec.source.key else '`_id`, the record id clients sent'})")
    frame = frame.copy()
    frame[time_column] = parse_times(frame[time_column])
    frame = in_window(frame, time_column, window)
    frame = frame[frame[spec.target].notna()]
    return outcome_rows(frame, spec.source.key, spec.target, time_column,
                        None if spec.source.key else frame[RECORD_ID], carried_columns(spec))
