"""A person moves the champion: the one workflow behind ``mlplatform promote``/``rollback`` and the UI's approve and
rollback jobs.

The rules themselves (who may become champion, which version a rollback restores) are
:mod:`mlplatform.lib.promotion`'s; this module is the order they are applied in, so the CLI and the UI cannot drift
apart: the stores are checked first (a damaged or replaced store changes nothing), the warehouse is opened (waiting
while a run holds its lock), the rule decides, and the audit row and the alias move are committed as one unit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from mlplatform.lib import promotion
from mlplatform.lib.promotion import AliasChange
from mlplatform.lib.stores import StoresDamaged, check_stores
from mlplatform.lib.tracking import Tracker
from mlplatform.lib.warehouse import connect_when_free, is_postgres, lock_model

Decide = Callable[[duckdb.DuckDBPyConnection, Tracker], AliasChange | None]
"""The rule: the change to make, None when nothing needs to change; raises ``PromotionRefused`` to refuse."""

Follow = Callable[[Tracker, AliasChange], Sequence[AliasChange]]
"""Alias moves that belong to the same decision (the automatic rollback also stops the degraded version's canary)."""


def move_champion(home: Path, warehouse_path: Path, tracker: Tracker, wait_seconds: float, decide: Decide,
                  follow: Follow | None = None,
                  committed: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> AliasChange | None:
    """Check the stores, open the warehouse, ``decide``, then commit the audit rows and alias moves as one unit.

    Returns the change made (None: nothing to change). ``committed(connection)`` runs after the commit on the same
    connection (the UI jobs report the fresh audit trail there). Raises :class:`StoresDamaged`,
    ``promotion.PromotionRefused``, ``warehouse.WarehouseBusy`` or the registry's error; nothing changed then.
    """
    damage = check_stores(home, tracker, wait_seconds)
    if damage:
        raise StoresDamaged(damage)  # the same error a run's registry check raises (lib/stores.py)
    with connect_when_free(warehouse_path, wait_seconds) as connection:
        change = decide(connection, tracker)
        if change is None:
            return None
        if is_postgres(connection):  # several writers: decide again under the model's lock, then commit in its unit
            connection.begin()
            lock_model(connection, change.model)
            change = decide(connection, tracker)
            if change is None:
                connection.rollback()
                return None
        promotion.commit_changes(connection, tracker, [change, *(follow(tracker, change) if follow else [])])
        if committed is not None:
            committed(connection)
    return change
