"""Approve and roll back from the Dagster UI: per-model jobs launched from the launchpad with config.

They call exactly what ``mlplatform promote`` and ``mlplatform rollback`` call
(:mod:`mlplatform.lib.promotion`), so the rules and the audit rows are the same: a version whose
gates failed is refused, a rollback never restores one, and every move has its audit row.
While approvers have tokens (``MLPLATFORM_APPROVER_TOKENS_FILE``) a person's move is refused here, audited: the
open-source UI has no login and its run config is readable by anyone who opens it, so it can neither prove a name
nor carry a token (the decay sensor's automatic rollback, the platform's own decision, still runs).
"""

from dagster import Config, Failure, MetadataValue, OpExecutionContext, job, op

from mlplatform import names
from mlplatform.defs.audit_assets import audit_trail_materialization
from mlplatform.defs.metadata import team_tags
from mlplatform.defs.resources import ModelRegistry, Warehouse
from mlplatform.specs import ModelSpec


class ApprovalConfig(Config):
    """Who approves which version, and why (all three go to the audit trail)."""

    approved_by: str
    reason: str
    version: str = ""  # empty: the current challenger
    force: bool = False  # promote even though a gate failed (the audit row and a version tag say so; it is served)


class RollbackConfig(Config):
    """Who rolls back, to which version, and why."""

    decided_by: str
    reason: str
    to_version: str = ""  # empty: promotion.rollback_target (newest earlier champion whose gates passed)
    only_if_champion: str = ""  # the rollback sensor's guard: act only while this version is still champion


def _apply(context: OpExecutionContext, spec: ModelSpec, decide, follow=None) -> None:
    """The move a person asks for (:func:`mlplatform.lib.approvals.move_champion`, as ``mlplatform promote`` and
    ``rollback``); a refusal or damaged store fails the run with the reason, and nothing changed."""
    from pathlib import Path

    from mlplatform.lib import approvals, promotion

    warehouse: Warehouse = context.resources.warehouse
    registry: ModelRegistry = context.resources.model_registry
    try:
        change = approvals.move_champion(
            context.resources.platform.home_path, Path(warehouse.database), registry.tracker(), warehouse.wait_seconds,
            decide, follow, committed=lambda connection: context.log_event(audit_trail_materialization(spec, connection)))
    except approvals.StoresDamaged as damaged:
        raise Failure(f"a store looks damaged or replaced; nothing changed: {'; '.join(damaged.problems)}", metadata={
            "problems": MetadataValue.json(damaged.problems)}) from None
    except approvals.ApprovalDenied as denied:
        raise Failure(f"nothing changed: {denied} (the refusal is recorded in the audit trail)") from None
    except promotion.PromotionRefused as refused:
        raise Failure(f"nothing changed: {refused}") from None
    if isinstance(change, approvals.PendingApproval):
        context.log.info(f"{spec.name} v{change.version}: approval {len(change.approvals)} of {change.required} "
                         f"recorded ({', '.join(change.approvals)}); it becomes champion when another person approves")
        return
    if change is None:
        context.log.info(f"{spec.name}: nothing changed (the version asked for is already the champion, or the "
                         "champion has moved since the decision was made)")
        return
    context.log.info(f"{spec.name}: champion v{change.previous_version or '-'} -> v{change.version} by {change.actor}: "
                     f"{change.reason}")
    if change.forced:
        context.log.warning(f"{spec.name} v{change.version} is champion by force, overriding {change.forced}; the "
                            "service serves it and /v1/models shows it as forced")


def _automatic_rollback(context: OpExecutionContext, config: RollbackConfig) -> bool:
    """The decay sensor's rollback (its run tag, its guard and its name): the policy's approvers are people; the
    automatic rollback the spec enables is the platform's, and must not wait for one."""
    return (context.run.tags.get(names.TRIGGER_TAG) == names.DECAY_TRIGGER and bool(config.only_if_champion)
            and config.decided_by.startswith("sensor "))


def _ui_refusal(model: str, typed: str, verb: str, version: str | None, reason: str | None):
    """The audited refusal of a person's move from the UI while approvers have tokens
    (:func:`mlplatform.lib.approver_identity.ui_refusal`), else None; a broken credentials file fails the run."""
    from mlplatform.lib.api_tokens import TokenFileError
    from mlplatform.lib.approver_identity import approver_tokens_from_environment, ui_refusal

    try:
        tokens = approver_tokens_from_environment()
    except TokenFileError as error:
        raise Failure(f"nothing changed: the approvers' credentials file: {error}") from None
    return ui_refusal(tokens, model, typed, verb, version, reason)


def build_approval_jobs(spec: ModelSpec) -> list:
    """``<model>_approve`` and ``<model>_rollback``, for the launchpad."""
    from mlplatform.lib import approvals, promotion
    from mlplatform.lib.spec_hash import spec_tags

    resources = {"warehouse", "model_registry", "platform"}
    current_spec = spec_tags(spec)  # a version whose gates ran under an older spec is refused
    rule = approvals.ApprovalRule.of(spec.policy_rules)  # who may approve, and how many (the spec's policy)

    @op(name=f"{spec.name}_approve_champion", required_resource_keys=resources, pool=names.model_pool(spec.name))
    def approve(context: OpExecutionContext, config: ApprovalConfig) -> None:
        from mlplatform.lib.live_fairness import promotion_refusal

        live = promotion_refusal(spec, context.resources.platform.home_path)  # None: not required

        def decide(connection, tracker):
            unproven = _ui_refusal(spec.name, config.approved_by, "promote", config.version or None, config.reason)
            if unproven is not None:  # approvers have tokens, and the UI cannot carry one (audited, nothing moves)
                raise unproven
            return approvals.approval_decision(
                connection, tracker, spec.name, config.version or None, config.approved_by, config.reason,
                config.force, current_spec, rule, live_check=(lambda version: live(connection, version)) if live
                else None)

        _apply(context, spec, decide)

    @op(name=f"{spec.name}_rollback_champion", required_resource_keys=resources, pool=names.model_pool(spec.name))
    def rollback(context: OpExecutionContext, config: RollbackConfig) -> None:
        def stop_degraded_canary(tracker, change) -> list:
            """A version rolled back for degrading in production gets no canary traffic either."""
            stop = promotion.canary_stop_change(tracker, spec.name, change.previous_version, change.actor,
                                                f"v{change.previous_version} was rolled back: {config.reason}")
            return [stop] if stop is not None else []

        def decide(connection, tracker):
            if not _automatic_rollback(context, config):  # the platform's own decay sensor is no person to check
                unproven = _ui_refusal(spec.name, config.decided_by, "roll back", config.to_version or None,
                                       config.reason)
                if unproven is not None:  # approvers have tokens, and the UI cannot carry one
                    raise unproven
                approvals.checked_actor(rule, spec.name, config.decided_by, "roll back", config.to_version or None,
                                        config.reason)
            return promotion.rollback_change(
                connection, tracker, spec.name, config.to_version or None, config.decided_by, config.reason,
                only_if_champion=config.only_if_champion or None, current_spec=current_spec)

        _apply(context, spec, decide, follow=stop_degraded_canary if config.only_if_champion else None)

    @job(name=names.approve_job(spec.name), tags=team_tags(spec),
         description=f"A person approves a {spec.name} version as champion (what `mlplatform promote` does).")
    def approve_job():
        approve()

    @job(name=names.rollback_job(spec.name), tags=team_tags(spec),
         description=f"A person puts an earlier {spec.name} champion back (what `mlplatform rollback` does).")
    def rollback_job():
        rollback()

    return [approve_job, rollback_job]
