"""Opening the DuckDB warehouse file from outside a Dagster run (CLI commands), politely."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb


class WarehouseBusy(RuntimeError):
    """Another process kept the warehouse's write lock for longer than we were willing to wait."""


def connect_when_free(path: Path, wait_seconds: float, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse, waiting while another process holds its lock.

    DuckDB lets one process at a time open the file: a Dagster run holds it ~0.1 s per week it
    records, but a data step or dbt may hold it for minutes. Waiting, then failing with a clear
    error, beats a traceback halfway through a change.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise WarehouseBusy(f"the warehouse {path} stayed locked by another process for {wait_seconds:g} s "
                                    f"({error})") from error
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
