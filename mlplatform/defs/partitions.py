"""Weekly partitions: Monday-start UTC weeks from the spec, and the window a run covers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import AssetExecutionContext, BackfillPolicy, WeeklyPartitionsDefinition

from mlplatform.lib.source import Window
from mlplatform.names import model_pool
from mlplatform.specs import ModelSpec

SINGLE_RUN = BackfillPolicy.single_run()
"""A range of weeks runs as one run, each asset handling the whole window at once."""


def weekly_multi_asset_options(spec: ModelSpec) -> dict:
    """The options shared by the steps that loop over a run's weeks and log each week's events themselves.

    can_subset makes their per-week check evaluations optional outputs (see model_assets.py); the pool is the
    model's (:func:`mlplatform.names.model_pool`).
    """
    return {"partitions_def": weekly_partitions(spec), "backfill_policy": SINGLE_RUN, "can_subset": True,
            "required_resource_keys": {"warehouse", "model_registry", "platform"}, "pool": model_pool(spec.name)}


def weekly_partitions(spec: ModelSpec) -> WeeklyPartitionsDefinition:
    """Monday weeks (``day_offset=1``) from ``partitions.start``; a snapshot dataset (no timestamp) has one week."""
    end = spec.partitions.end
    if spec.source.timestamp is None:
        end = spec.partitions.start + timedelta(days=7)
    return WeeklyPartitionsDefinition(
        start_date=spec.partitions.start.isoformat(),
        end_date=end.isoformat() if end else None,
        day_offset=1,
        timezone="UTC",
    )


def run_window(context: AssetExecutionContext) -> Window:
    """The [start, end) of the week or range of weeks this run materializes, as naive UTC."""
    time_window = context.partition_time_window
    return Window(start=_naive_utc(time_window.start), end=_naive_utc(time_window.end))


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
