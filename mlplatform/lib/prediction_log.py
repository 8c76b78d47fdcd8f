"""The prediction log: every prediction the service answers, in append-only Parquet segments the service owns.

Why files and not the warehouse: DuckDB allows one writer process per database file and Dagster runs need it, so a
long-running service must never hold the warehouse lock. Segments are written to a temporary name, fsynced and
published with an atomic ``os.replace``: a reader sees a whole segment or none, never half of one.

Layout (a contract; docs/serving.md describes every column)::

    <home>/prediction_log/<model>/date=YYYY-MM-DD/hour=HH/<uuid>.parquet

Read it with :func:`read_prediction_log`, or with DuckDB:
``read_parquet('<home>/prediction_log/<model>/**/*.parquet', hive_partitioning=true, union_by_name=true)``.

With ``MLPLATFORM_PREDICTION_LOG_URI=s3://bucket/prefix`` (replicas that share no disk) the same segments go to a
local spool (``<home>/prediction_log_spool``) and the writer's child process uploads each one after it is
published, drains the spool on shutdown and uploads leftovers at start; :func:`read_prediction_log`, the one reader
every step uses, then reads the bucket (:mod:`mlplatform.lib.object_store`). Rows are deduplicated on request id,
record index and role everywhere: a segment written twice (a writer that died after writing, before confirming)
counts once.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlplatform.lib.audit_key import AuditKey
from mlplatform.lib.log_manifest import (
    ENTRY_SUFFIX,
    MANIFEST_DIR_NAME,
    LogVerdict,
    SegmentManifest,
    local_log_files,
    read_checkpoints,
    verify_log,
)
from mlplatform.lib.object_store import (
    LogLocation,
    SegmentNamer,
    configured_location,
    fetch_segments,
    list_model_keys,
    parse_log_uri,
    replica_id,
    s3_client,
    spooled_segments,
    upload_spool,
)

log = logging.getLogger(__name__)

LOG_DIR_NAME = "prediction_log"
SPOOL_DIR_NAME = "prediction_log_spool"
CACHE_DIR_NAME = "prediction_log_cache"
SEGMENT_SUFFIX = ".parquet"
PARTIAL_SUFFIX = ".partial"

SCHEMA = pa.schema([
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("record_index", pa.int32(), nullable=False),
    pa.field("record_id", pa.string()),
    pa.field("time", pa.timestamp("us"), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("version", pa.string(), nullable=False),
    pa.field("role", pa.string(), nullable=False),
    pa.field("entity_key", pa.string()),
    pa.field("label", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("probabilities", pa.string()),
    pa.field("latency_ms", pa.float64()),
    pa.field("status", pa.int32()),
])
"""The fixed columns: one row per record per scoring model (a shadow score is its own row). ``time`` is naive UTC,
as everywhere. The inputs follow as one typed column per feature, ``input.<feature>`` (see :data:`INPUT_PREFIX`).

``status`` is the HTTP status the record's scoring ended in: 200, or an error row (422 a non-finite output, 500 the
version failed) that names the version and role which failed, with no score. Segments written before the column
existed read as 200. :func:`read_prediction_log` leaves error rows out unless asked (``errors=True``): every reader
of predictions (drift, labels, live performance) sees only answered rows, the rollout analysis sees both."""

OK_STATUS = 200
ERROR_STATUS_FROM = 400

COLUMNS = [f.name for f in SCHEMA]
INPUT_PREFIX = "input."
"""Prefix of the input columns in the files: a feature may be named like a fixed column (``version``, ``time``)."""
SENSITIVE_PREFIX = "sensitive."
"""Prefix of the spec's sensitive attributes a request carried (``fairness.sensitive``; text, null when not sent):
never model inputs, logged so live fairness can group predictions by them. Kept under this name when read."""

def log_root(home: Path) -> Path:
    return Path(home) / LOG_DIR_NAME


def model_log_dir(home: Path, model: str) -> Path:
    return log_root(home) / model


def spool_root(home: Path) -> Path:
    return Path(home) / SPOOL_DIR_NAME


def log_location_text(home: Path, model: str, uri: str | None = None) -> str:
    """Where a model's log is read from, for messages: the bucket when configured, else the local folder."""
    location = parse_log_uri(uri) if uri else configured_location()
    if location is not None:
        return f"s3://{location.bucket}/{location.model_prefix(model)}"
    return str(model_log_dir(home, model))


