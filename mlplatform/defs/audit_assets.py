"""``<model>/audit_trail``: the model's audit events in the UI, with the hash chain's verification.

An external asset (no step executes it), like ``prediction_log``: the steps that write audit events
report its new state themselves, on the warehouse connection they already hold, at the end of what
they wrote: the model step (trained versions, gates, alias moves, retrains requested), the drift step
(drift alerts), a data gate that failed (the run stops there), and the approve and rollback jobs.
So it is fresh after every run of the lifecycle jobs, and no second process or step ever opens the
warehouse for it: DuckDB takes one writer process, and a separate reader during a run would make
the run wait.
"""

from __future__ import annotations

import duckdb
import pandas as pd
from dagster import AssetDep, AssetMaterialization, AssetSpec, MetadataValue

from mlplatform.defs.keys import audit_trail_key, model_key
from mlplatform.defs.metadata import column_schema_metadata, owners, rows_table
from mlplatform.lib.audit import TrailSummary, read_events, summarize_trail
from mlplatform.lib.audit_integrity import write_checkpoint
from mlplatform.lib.table_schemas import audit_events_schema
from mlplatform.specs import ModelSpec

LATEST_EVENTS = 20


def build_audit_trail_spec(spec: ModelSpec) -> AssetSpec:
    return AssetSpec(
        audit_trail_key(spec), group_name=spec.name, owners=owners(spec), kinds={"duckdb"},
        deps=[AssetDep(model_key(spec))],
        description=f"The audit trail of {spec.name} (table `audit.events`): every data gate, trained version, model "
        "gate, alias move, approval, rollback, drift alert and retrain request, hash-chained. Reported by the steps "
        f"and jobs that write events; shows the {LATEST_EVENTS} newest, the count per event type and whether the "
        "chain verifies (`mlplatform audit MODEL --verify` checks the same).",
        metadata=column_schema_metadata(audit_events_schema(spec)),
    )


def audit_trail_materialization(spec: ModelSpec, connection: duckdb.DuckDBPyConnection) -> AssetMaterialization:
    """The trail as it stands on ``connection`` (read inside the caller's connection), after the caller committed:
    the head is also written to the model's audit checkpoint file (lib/audit_integrity.py)."""
    write_checkpoint(connection, spec.name)
    return trail_materialization(spec, summarize_trail(read_events(connection, spec.name), LATEST_EVENTS))


def trail_materialization(spec: ModelSpec, summary: TrailSummary) -> AssetMaterialization:
    latest = rows_table(["seq", "time (UTC)", "event", "actor", "version", "week", "passed", "summary"], [
        (r.seq, f"{pd.Timestamp(r.occurred_at):%Y-%m-%d %H:%M:%S}", r.event, r.actor, _text(r.version), _text(r.week),
         _text(r.passed), _text(r.summary)[:160]) for r in summary.latest.itertuples(index=False)])
    counts = rows_table(["event", "count"], list(summary.counts.items()))
    verdict = (f"intact: {summary.events} events, hash chain verified" if summary.intact
               else f"BROKEN: {len(summary.problems)} problem(s): " + "; ".join(summary.problems[:5]))
    return AssetMaterialization(asset_key=audit_trail_key(spec), metadata={
        "events": summary.events,
        "chain_intact": summary.intact,
        "chain_verification": MetadataValue.text(verdict),
        "chain_problems": MetadataValue.json(summary.problems),
        "head_hash": MetadataValue.text(summary.head_hash or "-"),
        "last_event_at": MetadataValue.text(f"{summary.last_event_at:%Y-%m-%d %H:%M:%S} UTC"
                                            if summary.last_event_at else "-"),
        "counts_per_event": MetadataValue.md(counts if summary.counts else "no events yet"),
        "latest_events": MetadataValue.md(latest if summary.events else "no events yet"),
    })


def _text(value: object) -> str:
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)
