"""What a spec needs to know about its data file without loading it: where it may be, its format and header.

A spec is untrusted text: its ``source.path`` must not become a way to read (and echo) any file the
platform can read, or to hang validation on a device. So a data file must resolve, symlinks followed,
to a regular file inside the spec's folder or a configured data root; its header is read with a byte
limit; and no error message quotes a byte of its content.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import io
import lzma
import os
import stat
from pathlib import Path

import pandas as pd

SNAPSHOT_TIME_COLUMN = "_event_time"
"""Column added to a dataset that has no event time: all rows are one snapshot week."""

DATA_ROOTS_ENV = "MLPLATFORM_DATA_ROOTS"
"""Folders (os.pathsep-separated) besides each spec's own folder where data files may live."""

HEADER_BYTES = 1 << 20
"""The header line of a CSV must end within this many (decompressed) bytes."""

_PARQUET_SUFFIXES = (".parquet", ".pq")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


class SourceFileError(ValueError):
    """A data file that may not or cannot be read; the message never quotes the file's content."""


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(_PARQUET_SUFFIXES)


def data_roots(spec_folder: Path) -> list[Path]:
    """Where a spec's data may live: its own folder, then every folder in ``MLPLATFORM_DATA_ROOTS``."""
    configured = [Path(p).expanduser().resolve() for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p]
    return [spec_folder.resolve(), *configured]


def checked_data_path(path: Path, spec_folder: Path) -> Path:
    """The data file, symlinks resolved, if it is a regular file inside an allowed root; else SourceFileError."""
    resolved = path.resolve()
    roots = data_roots(spec_folder)
    if not any(resolved.is_relative_to(root) for root in roots):
        via = f" (it resolves to {resolved})" if resolved != path else ""
        raise SourceFileError(
            f"file {path}{via} is outside the spec's folder and the data roots; allowed: files under "
            + ", ".join(str(r) for r in roots)
            + f". Move the file there or add its folder to {DATA_ROOTS_ENV} (folders separated by '{os.pathsep}')"
        )
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise SourceFileError(f"file {path} does not exist") from None
    except OSError as error:
        raise SourceFileError(f"file {path} cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        raise SourceFileError(f"{path} is not a regular file (a folder, device or pipe); allowed: a CSV or Parquet file")
    return resolved


def header_text(path: Path, limit: int = HEADER_BYTES) -> str:
    """The first line of a CSV (decompressed), read with a byte limit so a file without line breaks cannot hang us."""
    opener = _OPENERS.get(path.suffix.lower())
    try:
        with (opener(path, "rb") if opener else open(path, "rb")) as handle:
            head = handle.read(limit)
    except (OSError, EOFError, lzma.LZMAError) as error:
        raise SourceFileError(f"{path.name} cannot be read as {path.suffix or 'plain'} text ({type(error).__name__})") \
            from None
    if not head:
        raise SourceFileError(f"{path.name} is empty; expected a header line with the column names")
    line, newline, _ = head.partition(b"\n")
    if not newline and len(head) >= limit:
        raise SourceFileError(f"{path.name} has no line break in its first {limit} bytes; expected a CSV header line")
    try:
        return line.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError as error:
        raise SourceFileError(f"{path.name}: its header line is not UTF-8 text (byte {error.start}); save it as "
                              "UTF-8") from None


def delimiter_hint(header: str) -> str:
    """' (the header looks ';'-separated; ...)' when a one-column header is really split by another delimiter."""
    if "," in header:
        return ""
    try:
        found = csv.Sniffer().sniff(header, delimiters=";\t|").delimiter
    except csv.Error:
        return ""
    shown = "\\t" if found == "\t" else found
    return f" (the header looks '{shown}'-separated; a CSV source must be comma-separated)"


def source_columns(path: Path) -> list[str]:
    """Column names from the file header only, so validating a spec stays cheap and bounded. Read once per version
    of the file (path, inode, modification and change times, size): validate and the raw asset's definition both
    need them at load."""
    try:
        found = path.stat()
    except OSError:
        return _read_columns(path)  # its own error
    return list(_columns_of_version(path, found.st_ino, found.st_mtime_ns, found.st_ctime_ns, found.st_size))


@functools.lru_cache(maxsize=1024)
def _columns_of_version(path: Path, inode: int, mtime_ns: int, ctime_ns: int, size: int) -> tuple[str, ...]:
    return tuple(_read_columns(path))


def _read_columns(path: Path) -> list[str]:
    if is_parquet(path):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as error:  # noqa: BLE001 - pyarrow's messages may quote bytes: name the kind only
            raise SourceFileError(f"{path.name} is not a readable Parquet file ({type(error).__name__})") from None
    if path.suffix.lower() in (".zip", ".zst", ".tar"):
        raise SourceFileError(f"{path.name}: compression {path.suffix} is not supported; allowed: plain, .gz, .bz2, .xz")
    header = header_text(path)
    try:
        columns = [str(c) for c in pd.read_csv(io.StringIO(header + "\n"), nrows=0).columns]
    except Exception as error:  # noqa: BLE001 - the parser's message may quote the header
        raise SourceFileError(f"{path.name}: the header line cannot be parsed as CSV ({type(error).__name__})") from None
    if len(columns) == 1:
        hint = delimiter_hint(header)
        if hint:
            raise SourceFileError(f"{path.name} has a single column{hint}")
    return columns


def read_options(null_values: list[str] | tuple[str, ...]) -> dict:
    """How every CSV read treats missing values: exactly the spec's null tokens, not pandas' longer list."""
    return {"keep_default_na": False, "na_values": list(null_values)}


def sample_column(path: Path, column: str, null_values: list[str] | tuple[str, ...], rows: int) -> pd.Series:
    """The first ``rows`` values of one column, read as a full read would read them (for checks at validate)."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows, columns=[column]), None)
        return batch.to_pandas()[column] if batch is not None else pd.Series([], dtype=object)
    return pd.read_csv(path, usecols=[column], nrows=rows, low_memory=False, **read_options(null_values))[column]
