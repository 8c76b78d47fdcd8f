"""``<model>/labels``, ``<model>/live_performance`` and ``<model>/shadow_report``: production judged by its outcomes.

One weekly step (``<model>_production``): it reads week W's outcomes (the target of the week's rows, or the team's
``labels`` file or table), joins them with what the service logged, and measures each version in each role. Its
checks are what production acts on: ``live_degradation`` (the rollback sensor reacts to it) and ``canary`` (a canary
significantly worse than the champion is stopped here, its ``challenger`` alias removed through
:mod:`mlplatform.lib.promotion`, audited). Outcomes are read and joined by :mod:`mlplatform.lib.outcomes`; the
decisions are :mod:`mlplatform.lib.live`'s (the rollback's target is :func:`mlplatform.lib.promotion.rollback_target`);
this module reads, calls, writes and logs.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetMaterialization,
    AssetSpec,
    MetadataValue,
    multi_asset,
)

from mlplatform import names
from mlplatform.defs.audit_assets import audit_trail_materialization
from mlplatform.defs.keys import asset_key, features_key
from mlplatform.defs.metadata import column_schema_metadata, image, owners, rows_table
from mlplatform.defs.partitions import run_window, weekly_multi_asset_options, weekly_partitions
from mlplatform.defs.resources import ModelRegistry, PlatformState, Warehouse, write_week_rows
from mlplatform.defs.serving_assets import prediction_log_key
from mlplatform.lib.source import Window
from mlplatform.lib.table_schemas import labels_schema, live_performance_schema, shadow_schema
from mlplatform.specs import ModelSpec


def labels_key(spec: ModelSpec):
    return asset_key(spec.name, names.LABELS)


def live_key(spec: ModelSpec):
    return asset_key(spec.name, names.LIVE_PERFORMANCE)


def shadow_key(spec: ModelSpec):
    return asset_key(spec.name, names.SHADOW_REPORT)


def _labels_origin(spec: ModelSpec) -> str:
    if spec.labels is not None:
        return f"labels.path {spec.labels.path}" if spec.labels.path else f"labels.table {spec.labels.table}"
    if spec.source.key:
        return f"the target of the week's feature rows, matched on source.key ({', '.join(spec.source.key)})"
    if spec.staging is None:
        return "the target of the week's source rows, matched on the row number `mlplatform replay` sends as `_id`"
    return "nothing: a dbt-staged spec without source.key has no row identity to match on (add source.key or labels)"


def fairness_metadata(measures: list) -> dict:
    """Live fairness in an asset's metadata: the table of measures and the failing ones in a sentence each."""
    from mlplatform.lib.live_fairness import failing, markdown_table

    if not measures:
        return {}
    failed = failing(measures)
    return {"live_fairness": MetadataValue.md(markdown_table(measures)),
            "live_fairness_verdict": MetadataValue.text(
                "; ".join(f"v{m.version} ({m.role}): {m.verdict_text()}" for m in failed) if failed
                else "every enforced measure judged is within its limit")}


