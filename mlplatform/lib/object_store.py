"""The prediction log on S3-compatible object storage: where it goes, how its objects are named, upload and fetch.

Why: serving replicas share no disk. Each replica writes its segments to a local spool (the same atomic Parquet
files as the local log) and uploads every published file; readers list the bucket and read local copies. Objects
are immutable: a key is written once with one content, so an upload retried after a crash rewrites the same bytes
and a cached copy never goes stale.

Key layout (a contract, docs/serving.md)::

    <prefix>/<model>/date=YYYY-MM-DD/hour=HH/<replica>-<writer start>-<sequence>.parquet

``replica`` names the host (``MLPLATFORM_REPLICA_ID``, default the host name: a pod name is unique), ``writer
start`` is drawn when the log writer starts (a restarted replica never reuses a key), ``sequence`` counts the
writer's segments. Credentials and the endpoint come from the standard AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ...), read by boto3 itself.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREDICTION_LOG_URI_ENV = "MLPLATFORM_PREDICTION_LOG_URI"
REPLICA_ID_ENV = "MLPLATFORM_REPLICA_ID"
SEGMENT_SUFFIX = ".parquet"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DATE_PART = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/")


@dataclass(frozen=True)
class LogLocation:
    """``s3://bucket/prefix``: where the prediction log's objects live."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def model_prefix(self, model: str) -> str:
        return f"{self.prefix}/{model}/" if self.prefix else f"{model}/"

    def key(self, relative: str | Path) -> str:
        """The object key of a spool file, from its path relative to the spool (``<model>/date=.../...``)."""
        text = Path(relative).as_posix().lstrip("/")
        return f"{self.prefix}/{text}" if self.prefix else text


def parse_log_uri(uri: str) -> LogLocation:
    """``s3://bucket[/prefix]`` -> :class:`LogLocation`; a ValueError naming the setting and the expected form."""
    text = uri.strip()
    if not text.startswith("s3://"):
        raise ValueError(f"{PREDICTION_LOG_URI_ENV}={uri!r}: expected s3://bucket/prefix (S3 or an S3-compatible "
                         "server; its endpoint in AWS_ENDPOINT_URL), or unset for the local folder under "
                         "MLPLATFORM_HOME")
    bucket, _, prefix = text[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{PREDICTION_LOG_URI_ENV}={uri!r}: no bucket; expected s3://bucket/prefix")
    return LogLocation(bucket, prefix.strip("/"))


def configured_location() -> LogLocation | None:
    """The object-storage log this process is configured for (``MLPLATFORM_PREDICTION_LOG_URI``), or None: local."""
    uri = os.environ.get(PREDICTION_LOG_URI_ENV, "").strip()
    return parse_log_uri(uri) if uri else None


def replica_id(configured: str | None = None) -> str:
    """This replica's name in object keys: ``MLPLATFORM_REPLICA_ID`` or the host name, made key-safe."""
    text = configured or os.environ.get(REPLICA_ID_ENV, "").strip() or socket.gethostname() or "replica"
    return _UNSAFE.sub("_", text).strip("_.-")[:64] or "replica"


class SegmentNamer:
    """Names a writer's segments ``<replica>-<writer start>-<sequence>``: unique across replicas (replica id),
    restarts (a fresh token per writer) and segments (the sequence)."""

    def __init__(self, replica: str, token: str | None = None):
        self.replica = replica_id(replica)
        self.token = token or uuid.uuid4().hex[:12]
        self.sequence = 0

    def __call__(self) -> str:
        self.sequence += 1
        return segment_name(self.replica, self.token, self.sequence)


def segment_name(replica: str, token: str, sequence: int) -> str:
    return f"{replica}-{token}-{sequence:08d}"


def key_date(key: str) -> date | None:
    """The ``date=`` partition of a key (None when it has none)."""
    found = _DATE_PART.search(key)
    return date.fromisoformat(found.group(1)) if found else None


def s3_client() -> Any:
    """A boto3 S3 client configured by the standard AWS environment (endpoint, credentials, region)."""
    import boto3

    return boto3.client("s3")


def spooled_segments(spool: Path) -> Iterator[Path]:
    """The published segments in a spool (temporary ``.partial`` files and hidden names are not published)."""
    if not spool.is_dir():
        return iter(())
    return (path for path in sorted(spool.rglob(f"*{SEGMENT_SUFFIX}")) if not path.name.startswith("."))


def spooled_manifest_entries(spool: Path) -> Iterator[Path]:
    """The manifest entries in a spool (lib/log_manifest.py): uploaded like segments, after them."""
    from mlplatform.lib.log_manifest import MANIFEST_DIR_NAME

    if not spool.is_dir():
        return iter(())
    return (path for path in sorted(spool.glob(f"*/{MANIFEST_DIR_NAME}/*/*.json")) if not path.name.startswith("."))


def upload_spool(spool: Path, location: LogLocation, client: Any) -> tuple[int, int]:
    """Upload every published segment of the spool and delete each local file once its upload succeeded.

    Returns (uploaded, left). A failed upload stops the pass and keeps the file for the next one: a segment leaves
    the spool only when it is in the bucket. Re-uploading one after a crash between put and unlink rewrites the
    same key with the same bytes (readers also deduplicate rows).
    """
    uploaded = 0
    pending = list(spooled_segments(spool)) + list(spooled_manifest_entries(spool))  # entries after their segments
    for path in pending:
        key = location.key(path.relative_to(spool))
        try:
            with path.open("rb") as body:
                client.put_object(Bucket=location.bucket, Key=key, Body=body)
        except Exception as error:  # noqa: BLE001 - storage down: keep the files, the next pass retries
            log.warning("prediction log: uploading %s to s3://%s/%s failed (%s); %d segment(s) stay in %s",
                        path.name, location.bucket, key, error, len(pending) - uploaded, spool)
            return uploaded, len(pending) - uploaded
        path.unlink(missing_ok=True)
        uploaded += 1
    return uploaded, 0


def list_model_keys(location: LogLocation, model: str, client: Any, start: date | None = None,
                    end: date | None = None, suffix: str = SEGMENT_SUFFIX) -> list[tuple[str, int]]:
    """(key, size) of a model's segments whose ``date=`` partition is within [start, end] (days, inclusive);
    ``suffix=".json"``: its manifest entries (lib/log_manifest.py) instead."""
    found = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=location.model_prefix(model)):
        for item in page.get("Contents", []):
            key = item["Key"]
            if not key.endswith(suffix) or key.rsplit("/", 1)[-1].startswith("."):
                continue
            day = key_date(key)
            if day is not None and ((start is not None and day < start) or (end is not None and day > end)):
                continue
            found.append((key, int(item.get("Size", 0))))
    return sorted(found)


def fetch_segments(location: LogLocation, keys: list[tuple[str, int]], cache: Path, client: Any) -> list[Path]:
    """Local copies of the objects (downloaded once: keys are immutable), paths keeping the ``date=/hour=``
    folders so DuckDB's hive partitioning reads them as the local log."""
    paths = []
    for key, size in keys:
        local = cache / location.bucket / key
        if not (local.is_file() and local.stat().st_size == size):
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.partial")
            client.download_file(location.bucket, key, str(partial))
            os.replace(partial, local)
        paths.append(local)
    return paths
