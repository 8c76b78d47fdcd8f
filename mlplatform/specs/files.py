"""What a spec needs to know about its data file without loading it: format and header."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SNAPSHOT_TIME_COLUMN = "_event_time"
"""Column added to a dataset that has no event time: all rows are one snapshot week."""

_PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(_PARQUET_SUFFIXES)


def source_columns(path: Path) -> list[str]:
    """Column names from the file header only, so validating a spec stays cheap."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(pd.read_csv(path, nrows=0).columns)