def build_production_assets(spec: ModelSpec):
    rollback = spec.rollout.rollback
    metric = spec.primary_metric

    @multi_asset(
        name=names.multi_asset_op(spec.name, "labels_and_live_performance"),
        specs=[
            AssetSpec(labels_key(spec), group_name=spec.name, owners=owners(spec), kinds={"duckdb"}, skippable=True,
                      deps=[AssetDep(features_key(spec))] if spec.labels is None else [],
                      description=f"Outcomes known for week W's rows (they arrive after the predictions), from "
                      f"{_labels_origin(spec)}. Table `{spec.name}.{names.LABELS_TABLE}`.",
                      metadata=column_schema_metadata(labels_schema(spec))),
            AssetSpec(live_key(spec), group_name=spec.name, owners=owners(spec), kinds={"duckdb"}, skippable=True,
                      deps=[AssetDep(labels_key(spec)), AssetDep(prediction_log_key(spec)),
                            *([AssetDep(asset_key(spec.name, names.SCORES))] if spec.scoring.batch else [])],
                      description=f"Week W's logged predictions joined with their outcomes: {metric} with a 95% "
                      "bootstrap interval per version and role (champion, canary, shadow, batch), rows matched and unmatched; "
                      "the champion against its own evaluation, or after a confirmed concept change against the "
                      f"pre-change level (table `{spec.name}.{names.RECOVERY_TABLE}`). Table "
                      f"`{spec.name}.{names.LIVE_TABLE}`.",
                      metadata=column_schema_metadata(live_performance_schema(spec))),
            AssetSpec(shadow_key(spec), group_name=spec.name, owners=owners(spec), kinds={"duckdb"}, skippable=True,
                      deps=[AssetDep(prediction_log_key(spec)), AssetDep(labels_key(spec))],
                      description="The challenger scored in the shadow of the champion on the very same requests: "
                      f"agreement, and the {metric} difference with its interval once outcomes are in. Evidence for "
                      f"`mlplatform promote`. Table `{spec.name}.{names.SHADOW_TABLE}`.",
                      metadata=column_schema_metadata(shadow_schema(spec))),
        ],
        check_specs=[
            AssetCheckSpec(names.LIVE_DEGRADATION_CHECK, asset=live_key(spec), description=(
                f"Fails when the champion's live {metric} is worse than its own evaluation (after a confirmed concept "
                "change: the pre-change level) by more than "
                f"rollout.rollback.max_degradation ({rollback.max_degradation:g}, relative) and the live interval "
                "excludes that limit. A failure makes the rollback sensor move champion back to the previous "
                "champion (when that version scores significantly better on the same rows) and request a retrain; "
                "the first failure starts a recovery, which retrains weekly until live is back at the level.")),
            AssetCheckSpec(names.CANARY_CHECK, asset=live_key(spec), description=(
                f"Fails when the canary's live {metric} is significantly worse than the champion's on the same "
                "week's traffic; the canary is then stopped (challenger alias removed, audited).")),
        ],
        **weekly_multi_asset_options(spec),
    )
    def production(context: AssetExecutionContext) -> Iterator:
        warehouse: Warehouse = context.resources.warehouse
        registry: ModelRegistry = context.resources.model_registry
        platform: PlatformState = context.resources.platform
        window = run_window(context)
        step = ProductionStep(spec, context, warehouse, registry, platform, window)
        outcomes = step.read_outcomes(window)
        weeks = window.week_starts()
        for week_start in weeks:
            step.week(week_start.isoformat(), outcomes, with_history=week_start == weeks[-1])
        with warehouse.get_connection() as connection:  # the trail after the run's alerts and canary stops
            context.log_event(audit_trail_materialization(spec, connection))
        yield from ()

    return production


