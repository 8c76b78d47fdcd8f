"""Canary routing: which version answers a record, decided by a stable hash so one entity always sees one version.

Python's ``hash()`` is salted per process; a canary must give the same answer in every worker, after every restart
and in the tests, so the bucket comes from SHA-256 of the routing key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

CHAMPION_ROLE = "champion"
CANARY_ROLE = "canary"
SHADOW_ROLE = "shadow"
ROLES = (CHAMPION_ROLE, CANARY_ROLE, SHADOW_ROLE)
BATCH_ROLE = "batch"
"""Rows the ``<model>/scores`` asset scored in a batch (``scoring.batch``), logged beside what the service answered."""
LOGGED_ROLES = (*ROLES, BATCH_ROLE)
"""Every role a prediction log row may have."""
ANSWERED_ROLES = (CHAMPION_ROLE, CANARY_ROLE, BATCH_ROLE)
"""The predictions production acted on (not shadow scores): what drift on production inputs reads."""

BUCKETS = 10_000
"""Buckets per 100 %: a canary share is honoured to 0.01 percentage points."""


def bucket(routing_key: str) -> int:
    """A stable bucket in [0, BUCKETS) for a routing key (same key, same bucket, in any process)."""
    digest = hashlib.sha256(routing_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def role_for(routing_key: str, canary_percent: float) -> str:
    """``canary`` for the first ``canary_percent`` % of buckets, else ``champion``."""
    if canary_percent <= 0:
        return CHAMPION_ROLE
    return CANARY_ROLE if bucket(routing_key) < canary_percent * BUCKETS / 100 else CHAMPION_ROLE


def entity_key(record: Mapping[str, Any], key_columns: Sequence[str]) -> str | None:
    """The entity key of a record as canonical text (JSON of the key values in spec order); None when incomplete.

    ``{"id": 7}`` and ``{"id": 7.0}`` are the same entity: integral floats are written as integers.
    """
    if not key_columns:
        return None
    values = []
    for column in key_columns:
        value = record.get(column)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        values.append(value)
    return json.dumps(values[0] if len(values) == 1 else values, separators=(",", ":"), default=str)


def routing_key(entity: str | None, record_id: str | None, request_id: str, index: int) -> str:
    """What the canary hashes: the entity key, else the client's record id, else this record of this request."""
    if entity is not None:
        return "k:" + entity
    if record_id is not None:
        return "r:" + record_id
    return f"q:{request_id}:{index}"
