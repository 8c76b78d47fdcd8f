"""Batch scoring (``scoring.batch``): the champion's predictions of a week's feature rows, as a table and as log rows.

Most churn and credit models are scored in batches, not over HTTP. The ``<model>/scores`` asset reads week W's
features and the champion, calls :func:`score_week`, writes :attr:`BatchScores.table` to ``<model>.scores`` and
hands :attr:`BatchScores.log_rows` to the prediction log's writer, role ``batch``. From the log on, a batch
prediction is like a served one: live performance joins it with its outcome on the entity key, drift reads its
inputs as production inputs, the audit sees the run. Pure: no Dagster, no files.

Idempotent in the log: a week scored again by the same version has the same request id and record indexes, and the
log's reader counts a (request id, record index, role) once. The rows are stamped with the week's start (not the
moment of scoring), so the weekly steps find them in their week however late a backfill scores it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.lib.outcomes import label_join_keys
from mlplatform.lib.routing import BATCH_ROLE
from mlplatform.lib.training import predict


@dataclass
class BatchScores:
    """Week W scored: the ``<model>.scores`` rows and the prediction-log rows (one per scored row)."""

    table: pd.DataFrame
    log_rows: list[dict[str, Any]]


def batch_request_id(model: str, week: str, version: str) -> str:
    """The log's request id of a week's batch: the same for a rerun by the same version (deduplicated on read)."""
    return f"batch:{model}:{week}:v{version}"


def score_week(spec: Any, pipeline: Any, version: str, rows: pd.DataFrame, week: str,
               scored_at: datetime) -> BatchScores:
    """Score ``rows`` (week W's features) with ``pipeline`` (version ``version``, the champion).

    Outputs follow the service's conventions (:mod:`mlplatform.serving.models`): ``score`` is the value, the
    probability of the positive class (binary) or the class index (multiclass); ``label`` the predicted value or
    class as text; ``probabilities`` class -> probability for classifiers.
    """
    key, time_column = list(spec.source.key), spec.time_column
    rows = rows.sort_values([time_column, *key], kind="stable").reset_index(drop=True)
    week_start = pd.Timestamp(week)
    if rows.empty:
        return BatchScores(_table(spec, rows, np.array([]), [], [], version, week_start, scored_at), [])
    x = model_inputs(spec, rows)
    predicted = predict(pipeline, x, spec.task, spec.decision_threshold)
    labels = [_label_text(v) for v in predicted.label]
    probabilities: list[dict[str, float] | None] = [None] * len(rows)
    if spec.task != "regression":
        proba = np.asarray(pipeline.predict_proba(x), dtype="float64")
        names = [_label_text(c) for c in predicted.classes]
        probabilities = [dict(zip(names, row, strict=True)) for row in proba.tolist()]
    table = _table(spec, rows, predicted.score, labels, probabilities, version, week_start, scored_at)
    entities = label_join_keys(rows, key)
    request = batch_request_id(spec.name, week, version)
    when = week_start.to_pydatetime()
    inputs = _inputs(rows, spec.features.numeric, [*spec.features.categorical, *spec.features.text])
    log_rows = [{"request_id": request, "record_index": i, "record_id": None, "time": when, "model": spec.name,
                 "version": str(version), "role": BATCH_ROLE,
                 "entity_key": entities[i][2:] if isinstance(entities[i], str) else None,
                 "label": labels[i], "score": float(predicted.score[i]), "probabilities": probabilities[i],
                 "latency_ms": None, "inputs": inputs[i]} for i in range(len(rows))]
    return BatchScores(table, log_rows)


def model_inputs(spec: Any, rows: pd.DataFrame) -> pd.DataFrame:
    """The feature columns as training gave them to the model (``split_xy`` on the features table): numbers as
    float, categories as text (a ``scoring.table`` may hold them as numbers), free text as text; nulls as None."""
    from mlplatform.lib.validation import as_category_text

    x = rows[list(spec.feature_columns)].copy()
    for column in spec.features.numeric:
        x[column] = pd.to_numeric(x[column], errors="coerce").astype("float64")
    for column in spec.features.categorical:
        x[column] = as_category_text(x[column])
    for column in spec.features.text:
        x[column] = x[column].astype(str).astype(object).where(x[column].notna(), None)
    return x


def _label_text(value: Any) -> str:
    """A predicted value or class as the service logs it (``str``; integral floats of classes as integers)."""
    if hasattr(value, "item"):
        value = value.item()
    return str(value)


def _inputs(rows: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> list[dict[str, Any]]:
    """Each row's inputs as the log stores them: numbers as float (NaN as None), categories as text."""
    columns: dict[str, list[Any]] = {}
    for name in numeric:
        values = pd.to_numeric(rows[name], errors="coerce").astype("float64")
        columns[name] = [None if np.isnan(v) else float(v) for v in values]
    for name in categorical:
        values = rows[name].astype(object)
        columns[name] = [None if pd.isna(v) else _label_text(v) for v in values]
    return [{name: columns[name][i] for name in columns} for i in range(len(rows))]


def _table(spec: Any, rows: pd.DataFrame, score: np.ndarray, labels: list[str],
           probabilities: list[dict[str, float] | None], version: str, week: pd.Timestamp,
           scored_at: datetime) -> pd.DataFrame:
    key = [c for c in spec.source.key if c != spec.time_column]
    table = rows[[spec.time_column, *key]].copy()
    table.insert(0, "week", pd.Series([week] * len(rows), dtype="datetime64[us]"))
    table["prediction"] = np.asarray(score, dtype="float64")
    table["predicted_label"] = pd.Series(labels, dtype=object)
    table["probabilities"] = pd.Series([json.dumps(p) if p is not None else None for p in probabilities],
                                       dtype=object)
    table["model_version"] = pd.Series([str(version)] * len(rows), dtype=object)
    table["role"] = pd.Series([BATCH_ROLE] * len(rows), dtype=object)
    table["scored_at"] = pd.Series([pd.Timestamp(scored_at)] * len(rows), dtype="datetime64[us]")
    return table
