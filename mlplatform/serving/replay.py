"""Replay: send a model's feature rows for some weeks to the service as production traffic.

Rows come from the source file (no lock needed) unless the spec stages them with dbt, whose features exist only in
the warehouse (read read-only, waiting politely if a run holds its lock). The target is never sent. Without a
``source.key`` each record carries ``_id`` = its row number in the source file, so labels can be joined later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.lib.source import Window, read_source, rows_in_window, to_utc_naive
from mlplatform.serving.schema import RECORD_ID_FIELD
from mlplatform.specs import ModelSpec

SOURCE_ROW_COLUMN = "_source_row"


@dataclass
class ReplayResult:
    rows: int = 0
    sent: int = 0
    answered: int = 0
    failed_requests: int = 0
    errors: list[str] = field(default_factory=list)


def replay_window(start: date, weeks: int) -> Window:
    begin = datetime.combine(start, datetime.min.time())
    return Window(begin, begin + timedelta(days=7 * weeks))


def feature_rows(spec: ModelSpec, window: Window, warehouse: Path | None = None, wait_seconds: float = 60) -> pd.DataFrame:
    """The rows of the window with time, key and feature columns (no target), from the source or the warehouse."""
    if spec.staging is None:
        frame = read_source(spec.source_path)
        frame[SOURCE_ROW_COLUMN] = range(len(frame))
        if spec.source.timestamp:
            frame[spec.source.timestamp] = to_utc_naive(frame[spec.source.timestamp], spec.source.timezone,
                                                        spec.source.timestamp_format, spec.source.timestamp_unit)
            frame = rows_in_window(frame, spec.source.timestamp, window)
    else:
        from mlplatform.lib.warehouse import connect_when_free, warehouse_exists

        if warehouse is None or not warehouse_exists(warehouse):
            raise FileNotFoundError(f"{spec.name} is staged by dbt ({spec.staging.dbt_model}): its features are in "
                                    f"the warehouse, which does not exist yet ({warehouse}); run the pipeline first")
        time_column = spec.time_column.replace('"', '""')
        with connect_when_free(warehouse, wait_seconds, read_only=True) as connection:
            frame = connection.execute(
                f'select * from "{spec.name}".features where "{time_column}" >= ? and "{time_column}" < ? '
                f'order by "{time_column}"', [window.start, window.end]).fetchdf()
    keep = [c for c in [*spec.source.key, *spec.feature_columns, SOURCE_ROW_COLUMN] if c in frame.columns]
    return frame[keep]


def records_of(frame: pd.DataFrame, spec: ModelSpec) -> list[dict[str, Any]]:
    """JSON-ready records: nulls as None, numpy scalars as Python values, ``_id`` when the spec has no key."""
    plain = frame.astype(object).where(frame.notna(), None)
    records = plain.to_dict("records")
    for record in records:
        row = record.pop(SOURCE_ROW_COLUMN, None)
        if not spec.source.key and row is not None:
            record[RECORD_ID_FIELD] = int(row)
        for name, value in record.items():
            if hasattr(value, "item"):
                record[name] = value.item()
            elif isinstance(value, pd.Timestamp):
                record[name] = value.isoformat()
    return records


def send(records: list[dict[str, Any]], url: str, model: str, batch: int = 100, timeout: float = 30.0,
         token: str | None = None) -> ReplayResult:
    """POST the records in batches to ``{url}/v1/models/{model}/predict``; count what was answered. ``token``
    (default: ``MLPLATFORM_API_TOKEN``) is sent as the bearer token, for a service with API tokens."""
    import os

    import httpx

    from mlplatform.lib.api_tokens import CLIENT_TOKEN_ENV

    result = ReplayResult(rows=len(records))
    endpoint = f"{url.rstrip('/')}/v1/models/{model}/predict"
    token = token or os.environ.get(CLIENT_TOKEN_ENV, "").strip()
    with httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {token}"} if token else None) as client:
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            result.sent += len(chunk)
            try:
                response = client.post(endpoint, json={"records": chunk})
            except httpx.HTTPError as error:
                result.failed_requests += 1
                result.errors.append(f"records {start}-{start + len(chunk) - 1}: {type(error).__name__}: {error}")
                continue
            if response.status_code == 200:
                result.answered += len(response.json()["predictions"])
            else:
                result.failed_requests += 1
                result.errors.append(f"records {start}-{start + len(chunk) - 1}: HTTP {response.status_code}: "
                                     f"{response.text[:300]}")
    return result