class ProductionStep:
    """One run of the production step: the shared reads, then week by week."""

    def __init__(self, spec: ModelSpec, context: AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry,
                 platform: PlatformState, window: Window):
        from mlplatform.lib.prediction_log import read_prediction_log

        self.spec, self.context, self.warehouse, self.platform = spec, context, warehouse, platform
        self.tracker = registry.tracker()
        self.actor = f"dagster run {context.run.run_id}"
        # Predictions of week W's rows can only have been made from W on; a replay of history logs them later.
        self.logged = read_prediction_log(platform.home_path, spec.name, window.start)
        self.references, self.version_weeks = self._evaluations()
        self.partition_keys = weekly_partitions(spec).get_partition_keys()

    def _evaluations(self) -> tuple[dict[str, float], dict[str, str]]:
        """Each version's primary metric at its own evaluation, and the week it was trained for."""
        if not self.warehouse.table_exists(self.spec.name, names.EVALUATIONS_TABLE):
            return {}, {}
        from mlplatform.lib.warehouse import table_name

        with self.warehouse.get_connection() as connection:
            rows = connection.execute(f"select model_version, value, week from "
                                      f"{table_name(self.spec.name, names.EVALUATIONS_TABLE)}").fetchall()
        return ({str(version): float(value) for version, value, _ in rows},
                {str(version): f"{week:%Y-%m-%d}" for version, _, week in rows})

    def _recovery_rows(self) -> list:
        """The stored rows of ``<model>.recovery`` (:mod:`mlplatform.lib.recovery`)."""
        from mlplatform.lib.recovery import read_rows

        with self.warehouse.get_connection() as connection:
            return read_rows(connection, self.spec.name)

    def _judged_history(self) -> pd.DataFrame:
        """The judged champion rows of ``<model>.live_performance``: week, version, value, passed."""
        from mlplatform.lib.warehouse import table_name

        if not self.warehouse.table_exists(self.spec.name, names.LIVE_TABLE):
            return pd.DataFrame(columns=["week", "version", "value", "passed"])
        with self.warehouse.get_connection() as connection:
            return connection.execute(
                f"select week, version, value, passed from {table_name(self.spec.name, names.LIVE_TABLE)} "
                "where role = 'champion' and judged order by week").fetchdf()

    def read_outcomes(self, window: Window) -> pd.DataFrame:
        from mlplatform.lib import outcomes

        spec = self.spec
        if spec.labels is not None and spec.labels.path:
            return outcomes.file_outcomes(spec, window)
        if spec.labels is not None:
            with self.warehouse.get_connection() as connection:
                return outcomes.table_outcomes(spec, connection, window)
        if spec.source.key:
            frame = self.warehouse.read_window(spec.name, names.FEATURES, spec.time_column, window)
            return outcomes.outcome_rows(frame, spec.source.key, spec.target, spec.time_column,
                                         carry=outcomes.carried_columns(spec))
        if spec.staging is None:
            return outcomes.source_outcomes(spec, window)
        self.context.log.warning(f"{spec.name}: {_labels_origin(spec)}")
        return outcomes.outcome_rows(pd.DataFrame(), [], spec.target, spec.time_column)

    def week(self, week: str, outcomes: pd.DataFrame, with_history: bool = False) -> None:
        from mlplatform.lib import live, recovery
        from mlplatform.lib.aliases import CHALLENGER, CHAMPION
        from mlplatform.lib.outcomes import match_labels
        from mlplatform.lib.retraining import retrain_partition

        spec, context = self.spec, self.context
        start = datetime.fromisoformat(week)
        week_outcomes = outcomes[(outcomes["time"] >= start) & (outcomes["time"] < start + timedelta(weeks=1))]
        matched = match_labels(self.logged, week_outcomes)
        metric, task = spec.primary_metric, spec.task
        threshold = spec.decision_threshold
        estimates = live.live_estimates(task, metric, matched.rows, threshold=threshold)
        champion_now = self.tracker.alias_version(spec.name, CHAMPION)
        judged = live.judged_champion(estimates, champion_now)
        min_rows = spec.rollout.rollback.min_rows
        max_degradation = spec.rollout.rollback.max_degradation
        state = recovery.state_before(self._recovery_rows(), week)
        reference = recovery.reference_for(state, self.version_weeks.get(judged.version) if judged else None,
                                           self.references.get(judged.version) if judged else None)
        verdict = live.judge_degradation(
            metric, judged.version if judged else None, judged.estimate if judged else None,
            judged.rows if judged else 0, reference.value, max_degradation, min_rows, reference.against)
        level = None
        if not verdict.passed and not (state is not None and state.active):
            level = recovery.pre_change_level(self._judged_history(), week, verdict.reference, verdict.version)
        retrain_week = retrain_partition(week, self.partition_keys)
        recovering = recovery.decide_week(state, week, metric, max_degradation, verdict.judged, verdict.passed,
                                          verdict.version, verdict.live.value if verdict.live else None, level,
                                          retrain_week, spec.partitions.training_window_weeks)
        own = self.references.get(verdict.version) if verdict.version else None  # the version's own evaluation
        rollback = live.NO_DEGRADATION
        if not verdict.passed:
            rollback = self._rollback_decision(matched.rows, verdict.version, champion_now)
            if rollback.candidate_estimate is not None:
                estimates.append(rollback.candidate_estimate)
        canary = live.judge_canary(task, metric, matched.rows, self.tracker.alias_version(spec.name, CHALLENGER),
                                   min_rows, threshold=threshold)
        shadows = live.shadow_comparison(task, metric, self._week_log(week_outcomes, start), week_outcomes,
                                         threshold=threshold)
        fairness = self._live_fairness(week, week_outcomes, start, matched.rows)

        rows = pd.DataFrame([{**e.row(week), "evaluation_value": self.references.get(e.version),
                              "judged": judged is not None and e is judged and verdict.judged,
                              "passed": verdict.passed if (judged is not None and e is judged) else None,
                              "reference_value": verdict.reference if (judged is not None and e is judged) else None}
                             for e in estimates])
        self._write(week, week_outcomes, rows, shadows)
        self._write_recovery(week, recovering.row)
        self._act(week, verdict, canary, rollback, recovering.row)

        context.log_event(AssetMaterialization(asset_key=labels_key(spec), partition=week, metadata={
            "rows": len(week_outcomes), "from": MetadataValue.text(_labels_origin(spec)),
            "matched_to_predictions": len(week_outcomes) - matched.unmatched_labels,
            "without_prediction": matched.unmatched_labels,
        }))
        table = rows_table(["version", "role", "rows", metric, "95% CI", "its evaluation"], [
            (f"v{e.version}", e.role, e.rows, f"{e.estimate.value:.4g}" if e.estimate else "-",
             f"[{e.estimate.low:.4g}, {e.estimate.high:.4g}]" if e.estimate else "-",
             f"{self.references[e.version]:.4g}" if e.version in self.references else "-") for e in estimates])
        context.log_event(AssetMaterialization(asset_key=live_key(spec), partition=week, metadata={
            "metric": metric,
            "champion_version": verdict.version or "-",
            "champion_live": verdict.live.value if verdict.live else float("nan"),
            "champion_evaluation": own if own is not None else float("nan"),
            "champion_held_to": MetadataValue.text(
                f"{verdict.reference:.4g} ({reference.against})" if verdict.reference is not None else "-"),
            "labelled_predictions": len(matched.rows),
            "labels_without_prediction": matched.unmatched_labels,
            "predictions_without_key": matched.predictions_without_key,
            "by_version_and_role": MetadataValue.md(table if estimates else "no labelled predictions this week"),
            "verdict": MetadataValue.text(verdict.reason),
            "recovery": MetadataValue.text(recovering.summary or "-"),
            **(self.history_metadata() if with_history else {}),
            **fairness_metadata(fairness),
        }))
        if shadows:
            context.log_event(AssetMaterialization(asset_key=shadow_key(spec), partition=week, metadata={
                "comparisons": MetadataValue.md(rows_table(
                    ["champion", "shadow", "pairs", "agreement", f"{metric} shadow - champion", "95% CI"],
                    [(f"v{s.champion}", f"v{s.shadow}", s.pairs, f"{s.agreement:.1%}",
                      f"{s.labelled.difference:+.4g}" if s.labelled else "(no outcomes yet)",
                      f"[{s.labelled.low:+.4g}, {s.labelled.high:+.4g}]" if s.labelled else "-") for s in shadows])),
                "pairs": sum(s.pairs for s in shadows),
                **fairness_metadata([m for m in fairness if m.role == "shadow"]),
            }))
        context.log_event(AssetCheckEvaluation(
            asset_key=live_key(spec), check_name=names.LIVE_DEGRADATION_CHECK, passed=verdict.passed, partition=week,
            severity=AssetCheckSeverity.WARN, description=verdict.reason,
            metadata={
                "week": week, "summary": MetadataValue.text(verdict.reason), "judged": verdict.judged,
                "version": verdict.version or "", "metric": metric,
                "live": verdict.live.value if verdict.live else float("nan"),
                "live_ci_low": verdict.live.low if verdict.live else float("nan"),
                "live_ci_high": verdict.live.high if verdict.live else float("nan"),
                "evaluation": own if own is not None else float("nan"),
                "reference_value": verdict.reference if verdict.reference is not None else float("nan"),
                "limit": verdict.limit if verdict.limit is not None else float("nan"),
                "max_degradation": spec.rollout.rollback.max_degradation,
                "reference": reference.against,
                "recovery": MetadataValue.text(recovering.summary),
                "recovery_retrain": recovering.retrain,
                **rollback.metadata(),
            }))
        context.log_event(AssetCheckEvaluation(
            asset_key=live_key(spec), check_name=names.CANARY_CHECK, passed=canary.passed, partition=week,
            severity=AssetCheckSeverity.WARN, description=canary.reason,
            metadata={"week": week, "summary": MetadataValue.text(canary.reason), "judged": canary.judged,
                      "version": canary.version or "",
                      "difference": canary.difference.difference if canary.difference else float("nan"),
                      "ci_low": canary.difference.low if canary.difference else float("nan"),
                      "ci_high": canary.difference.high if canary.difference else float("nan")}))
        context.log.info(f"{spec.name} week {week}: {verdict.reason}; canary: {canary.reason}")

    def _live_fairness(self, week: str, week_outcomes: pd.DataFrame, start: datetime, matched: pd.DataFrame) -> list:
        """The spec's fairness measures on week W's live predictions per version and role (sensitive values from
        the requests, else from the outcomes holding them), written to ``<model>.live_fairness``."""
        from mlplatform.lib import live_fairness
        from mlplatform.lib.table_schemas import live_fairness_schema

        spec = self.spec
        if spec.fairness is None:
            return []
        columns = spec.fairness.sensitive
        logged = live_fairness.attach_outcome_values(self._week_log(week_outcomes, start), week_outcomes, columns)
        matched = live_fairness.attach_outcome_values(matched, week_outcomes, columns)
        measures = live_fairness.live_fairness(spec.task, spec.fairness, logged, spec.decision_threshold, matched,
                                               spec.primary_metric)
        if measures:
            frame = pd.DataFrame([m.row(week) for m in measures]).astype({"passed": "boolean"})
            write_week_rows(self.warehouse, spec.name, live_fairness.LIVE_FAIRNESS_TABLE, frame, "week",
                            [pd.Timestamp(week)], table_schema=live_fairness_schema(spec))
            for m in live_fairness.failing(measures):
                self.context.log.warning(f"{spec.name} week {week}: live fairness of v{m.version} ({m.role}): "
                                         f"{m.verdict_text()}")
        return measures

    def _week_log(self, week_outcomes: pd.DataFrame, start: datetime) -> pd.DataFrame:
        """The log rows of week W: those of its labelled rows, and those logged during the week."""
        from mlplatform.lib.outcomes import JOIN_KEY, log_join_keys

        if self.logged.empty:
            return self.logged
        keys = log_join_keys(self.logged)
        in_week = (self.logged["time"] >= start) & (self.logged["time"] < start + timedelta(weeks=1))
        return self.logged[keys.isin(set(week_outcomes[JOIN_KEY].dropna())) | in_week]

    def _rollback_decision(self, matched: pd.DataFrame, degraded: str | None, champion_now: str | None):
        """Whether to roll back (:func:`mlplatform.lib.live.judge_rollback`) to the version
        :func:`mlplatform.lib.promotion.rollback_target` names: the reads and the rescoring for it."""
        from mlplatform.lib import live
        from mlplatform.lib.promotion import RollbackTarget, rollback_target
        from mlplatform.lib.spec_hash import spec_tags
        from mlplatform.lib.training import predict

        spec = self.spec
        target = RollbackTarget(None)
        if degraded is not None and degraded == champion_now:
            with self.warehouse.get_connection() as connection:
                target = rollback_target(connection, self.tracker, spec.name, degraded, spec_tags(spec))

        def rescore(version: str, inputs: pd.DataFrame):
            return predict(self.tracker.load_version(spec.name, version), inputs, spec.task,
                           spec.decision_threshold).score

        return live.judge_rollback(spec.task, spec.primary_metric, matched, degraded, champion_now, target.version,
                                   target.passed_over, spec.feature_columns, rescore,
                                   threshold=spec.decision_threshold)

    def _write(self, week: str, outcomes: pd.DataFrame, rows: pd.DataFrame, shadows: list) -> None:
        stamp = [pd.Timestamp(week)]
        labels = outcomes[["join_key", "y", "time"]].assign(week=pd.Timestamp(week), y=outcomes["y"].astype(str))
        write_week_rows(self.warehouse, self.spec.name, names.LABELS_TABLE, labels, "week", stamp,
                        table_schema=labels_schema(self.spec))
        if len(rows):
            rows = rows.astype({"evaluation_value": "float64", "judged": "bool", "passed": "boolean",
                                "reference_value": "float64"})
            write_week_rows(self.warehouse, self.spec.name, names.LIVE_TABLE, rows, "week", stamp,
                            table_schema=live_performance_schema(self.spec))
        if shadows:
            write_week_rows(self.warehouse, self.spec.name, names.SHADOW_TABLE,
                            pd.DataFrame([s.row(week) for s in shadows]), "week", stamp,
                            table_schema=shadow_schema(self.spec))

    def _write_recovery(self, week: str, row) -> None:
        """Week W's row of ``<model>.recovery`` (a re-run of the week replaces it, or removes it)."""
        from mlplatform.lib.table_schemas import recovery_schema
        from mlplatform.lib.warehouse import table_name

        if row is not None:
            frame = pd.DataFrame([row.record()]).astype({"retrain_week": "datetime64[us]"})
            write_week_rows(self.warehouse, self.spec.name, names.RECOVERY_TABLE, frame, "week", [pd.Timestamp(week)],
                            table_schema=recovery_schema(self.spec))
        elif self.warehouse.table_exists(self.spec.name, names.RECOVERY_TABLE):
            with self.warehouse.get_connection() as connection:
                connection.execute(f"delete from {table_name(self.spec.name, names.RECOVERY_TABLE)} where week = ?",
                                   [pd.Timestamp(week)])

    def _act(self, week: str, verdict, canary, rollback, recovering=None) -> None:
        """The audit of a failed check and of a recovery's step, and the canary stop (an alias move: through
        promotion, one unit)."""
        from mlplatform.lib import promotion
        from mlplatform.lib.audit import AuditEvent, append_events
        from mlplatform.lib.recovery import recovery_events

        spec, run_id = self.spec, self.context.run.run_id
        with self.warehouse.get_connection() as connection:
            if not verdict.passed:
                append_events(connection, [AuditEvent(
                    spec.name, "performance_alert", self.actor, f"{verdict.reason}; {rollback.reason}", version=verdict.version,
                    week=week, passed=False, dagster_run_id=run_id,
                    details={"check": names.LIVE_DEGRADATION_CHECK, "rollback_to": rollback.target,
                             "live": verdict.live.value if verdict.live else None, "reference": verdict.reference,
                             "limit": verdict.limit, "relative_drop": verdict.relative_drop})])
            if recovering is not None:
                append_events(connection, [AuditEvent(spec.name, event, self.actor, summary, version=recovering.version,
                                                      week=week, passed=passed, dagster_run_id=run_id, details=details)
                                           for event, summary, passed, details in recovery_events(
                                               recovering, spec.partitions.training_window_weeks)])
                self.context.log.info(f"{spec.name} week {week}: {recovering.event}: {recovering.note}")
            if not canary.passed and canary.version is not None:
                change = promotion.canary_stop_change(self.tracker, spec.name, canary.version, self.actor, canary.reason)
                if change is not None:
                    change.dagster_run_id = run_id
                    promotion.commit_changes(connection, self.tracker, [change])
                    self.context.log.warning(f"{spec.name}: canary v{canary.version} stopped: {canary.reason}")

    def history_metadata(self) -> dict:
        """The champion's live metric over every judged week, as a plot (on the run's last week)."""
        from mlplatform.lib.plots import live_plot
        from mlplatform.lib.warehouse import table_name

        if not self.warehouse.table_exists(self.spec.name, names.LIVE_TABLE):
            return {}
        with self.warehouse.get_connection() as connection:
            table = table_name(self.spec.name, names.LIVE_TABLE)
            columns = {c for (c,) in connection.execute(
                "select column_name from information_schema.columns where table_schema = ? and table_name = ?",
                [self.spec.name, names.LIVE_TABLE]).fetchall()}
            held_to = "coalesce(reference_value, evaluation_value)" if "reference_value" in columns else "evaluation_value"
            history = connection.execute(
                f"select week, version, value, ci_low, ci_high, evaluation_value, {held_to} as reference_value from "
                f"{table} where role = 'champion' and judged order by week").fetchdf()
        if len(history) < 2:
            return {}
        from mlplatform.lib.live import degradation_limit

        weeks = [f"{w:%Y-%m-%d}" for w in history["week"]]
        limits = [degradation_limit(self.spec.primary_metric, r, self.spec.rollout.rollback.max_degradation)
                  for r in history["reference_value"]]
        # the pre-change level where a recovery held the champion to it (NaN elsewhere: no line)
        levels = history["reference_value"].where(history["reference_value"] != history["evaluation_value"])
        png = live_plot(weeks, history["value"], history["ci_low"], history["ci_high"], history["evaluation_value"],
                        limits, self.spec.primary_metric, self.spec.name, levels=levels)
        return {"history": MetadataValue.md(image(png, "live performance")), "weeks_judged": len(history),
                "champions_judged": MetadataValue.json(sorted({f"v{v}" for v in history["version"].astype(str)}))}