class SpoolUploader:
    """Uploads a spool's published segments to object storage (the client is made on first use)."""

    def __init__(self, spool: Path, uri: str):
        self.spool = Path(spool)
        self.location = parse_log_uri(uri)
        self._client: Any = None
        self.uploaded = 0

    def upload(self) -> int:
        """Upload what is published; returns the segments still waiting (0: the spool is drained)."""
        if self._client is None:
            self._client = s3_client()
        done, left = upload_spool(self.spool, self.location, self._client)
        self.uploaded += done
        return left


def utc_now() -> datetime:
    """Now as naive UTC (the platform's time convention)."""
    return datetime.now(UTC).replace(tzinfo=None)


class PredictionLogWriter:
    """Collects rows in memory and writes them as Parquet segments every ``flush_seconds`` on its own thread.

    ``write`` only appends to a list under a lock, so the response path never waits for the disk. ``close`` flushes
    everything (call it on shutdown); a process killed with SIGKILL loses at most the rows of the last interval.
    A failed write (disk full) keeps the rows and retries at the next interval.
    """

    def __init__(self, home: Path, flush_seconds: float = 1.0,
                 input_types: Mapping[str, Mapping[str, str]] | None = None, uri: str | None = None,
                 replica: str | None = None):
        # With an object-storage URI the segments are spooled locally, named for their keys, then uploaded.
        self.uri = uri or None
        self.replica = replica_id(replica)
        self.root = spool_root(home) if self.uri else log_root(home)
        self._uploader = SpoolUploader(self.root, self.uri) if self.uri else None
        self._namer = SegmentNamer(self.replica) if self.uri else None
        self._manifest = _manifest_for(self._namer, None if self.uri else home)  # seals each segment (log_manifest.py)
        self.flush_seconds = flush_seconds
        self.input_types = {model: dict(types) for model, types in (input_types or {}).items()}
        self._pending: list[Mapping[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written_rows = 0
        self.segments = 0
        self.failed_flushes = 0

    def start(self) -> PredictionLogWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
            self._thread.start()
        return self

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Queue rows: dicts with the keys of :data:`COLUMNS`, ``inputs`` (feature -> float/text/None) and
        ``probabilities`` as a dict of class text -> probability (or None)."""
        with self._lock:
            self._pending.extend(rows)

    @property
    def backlog(self) -> int:
        """Rows accepted but not yet in a published segment."""
        return len(self._pending)

    @property
    def spooled_segments(self) -> int:
        """Segments published in the spool, not yet in object storage (0 for a local log)."""
        return sum(1 for _ in spooled_segments(self.root)) if self.uri else 0

    def flush(self) -> int:
        """Write every pending row now; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return 0
            try:
                written = write_segments(self.root, rows, self.input_types, self._namer, self._manifest)
            except Exception:  # noqa: BLE001 - keep the rows and retry: losing predictions is worse than a late write
                self.failed_flushes += 1
                log.exception("prediction log: writing %d rows under %s failed; retrying", len(rows), self.root)
                with self._lock:
                    self._pending[:0] = rows
                return 0
            self.written_rows += len(rows)
            self.segments += written
            if self._uploader is not None:
                self._uploader.upload()  # a failure keeps the files in the spool for the next flush
            return len(rows)

    def close(self) -> None:
        """Stop the thread and flush what is left (retrying a failing disk a few times)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for _ in range(3):
            self.flush()
            if not self.backlog:
                break
        else:
            log.error("prediction log: %d rows could not be written at shutdown", self.backlog)
        if self._uploader is not None and self._uploads_here:
            _drain(self._uploader)

    @property
    def _uploads_here(self) -> bool:
        """Whether this process uploads the spool (not while a writer child process owns it)."""
        return True

    def _run(self) -> None:
        """Flush on a fixed schedule (not ``flush_seconds`` after the previous write ended), so a row waits at most
        one interval plus the time one write takes; a late flush does not push the next one back."""
        deadline = time.monotonic() + self.flush_seconds
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            self.flush()
            deadline = max(deadline + self.flush_seconds, time.monotonic())


class ChildProcessLogWriter(PredictionLogWriter):
    """A :class:`PredictionLogWriter` whose Parquet building, encoding and writing run in a child process.

    Why: building the Arrow columns is a Python loop over every row and field, and it held the serving process's
    GIL for ~15-25 ms once a second (plus ~20 ms more for the Parquet write), so requests arriving then waited
    for it: the service's p99 (docs/serving.md, "where the tail comes from"). Here the serving process only
    pickles the pending rows in chunks of :data:`CHUNK_ROWS` (~0.5 ms of GIL each, released between chunks by the
    pipe write) and the child (``python -m mlplatform.lib.prediction_log``) runs :func:`write_segments`, the same
    function as the in-process writer: the files are the same.

    Same contract as the base class: ``flush`` returns when the child has published the rows (or failed to, then
    it keeps them and retries at the next flush: ``backlog`` counts them); ``close`` writes everything left before
    it returns. The child ignores SIGINT/SIGTERM (a signal sent to the whole process group must not kill it before
    the service's final flush) and exits when its input pipe closes, after writing what it received; so SIGKILL
    of the service alone loses only the rows not yet handed over, and SIGKILL of both at most the last interval's
    and the write in progress. If the child dies, the writer falls back to writing in this process (rows the
    child had not confirmed are written again: a duplicate rather than a loss).
    """

    CHUNK_ROWS = 256

    def __init__(self, home: Path, flush_seconds: float = 1.0,
                 input_types: Mapping[str, Mapping[str, str]] | None = None, uri: str | None = None,
                 replica: str | None = None):
        super().__init__(home, flush_seconds, input_types, uri, replica)
        self._child: subprocess.Popen | None = None
        self._inflight: list[Mapping[str, Any]] = []  # handed to the child, not yet confirmed written
        self._sequence = 0

    def start(self) -> ChildProcessLogWriter:
        with self._flush_lock:
            if self._child is None:
                self._child = _start_child(self.root, self.input_types, self.uri, self.replica)
        super().start()
        return self

    @property
    def backlog(self) -> int:
        return len(self._pending) + len(self._inflight)

    @property
    def _uploads_here(self) -> bool:
        return self._child is None

    @property
    def child_pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def flush(self) -> int:
        if self._child is None:
            return super().flush()
        with self._flush_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows and not self._inflight:
                return 0
            self._inflight.extend(rows)
            self._sequence += 1
            try:
                for start in range(0, len(rows), self.CHUNK_ROWS):
                    _send(self._child.stdin, ("rows", rows[start:start + self.CHUNK_ROWS]))
                _send(self._child.stdin, ("commit", self._sequence))
                reply = _receive(self._child.stdout)
            except (OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
                reply = None
                log.error("prediction log: the writer process failed (%s); writing in this process from now on",
                          error)
            if reply is None:
                self._abandon_child()
                return 0
            _, sequence, written, segments, error = reply
            if sequence != self._sequence:
                log.error("prediction log: the writer process answered out of turn; writing in this process")
                self._abandon_child()
                return 0
            self.written_rows += written
            self.segments += segments
            if error is not None:
                self.failed_flushes += 1
                log.error("prediction log: writing %d rows under %s failed (%s); retrying", len(self._inflight),
                          self.root, error)
                return 0
            self._inflight = []
            return written

    def close(self) -> None:
        super().close()  # stops the thread, flushes (retrying) through the child
        child, self._child = self._child, None
        if child is not None:
            try:
                child.stdin.close()
                child.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()
            if self._inflight:  # the child could not write them: one last try here
                with self._lock:
                    self._pending[:0], self._inflight = self._inflight, []
                super().close()

    def _abandon_child(self) -> None:
        """The child is gone or broken: write in this process, starting with what it had not confirmed."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
        with self._lock:
            self._pending[:0], self._inflight = self._inflight, []


_FRAME = struct.Struct("<I")


def _send(stream: Any, message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream: Any) -> Any:
    """One framed message, or EOFError when the other side closed the pipe."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        raise EOFError("pipe closed")
    size = _FRAME.unpack(header)[0]
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("pipe closed mid-message")
    return pickle.loads(payload)


def _start_child(root: Path, input_types: Mapping[str, Mapping[str, str]], uri: str | None = None,
                 replica: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlplatform.lib.prediction_log", str(root), json.dumps(input_types),
               uri or "", replica or ""]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # stderr: the service's


def _child_main(root: Path, input_types: Mapping[str, Mapping[str, str]], uri: str | None = None,
                replica: str | None = None) -> None:
    """The writer process: collect rows, write them on each commit, write what is left when the input closes.

    With ``uri`` (object storage) ``root`` is the spool: leftovers of an earlier process are uploaded first, each
    commit's segments are uploaded after the reply (the service does not wait for the network), and when the input
    closes (shutdown, SIGTERM) the last rows are written and the spool is drained before the process exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when the log is done: its pipe closes
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # nothing a library prints may corrupt the replies
    try:
        os.nice(5)  # deferrable work: the serving process's threads come first when the cores are busy
    except OSError:
        pass
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    requests = sys.stdin.buffer
    pending: list[Mapping[str, Any]] = []
    uploader = SpoolUploader(root, uri) if uri else None
    namer = SegmentNamer(replica or "") if uri else None
    manifest = _manifest_for(namer, None if uri else root.parent)  # root: log_root(home)
    if uploader is not None and uploader.upload():  # leftovers of a replica that stopped before draining
        log.warning("prediction log writer: segments left in %s could not be uploaded yet; retrying", root)
    while True:
        try:
            message = _receive(requests)
        except EOFError:
            break
        if message[0] == "rows":
            pending.extend(message[1])
            continue
        written, segments, error = 0, 0, None
        if pending:
            try:
                segments = write_segments(root, pending, input_types, namer, manifest)
                written, pending = len(pending), []
            except Exception as failure:  # noqa: BLE001 - keep the rows: the service retries at its next flush
                error = f"{type(failure).__name__}: {failure}"
        _send(replies, ("done", message[1], written, segments, error))
        if uploader is not None and segments:
            uploader.upload()  # a failure keeps the files in the spool: the next commit or the drain retries
    for _ in range(3):  # the service is gone (or closed the log): write what arrived
        if not pending:
            break
        try:
            write_segments(root, pending, input_types, namer, manifest)
            pending = []
        except Exception:  # noqa: BLE001
            log.exception("prediction log writer: writing %d rows under %s failed", len(pending), root)
            time.sleep(1)
    if pending:
        log.error("prediction log writer: %d rows could not be written", len(pending))
    if uploader is not None:
        _drain(uploader)


def _manifest_for(namer: SegmentNamer | None, home: Path | None = None) -> SegmentManifest:
    """A writer's manifest chain, named like its segments (replica and start token) when it spools for a bucket;
    ``home``: its head anchored in a checkpoint file there (a local log only: a bucket's newest entries may still be
    in the spool, so a checkpoint would run ahead of what the bucket holds)."""
    return SegmentManifest(f"{namer.replica}-{namer.token}" if namer is not None else None, checkpoints=home)


DRAIN_ATTEMPTS = 5


def _drain(uploader: SpoolUploader) -> None:
    """Upload what the spool holds at shutdown, retrying briefly; what is left is uploaded at the next start."""
    for attempt in range(DRAIN_ATTEMPTS):
        if not uploader.upload():
            return
        time.sleep(min(2.0, 0.25 * 2 ** attempt))
    log.error("prediction log writer: segments stay in %s; the next start of this replica uploads them",
              uploader.spool)


def write_segments(root: Path, rows: Sequence[Mapping[str, Any]],
                   input_types: Mapping[str, Mapping[str, str]] | None = None,
                   name: Callable[[], str] | None = None, manifest: SegmentManifest | None = None) -> int:
    """Publish rows as one segment per (model, date, hour); returns the number of segments.

    ``manifest`` seals each published segment with a manifest entry (the service's writers always pass one, so
    ``audit --verify-log`` can check the log; tests writing fixtures may not).

    ``name`` gives each segment's file name (without suffix); default a random UUID. The spool of an
    object-storage log names them for unique keys (:class:`~mlplatform.lib.object_store.SegmentNamer`).

    ``input_types`` gives per model the Parquet type of each input (``"float64"`` or ``"string"``), so every
    segment of a model has the same schema even when a column is all null in it; without it types are inferred.
    Its keys starting with :data:`SENSITIVE_PREFIX` name the sensitive attributes, read from each row's
    ``sensitive`` dict (not from ``inputs``).
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        when: datetime = row["time"]
        groups[(row["model"], when.strftime("%Y-%m-%d"), when.strftime("%H"))].append(row)
    for (model, day, hour), group in groups.items():
        folder = root / model / f"date={day}" / f"hour={hour}"
        folder.mkdir(parents=True, exist_ok=True)
        published = _publish(folder, _table(group, (input_types or {}).get(model, {})), name() if name else None)
        if manifest is not None:
            manifest.seal(root, model, published, len(group))
    return len(groups)


_ARROW_TYPES = {"float64": pa.float64(), "string": pa.string()}


def _table(rows: Sequence[Mapping[str, Any]], input_types: Mapping[str, str]) -> pa.Table:
    """Column by column (no JSON per row: encoding inputs as JSON was most of the log's cost)."""
    arrays = [pa.array([row.get(name, OK_STATUS) if name == "status" else row.get(name) for row in rows],
                       type=field.type) for name, field in zip(COLUMNS, SCHEMA, strict=True) if name != "probabilities"]
    names = [name for name in COLUMNS if name != "probabilities"]
    arrays.insert(COLUMNS.index("probabilities"), pa.array([_probabilities_text(row.get("probabilities"))
                                                            for row in rows], type=pa.string()))
    names.insert(COLUMNS.index("probabilities"), "probabilities")
    features = ([f for f in input_types if not f.startswith(SENSITIVE_PREFIX)] if input_types
                else list(dict.fromkeys(k for row in rows for k in row["inputs"])))
    sensitive = ([f[len(SENSITIVE_PREFIX):] for f in input_types if f.startswith(SENSITIVE_PREFIX)] if input_types
                 else list(dict.fromkeys(k for row in rows for k in (row.get("sensitive") or {}))))
    for feature in features:
        values = [row["inputs"].get(feature) for row in rows]
        kind = _ARROW_TYPES.get(input_types.get(feature, ""))
        arrays.append(pa.array(values, type=kind) if kind is not None else pa.array(values))
        names.append(INPUT_PREFIX + feature)
    for column in sensitive:
        arrays.append(pa.array([(row.get("sensitive") or {}).get(column) for row in rows], type=pa.string()))
        names.append(SENSITIVE_PREFIX + column)
    return pa.Table.from_arrays(arrays, names=names)


_PROBABILITY_TEMPLATES: dict[tuple[str, ...], str] = {}


def _probabilities_text(probabilities: Mapping[str, float] | None) -> str | None:
    """JSON of class -> probability, by a %-template per class set: ~10x cheaper than json.dumps per row."""
    if probabilities is None:
        return None
    classes = tuple(probabilities)
    template = _PROBABILITY_TEMPLATES.get(classes)
    if template is None:
        template = "{" + ",".join(json.dumps(str(c)).replace("%", "%%") + ":%r" for c in classes) + "}"
        _PROBABILITY_TEMPLATES[classes] = template
    return template % tuple(float(p) for p in probabilities.values())


def _publish(folder: Path, table: pa.Table, name: str | None = None) -> Path:
    """Write to a temporary name, fsync, then rename: readers see the whole segment or nothing."""
    name = name or uuid.uuid4().hex
    partial = folder / f".{name}{SEGMENT_SUFFIX}{PARTIAL_SUFFIX}"
    final = folder / f"{name}{SEGMENT_SUFFIX}"
    with open(partial, "wb") as handle:
        pq.write_table(table, handle, compression="zstd")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, final)
    try:  # the rename itself survives a power cut only once the folder is synced
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
    return final


def _as_naive_utc(value: datetime | date | str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def read_prediction_log(
    home: Path,
    model: str,
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    roles: Sequence[str] | None = None,
    expand_inputs: bool = True,
    uri: str | None = None,
    errors: bool = False,
) -> pd.DataFrame:
    """The logged predictions of ``model`` with ``start <= time < end`` (naive UTC; tz-aware bounds are converted).

    The one reader of the log (drift, the training-data gate, labels, live performance, the shadow report, the
    demo): from the bucket of ``uri`` (default: ``MLPLATFORM_PREDICTION_LOG_URI``; objects are copied once into
    ``<home>/prediction_log_cache``), else from the local folder under ``home``. One row per (request id, record
    index, role): a row written twice counts once.

    Ordered by time, request, record and role. ``roles`` keeps only those roles (e.g. ``["champion", "canary"]``
    for what clients were answered). With ``expand_inputs`` every input feature follows as a column named after the
    feature (numbers float64, categories text, nulls NaN/None), ready for drift statistics; a feature named like a
    fixed column keeps its file name ``input.<name>``; the sensitive attributes requests carried follow as
    ``sensitive.<name>`` (text). Without it only the fixed columns are returned. An empty
    frame with the fixed columns when nothing was logged. Error rows (``status`` 4xx/5xx: a version failed to
    score) are left out unless ``errors`` (the rollout analysis's error rate).
    """
    import duckdb

    low, high = _as_naive_utc(start), _as_naive_utc(end)
    location = parse_log_uri(uri) if uri else configured_location()
    files = (_fetched_segments(home, model, location, low, high) if location is not None
             else _local_segments(model_log_dir(home, model)))
    if not files:
        return pd.DataFrame({name: pd.Series(dtype=_pandas_dtype(field.type)) for name, field in
                             zip(COLUMNS, SCHEMA, strict=True)})
    conditions, params = [], []
    if low is not None:
        conditions.append("time >= ? and date >= ?")
        params += [low.to_pydatetime(), low.date()]
    if high is not None:
        conditions.append("time < ? and date <= ?")
        params += [high.to_pydatetime(), high.date()]
    if roles:
        conditions.append("role in (" + ", ".join("?" for _ in roles) + ")")
        params += list(roles)
    paths = [str(path) for path in files]
    source = "read_parquet(?, hive_partitioning=true, union_by_name=true)"
    with duckdb.connect() as connection:
        available = [row[0] for row in connection.execute(f"describe select * from {source}", [paths]).fetchall()]
        status = f"coalesce(status, {OK_STATUS})" if "status" in available else str(OK_STATUS)
        if not errors:
            conditions.append(f"{status} < {ERROR_STATUS_FROM}")
        where = ("where " + " and ".join(conditions)) if conditions else ""
        inputs = [c for c in available if c.startswith((INPUT_PREFIX, SENSITIVE_PREFIX))] if expand_inputs else []
        selected = ", ".join([*(f"cast({status} as integer) as status" if c == "status" else _quoted(c)
                                for c in COLUMNS), *(_quoted(c) for c in inputs)])
        frame = connection.execute(f"select {selected} from {source} {where} {DEDUPLICATE} "
                                   "order by time, request_id, record_index, role", [paths, *params]).fetchdf()
    frame["record_index"] = frame["record_index"].astype("int32")
    frame["status"] = frame["status"].astype("int32")
    frame.columns = [_feature_name(c) for c in frame.columns]
    return frame


DEDUPLICATE = "qualify row_number() over (partition by request_id, record_index, role order by time) = 1"
"""One row per (request id, record index, role): what the service answered once, however often it was written."""


def _local_segments(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob(f"*{SEGMENT_SUFFIX}") if not p.name.startswith("."))


def _fetched_segments(home: Path, model: str, location: LogLocation, low: pd.Timestamp | None,
                      high: pd.Timestamp | None) -> list[Path]:
    """The model's objects whose day can hold rows in [low, high), copied into the local cache."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = s3_client()
        keys = list_model_keys(location, model, client, low.date() if low is not None else None,
                               high.date() if high is not None else None)
        return fetch_segments(location, keys, Path(home) / CACHE_DIR_NAME, client)
    except (BotoCoreError, ClientError) as error:
        raise PredictionLogUnavailable(
            f"prediction log {location.uri}/{model}: cannot be read from object storage ({error}); check "
            "MLPLATFORM_PREDICTION_LOG_URI, the AWS_* credentials and AWS_ENDPOINT_URL of this process") from error


class PredictionLogUnavailable(RuntimeError):
    """The configured object-storage log could not be listed or read (credentials, endpoint, bucket)."""


def verify_prediction_log(home: Path, model: str, key: AuditKey | None, uri: str | None = None) -> LogVerdict | None:
    """Check a model's log against its manifest (lib/log_manifest.py), wherever it is read from; None when there
    is no log at all. Objects are downloaded afresh into a temporary folder (not the read cache: a copy cached before
    an edit of the same size would hide it)."""
    import tempfile

    location = parse_log_uri(uri) if uri else configured_location()
    if location is None:
        files = local_log_files(model_log_dir(home, model))
        checkpoints = read_checkpoints(home, model)
        return verify_log(files, key, checkpoints, model) if files or checkpoints else None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = s3_client()
        keys = list_model_keys(location, model, client) + [
            item for item in list_model_keys(location, model, client, suffix=ENTRY_SUFFIX)
            if f"/{MANIFEST_DIR_NAME}/" in "/" + item[0]]
        if not keys:
            return None
        with tempfile.TemporaryDirectory(prefix="verify-log-") as scratch:
            paths = fetch_segments(location, keys, Path(scratch), client)
            prefix = location.model_prefix(model)
            return verify_log({key_[len(prefix):]: path for (key_, _), path in zip(keys, paths, strict=True)}, key)
    except (BotoCoreError, ClientError) as error:
        raise PredictionLogUnavailable(
            f"prediction log {location.uri}/{model}: cannot be read from object storage ({error}); check "
            "MLPLATFORM_PREDICTION_LOG_URI, the AWS_* credentials and AWS_ENDPOINT_URL of this process") from error


def _feature_name(column: str) -> str:
    if not column.startswith(INPUT_PREFIX):
        return column
    feature = column[len(INPUT_PREFIX):]
    return column if feature in COLUMNS else feature


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pandas_dtype(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "datetime64[us]"
    if pa.types.is_integer(arrow_type):
        return "int32"
    if pa.types.is_floating(arrow_type):
        return "float64"
    return "object"


def weekly_summary(logged: pd.DataFrame) -> dict[str, Any]:
    """Rows, requests, versions, roles and latency percentiles of some logged predictions (one week's, say)."""
    if logged.empty:
        return {"rows": 0, "requests": 0, "versions": [], "roles": [], "p50_ms": 0.0, "p99_ms": 0.0,
                "by_version_role": []}
    latency = logged["latency_ms"].astype("float64")
    groups = []
    for (version, role), group in logged.groupby(["version", "role"], sort=True):
        lat = group["latency_ms"].astype("float64")
        groups.append({"version": str(version), "role": str(role), "rows": int(len(group)),
                       "p50_ms": float(lat.quantile(0.5)), "p99_ms": float(lat.quantile(0.99))})
    return {"rows": int(len(logged)), "requests": int(logged["request_id"].nunique()),
            "versions": sorted({str(v) for v in logged["version"]}), "roles": sorted({str(r) for r in logged["role"]}),
            "p50_ms": float(latency.quantile(0.5)), "p99_ms": float(latency.quantile(0.99)),
            "by_version_role": groups}


if __name__ == "__main__":  # the writer process of ChildProcessLogWriter
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _child_main(Path(sys.argv[1]), json.loads(sys.argv[2]), *(arg or None for arg in sys.argv[3:5]))
